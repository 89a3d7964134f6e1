// Outputs of the CPU kernels that are written in one go (gradients, enhanced images).
//
// A large CPU tensor is fresh memory from the system (glibc mmaps blocks above 32 MiB and most above
// 128 KiB), and its first write costs a page fault per 4 KiB page, far more than writing pages that are
// already there (see benchmarks/RESULTS.md). Asking for transparent huge pages on the block before
// writing it (what PyTorch does for every tensor with THP_MEM_ALLOC_ENABLE=1) turns 512 page faults into
// one; where the system has THP off, or the block is already mapped (the caching allocator of
// lowlight_fast.memory), the advice changes nothing.
//
// This stays with the kernels, not in csrc/runtime: it is how a CPU kernel allocates its own outputs,
// used by csrc/cpu alone, and holds no process-wide state (the caching allocator, which does, is there).
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

// at::empty for an output that the kernel is about to write in full.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  if (t.device().is_cpu()) advise_huge_pages(t.data_ptr(), int64_t(t.nbytes()));
  return t;
}

inline at::Tensor empty_output_like(const at::Tensor& like) {
  return empty_output(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace lowlight_fast
