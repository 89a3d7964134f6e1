// The output pool of cpu/alloc.h: a bounded set of freed output blocks of our own kernels, reused for
// outputs of the same size class so that writing them costs no page faults.
//
// Blocks are anonymous mappings, 2 MiB aligned and a multiple of 2 MiB long (so huge-page advice covers
// them whole; without huge pages a new block is prefaulted); a request takes a held block of exactly its size class (the newest), or maps a new one.
// A freed block is held while the held blocks stay within the limit, the oldest being unmapped first.
// The pool keeps its own counters; PyTorch's profiler still sees every allocation (reported as the
// default CPU allocator reports them).
#include "cpu/alloc.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <deque>
#include <mutex>

#if defined(__linux__)
#include <unistd.h>
#endif

namespace lowlight_fast {
namespace output_pool {
namespace {

constexpr int64_t kMinBytes = int64_t(4) << 20;  // smaller outputs: at::empty (glibc's heap reuses them)
constexpr int64_t kMaxLimit = int64_t(1) << 30;

bool wanted() {
  static const bool on = [] {
    const char* v = std::getenv("LOWLIGHT_FAST_OUTPUT_POOL");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return on;
}

// LOWLIGHT_FAST_OUTPUT_POOL_MB sets the limit (MiB); default: 1 GiB, or an eighth of the physical memory.
int64_t compute_limit() {
  if (const char* v = std::getenv("LOWLIGHT_FAST_OUTPUT_POOL_MB"); v != nullptr && *v != '\0') {
    char* end = nullptr;
    const long long mb = std::strtoll(v, &end, 10);
    if (end != v && *end == '\0' && mb >= 0) return int64_t(mb) << 20;
  }
#if defined(__linux__)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) return std::min<int64_t>(kMaxLimit, int64_t(pages) * page / 8);
#endif
  return kMaxLimit / 4;
}

#if defined(__linux__)
struct Block {
  void* data;
  int64_t bytes;
};

class Pool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return {nullptr, nullptr, nullptr, c10::Device(c10::DeviceType::CPU)};  // a storage resized to 0
    const int64_t bytes = (int64_t(n) + kHugePage - 1) / kHugePage * kHugePage;
    void* data = take(bytes);
    if (data == nullptr) data = map(bytes);
    c10::profiledCPUMemoryReporter().New(data, n);
    return {data, new Block{data, bytes}, &Pool::free_block, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {wanted(), cached_bytes_, int64_t(held_.size()), live_bytes_, hits_, misses_, limit_};
  }

  void release() {
    std::deque<Block> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      dropped.swap(held_);
      cached_bytes_ = 0;
    }
    for (const Block& b : dropped) munmap(b.data, size_t(b.bytes));
  }

  int64_t limit() const { return limit_; }

 private:
  static void free_block(void* ctx);

  void* take(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = held_.rbegin(); it != held_.rend(); ++it) {
      if (it->bytes == bytes) {
        void* data = it->data;
        held_.erase(std::next(it).base());
        cached_bytes_ -= bytes;
        live_bytes_ += bytes;
        ++hits_;
        return data;
      }
    }
    ++misses_;
    live_bytes_ += bytes;
    return nullptr;
  }

  void* map(int64_t bytes) {
    void* p = map_aligned(bytes);
    if (p == nullptr) {  // the held blocks may be what fills memory
      release();
      p = map_aligned(bytes);
    }
    if (p == nullptr) {
      std::lock_guard<std::mutex> lock(mutex_);
      live_bytes_ -= bytes;
    }
    TORCH_CHECK_WITH(OutOfMemoryError, p != nullptr, "lowlight_fast: cannot allocate an output of ", bytes,
                     " bytes (mmap failed)");
    advise_huge_pages(p, bytes);
#if defined(MADV_POPULATE_WRITE)
    // With 4 KiB pages, mapping the block in one call (Linux 5.14+; ignored before) beats taking a page
    // fault per page in the kernel's threads; with huge pages it made no difference.
    if (!huge_pages_wanted()) madvise(p, size_t(bytes), MADV_POPULATE_WRITE);
#endif
    return p;
  }

  static void* map_aligned(int64_t bytes) {
    const size_t length = size_t(bytes + kHugePage);
    void* raw = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (begin + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
    if (aligned > begin) munmap(raw, aligned - begin);
    const uintptr_t end = begin + length, used_end = aligned + uintptr_t(bytes);
    if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
    return reinterpret_cast<void*>(aligned);
  }

  void give_back(const Block& b) {
    std::deque<Block> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_bytes_ -= b.bytes;
      if (b.bytes <= limit_) {
        held_.push_back(b);
        cached_bytes_ += b.bytes;
        while (cached_bytes_ > limit_) {
          dropped.push_back(held_.front());
          cached_bytes_ -= held_.front().bytes;
          held_.pop_front();
        }
      } else {
        dropped.push_back(b);
      }
    }
    for (const Block& d : dropped) munmap(d.data, size_t(d.bytes));
  }

  std::mutex mutex_;
  std::deque<Block> held_;  // oldest first
  int64_t cached_bytes_ = 0, live_bytes_ = 0, hits_ = 0, misses_ = 0;
  const int64_t limit_ = compute_limit();
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: tensors may outlive static destruction
  return *p;
}

void Pool::free_block(void* ctx) {
  const Block* b = static_cast<const Block*>(ctx);
  c10::profiledCPUMemoryReporter().Delete(b->data);
  pool().give_back(*b);
  delete b;
}
#endif

}  // namespace

Stats stats() {
#if defined(__linux__)
  return pool().stats();
#else
  return {false, 0, 0, 0, 0, 0, 0};
#endif
}

void release() {
#if defined(__linux__)
  pool().release();
#endif
}

int64_t limit_bytes() {
#if defined(__linux__)
  return pool().limit();
#else
  return 0;
#endif
}

}  // namespace output_pool

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
#if defined(__linux__)
  if (options.device().is_cpu() && !options.pinned_memory() && output_pool::wanted() &&
      c10::GetCPUAllocator() == c10::GetDefaultCPUAllocator()) {
    const int64_t nbytes = c10::multiply_integers(sizes) * int64_t(c10::elementSize(options.dtype().toScalarType()));
    if (nbytes >= output_pool::kMinBytes) {
      return at::detail::empty_generic(sizes, &output_pool::pool(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                       options.dtype().toScalarType(), options.memory_format_opt());
    }
  }
#endif
  at::Tensor t = at::empty(sizes, options);
  if (t.device().is_cpu()) advise_huge_pages(t.data_ptr(), int64_t(t.nbytes()));
  return t;
}

}  // namespace lowlight_fast
