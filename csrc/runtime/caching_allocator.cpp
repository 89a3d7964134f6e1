// A caching allocator for PyTorch's CPU tensors (opt-in: lowlight_fast.memory.keep_freed_memory()).
//
// Why: PyTorch takes every CPU tensor from malloc, and glibc serves big blocks with a fresh mmap and
// unmaps them on free, so every image-sized tensor of every step is new memory whose first touch costs a
// page fault per 4 KiB page: many times the cost of writing memory that is already mapped (figures in
// benchmarks/RESULTS.md). glibc's own knobs (M_MMAP_MAX=0) do not fix it: posix_memalign leaves a small
// chunk behind each block and the freed block is then too small for the next request of the same size.
//
// How: blocks of at least kMinBytes are rounded up to a size class (8 per power of two: at most 12.5%
// more memory) and, when freed, kept in a list for the next request of the same class, as a GPU's
// caching allocator does. Smaller requests pass straight through. The cached bytes are bounded by a
// limit; past it the oldest cached blocks go back to the system. Blocks that have not been reused for a
// long time (kMinStaleAge), and, after several misses in a row (new sizes: the next image of a folder
// of photos), every block freed before those misses go back at the next miss: a run over images of
// many sizes holds about what it would hold without the cache. The underlying memory comes from the
// allocator that was installed before (PyTorch's default: alignment, huge pages with
// THP_MEM_ALLOC_ENABLE=1, memory profiler reporting), through its raw interface.
//
// It is a process-wide facility, not an op: it lives in csrc/runtime and is built as its own small
// extension module, lowlight_fast._runtime (csrc/runtime/module.cpp), apart from the kernels of _C.
#include "runtime/caching_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <pthread.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <mutex>
#include <unordered_map>

namespace lowlight_fast {
namespace cpu_cache {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;  // 1 MiB: smaller blocks are glibc's business

size_t size_class(size_t n) {
  // round up to a multiple of 1/8 of the largest power of two not above n
  size_t top = size_t(1) << (63 - __builtin_clzll(static_cast<unsigned long long>(n)));
  const size_t step = std::max<size_t>(top / 8, 4096);
  return (n + step - 1) / step * step;
}

// A block that has waited for reuse longer than this many large allocations (or twice the longest wait
// seen before a reuse, if that is more) is stale: the sizes it served are no longer asked for (a folder
// of images of other sizes). Stale blocks go back to the system at the next miss.
constexpr uint64_t kMinStaleAge = 32;
// This many misses in a row mean the sizes asked for have changed: blocks freed before them go back.
constexpr int kMissesInARow = 4;

struct FreeBlock {
  void* ptr;
  size_t bytes;
  uint64_t freed_at;  // the large-allocation count when it was freed
};

class CachingCPUAllocator final : public c10::Allocator {
 public:
  explicit CachingCPUAllocator(c10::Allocator* base) : base_(base), base_delete_(base->raw_deleter()) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) {
      void* p = base_->raw_allocate(n);
      return {p, p, &delete_block, c10::Device(c10::DeviceType::CPU)};
    }
    const size_t bytes = size_class(n);
    void* p = nullptr;
    std::deque<void*> stale;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++count_;
      if (enabled_) {
        for (auto it = free_.rbegin(); it != free_.rend(); ++it) {  // most recently freed first: warm
          if (it->bytes == bytes) {
            p = it->ptr;
            longest_wait_ = std::max(longest_wait_, count_ - it->freed_at);
            cached_bytes_ -= int64_t(bytes);
            free_.erase(std::next(it).base());
            break;
          }
        }
        if (p != nullptr) {
          misses_in_a_row_ = 0;
        } else {  // a miss: drop the stale blocks (free_ is in the order they were freed)
          if (misses_in_a_row_++ == 0) first_miss_ = count_;
          // several misses in a row: the sizes have changed (the next image of a folder); what was freed
          // before the first of them is not waited for any more
          const uint64_t age = misses_in_a_row_ >= kMissesInARow
                                   ? count_ - first_miss_
                                   : std::max(kMinStaleAge, 2 * longest_wait_);
          while (!free_.empty() && count_ - free_.front().freed_at > age) {
            stale.push_back(free_.front().ptr);
            cached_bytes_ -= int64_t(free_.front().bytes);
            free_.pop_front();
          }
        }
      }
      (p != nullptr ? hits_ : misses_) += 1;
    }
    for (void* q : stale) base_delete_(q);
    if (p == nullptr) {
      try {
        p = base_->raw_allocate(bytes);
      } catch (const c10::Error&) {  // out of memory: give the cached blocks back and try once more
        empty();
        p = base_->raw_allocate(bytes);
      }
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_.emplace(p, bytes);
      live_bytes_ += int64_t(bytes);
    }
    return {p, p, &delete_block, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &delete_block; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void release(void* p) {
    std::deque<void*> to_free;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = live_.find(p);
      if (it == live_.end()) {
        to_free.push_back(p);  // a small block: straight back
      } else {
        const size_t bytes = it->second;
        live_.erase(it);
        live_bytes_ -= int64_t(bytes);
        if (enabled_ && int64_t(bytes) <= limit_) {
          free_.push_back({p, bytes, count_});
          cached_bytes_ += int64_t(bytes);
          while (cached_bytes_ > limit_) {  // oldest first
            to_free.push_back(free_.front().ptr);
            cached_bytes_ -= int64_t(free_.front().bytes);
            free_.pop_front();
          }
        } else {
          to_free.push_back(p);
        }
      }
    }
    for (void* q : to_free) base_delete_(q);
  }

