// Outputs of the CPU kernels that are written in one go (gradients, enhanced images, convolutions).
//
// A large CPU tensor is fresh memory from the system (glibc mmaps blocks above 32 MiB and most above
// 128 KiB), and its first write costs a page fault per 4 KiB page, far more than writing pages that are
// already there (see benchmarks/RESULTS.md). Two remedies, both here:
// - The output pool: big outputs (>= 4 MiB) are taken from a small bounded pool of blocks that our own
//   kernels' outputs left behind, so an output of a size seen before is written without page faults. It
//   is used only while PyTorch's default CPU allocator is in place (not under lowlight_fast.memory's
//   caching allocator, which already reuses memory, nor under any other installed allocator); the
//   pool holds at most output_pool::limit_bytes() of freed blocks, oldest given back first;
//   LOWLIGHT_FAST_OUTPUT_POOL=0 turns it off; output_pool::release() (Python:
//   lowlight_fast.memory.release_cached_memory()) gives its blocks back.
// - Huge pages: asking for transparent huge pages on a block before writing it (what PyTorch does for
//   every tensor with THP_MEM_ALLOC_ENABLE=1) turns 512 page faults into one; where the system has THP
//   off, or the block is already mapped, the advice changes nothing. LOWLIGHT_FAST_HUGE_PAGES=0 turns it
//   off.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace lowlight_fast {

constexpr int64_t kHugePage = int64_t(2) << 20;

// LOWLIGHT_FAST_HUGE_PAGES=0 turns the advice off (read once).
inline bool huge_pages_wanted() {
  static const bool wanted = [] {
    const char* v = std::getenv("LOWLIGHT_FAST_HUGE_PAGES");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return wanted;
}

inline void advise_huge_pages(void* data, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (nbytes < 2 * kHugePage || !huge_pages_wanted()) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + uintptr_t(nbytes)) & ~uintptr_t(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // advice: errors ignored
#else
  (void)data;
  (void)nbytes;
#endif
}

namespace output_pool {

struct Stats {
  bool enabled;          // LOWLIGHT_FAST_OUTPUT_POOL is not 0 (the pool is also skipped under another allocator)
  int64_t cached_bytes;  // freed blocks held for reuse
  int64_t cached_blocks;
  int64_t live_bytes;    // blocks handed out and not yet freed
  int64_t hits;          // outputs served from a held block
  int64_t misses;        // outputs that needed a new block
  int64_t limit_bytes;   // most cached_bytes ever held
};

Stats stats();
// Gives every held block back to the system (outputs still alive are unaffected).
void release();
int64_t limit_bytes();

}  // namespace output_pool

// at::empty for an output that the kernel is about to write in full (contiguous), from the output pool
// when it is big enough, with huge-page advice otherwise.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

inline at::Tensor empty_output_like(const at::Tensor& like) {
  return empty_output(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace lowlight_fast
