// Portable vectorisation for the CPU kernels (never -march=native: the build may be copied elsewhere).
// Per-instruction-set copies of a function are made and chosen by cpu/dispatch.h
// (LOWLIGHT_FAST_CPU_DISPATCH); the loops they call must be LOWLIGHT_FAST_INLINE so that each copy
// compiles them for its instruction set.
#pragma once

#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__GNUC__)
#define LOWLIGHT_FAST_INLINE inline __attribute__((always_inline))
#else
#define LOWLIGHT_FAST_INLINE inline
#endif

#define LOWLIGHT_FAST_SIMD _Pragma("omp simd")

namespace lowlight_fast {

// Outputs at least this large are written with non-temporal stores: they do not fit in the cache, so
// reading their lines before writing them (what a normal store does) is wasted memory traffic, and
// they would evict the inputs.
constexpr int64_t kStreamBytes = int64_t(16) << 20;

#if defined(__x86_64__)
constexpr bool kCanStream = true;
// Copies n floats from src (a buffer in L1) to dst with non-temporal stores where dst is 16-byte aligned.
LOWLIGHT_FAST_INLINE void stream_copy(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = src[i];
  for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
}
LOWLIGHT_FAST_INLINE void stream_copy(double* dst, const double* src, int64_t n) {
  int64_t i = 0;
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = src[i];
  for (; i + 2 <= n; i += 2) _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
  for (; i < n; ++i) dst[i] = src[i];
}
// Non-temporal stores are weakly ordered: each task fences them before it reports itself done.
LOWLIGHT_FAST_INLINE void stream_fence() { _mm_sfence(); }
#else
constexpr bool kCanStream = false;
template <typename T>
LOWLIGHT_FAST_INLINE void stream_copy(T* dst, const T* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}
LOWLIGHT_FAST_INLINE void stream_fence() {}
#endif

}  // namespace lowlight_fast