  void configure(bool enabled, int64_t limit) {
    std::deque<FreeBlock> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      enabled_ = enabled;
      limit_ = std::max<int64_t>(limit, 0);
      if (!enabled_) {
        drop.swap(free_);
        cached_bytes_ = 0;
      }
    }
    for (const FreeBlock& b : drop) base_delete_(b.ptr);
  }

  void empty() {
    std::deque<FreeBlock> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      drop.swap(free_);
      cached_bytes_ = 0;
    }
    for (const FreeBlock& b : drop) base_delete_(b.ptr);
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {cached_bytes_, int64_t(free_.size()), live_bytes_, hits_, misses_, limit_, enabled_};
  }

  // fork() copies one thread: the mutex must not be held by another one at that moment (a DataLoader
  // worker would otherwise deadlock on its first large tensor). Held across fork, released on both sides.
  void lock_for_fork() { mutex_.lock(); }
  void unlock_after_fork() { mutex_.unlock(); }

 private:
  static void delete_block(void* p);

  c10::Allocator* base_;
  c10::DeleterFnPtr base_delete_;
  std::mutex mutex_;
  std::deque<FreeBlock> free_;                  // oldest at the front
  std::unordered_map<void*, size_t> live_;      // cached-size blocks in use
  int64_t cached_bytes_ = 0, live_bytes_ = 0, hits_ = 0, misses_ = 0, limit_ = 0;
  uint64_t count_ = 0, longest_wait_ = 0;  // large allocations so far; longest wait of a reused block
  uint64_t first_miss_ = 0;                // the count at the first of the current run of misses
  int misses_in_a_row_ = 0;
  bool enabled_ = false;
};

// Never destroyed: tensors may be freed during interpreter shutdown, after static destructors ran.
CachingCPUAllocator* g_allocator = nullptr;
std::mutex g_install_mutex;

void CachingCPUAllocator::delete_block(void* p) {
  if (p != nullptr) g_allocator->release(p);
}

void before_fork() { g_allocator->lock_for_fork(); }
void after_fork() { g_allocator->unlock_after_fork(); }

}  // namespace

bool enable(int64_t limit_bytes) {
  TORCH_CHECK(limit_bytes >= 0, "keep_freed_memory: the limit must be >= 0 bytes, got ", limit_bytes);
  std::lock_guard<std::mutex> lock(g_install_mutex);
  if (g_allocator == nullptr) {
    c10::Allocator* base = c10::GetCPUAllocator();
    if (base->raw_deleter() == nullptr) return false;
    g_allocator = new CachingCPUAllocator(base);
    pthread_atfork(&before_fork, &after_fork, &after_fork);
    c10::SetCPUAllocator(g_allocator, /*priority=*/1);
  }
  if (c10::GetCPUAllocator() != g_allocator) return false;  // another library installed its own
  g_allocator->configure(true, limit_bytes);
  return true;
}

void disable() {
  std::lock_guard<std::mutex> lock(g_install_mutex);
  if (g_allocator != nullptr) g_allocator->configure(false, 0);
}

void empty() {
  std::lock_guard<std::mutex> lock(g_install_mutex);
  if (g_allocator != nullptr) g_allocator->empty();
}

Stats stats() {
  std::lock_guard<std::mutex> lock(g_install_mutex);
  if (g_allocator == nullptr) return {0, 0, 0, 0, 0, 0, false};
  return g_allocator->stats();
}

}  // namespace cpu_cache
}  // namespace lowlight_fast
