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

#if defined(__GNUC__)
// Register blocks of float sums in GCC/Clang vector types, kLanes floats a vector (16: one AVX-512
// register, 8: one AVX2 register; each dispatch copy compiles them for its instruction set). The same
// sums written as arrays with `omp simd` loops left GCC's AVX2 and AVX-512 copies zeroing the array
// on the stack and copying it out after every block (benchmarks/RESULTS.md).
constexpr bool kHasFloatVectors = true;
template <int kLanes>
struct FloatVec;
template <>
struct FloatVec<8> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct FloatVec<16> {
  typedef float type __attribute__((vector_size(64)));
};

// out[r * out_row + j] (=, or += when kAdd) sum_{k < n} a[r * a_row + k * a_step] * b[k * b_step + j]
// for r < R, j < kW (kW 1, 2 or 3 times kLanes): each sum over k in increasing order, one multiply-add
// a step (as the array loops it replaces, whose results it equals).
template <int R, int kW, int kLanes, bool kAdd>
LOWLIGHT_FAST_INLINE void block_sums(const float* a, int64_t a_row, int64_t a_step, const float* b, int64_t b_step,
                                     int64_t n, float* out, int64_t out_row) {
  using V = typename FloatVec<kLanes>::type;
  static_assert(kW % kLanes == 0, "block_sums: kW must be a multiple of kLanes");
  constexpr int kV = kW / kLanes;
  if constexpr (kV == 3) {  // one array per vector column: with acc[R][3] GCC kept the sums in memory
    V c0[R], c1[R], c2[R];
    for (int r = 0; r < R; ++r) c0[r] = c1[r] = c2[r] = V{};
    for (int64_t k = 0; k < n; ++k) {
      V w0, w1, w2;
      __builtin_memcpy(&w0, b + k * b_step, sizeof(V));
      __builtin_memcpy(&w1, b + k * b_step + kLanes, sizeof(V));
      __builtin_memcpy(&w2, b + k * b_step + 2 * kLanes, sizeof(V));
      for (int r = 0; r < R; ++r) {
        const float s = a[r * a_row + k * a_step];
        c0[r] += s * w0;
        c1[r] += s * w1;
        c2[r] += s * w2;
      }
    }
    for (int r = 0; r < R; ++r) {
      V* cs[3] = {&c0[r], &c1[r], &c2[r]};
      for (int q = 0; q < 3; ++q) {
        float* d = out + r * out_row + q * kLanes;
        V o = *cs[q];
        if constexpr (kAdd) {
          V prev;
          __builtin_memcpy(&prev, d, sizeof(V));
          o = prev + o;
        }
        __builtin_memcpy(d, &o, sizeof(V));
      }
    }
    return;
  }
  V acc[R][kV];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < kV; ++q) acc[r][q] = V{};
  for (int64_t k = 0; k < n; ++k) {
    V w[kV];
    for (int q = 0; q < kV; ++q) __builtin_memcpy(&w[q], b + k * b_step + q * kLanes, sizeof(V));
    for (int r = 0; r < R; ++r) {
      const float s = a[r * a_row + k * a_step];
      for (int q = 0; q < kV; ++q) acc[r][q] += s * w[q];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < kV; ++q) {
      float* d = out + r * out_row + q * kLanes;
      if constexpr (kAdd) {
        V o;
        __builtin_memcpy(&o, d, sizeof(V));
        o += acc[r][q];
        __builtin_memcpy(d, &o, sizeof(V));
      } else {
        __builtin_memcpy(d, &acc[r][q], sizeof(V));
      }
    }
}
#else
constexpr bool kHasFloatVectors = false;
#endif

}  // namespace lowlight_fast
