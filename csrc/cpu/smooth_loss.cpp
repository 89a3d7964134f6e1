// CPU kernels of SCI's 24-direction edge-aware smoothness loss (math in csrc/common/smooth_loss.h).
//
// One pass computes the loss and both gradients. Rows are processed in chunks of kChunkRows; a chunk
// first converts its rows (and the kMaxOffset rows below) to YCbCr in a small buffer that stays in
// cache, then evaluates each unique pair (12 per pixel) once: the derivative at its end q is added in
// place, the one at its start p is gathered in 6 row accumulators and added once per row, so the inner
// loops have no dependence between iterations and vectorise (`#pragma omp simd`; AVX-512 / AVX2
// variants chosen at run time, honouring ATEN_CPU_CAPABILITY). d loss/d Y is accumulated in the
// d loss/d input output and converted in place at the end. Memory traffic per pixel, float32: read
// input and output (24 B), write both gradients (24 B), one more read+write of d/d input (24 B).
// Extra memory: none of full size for float32/float64 (chunk buffers only); for float16/bfloat16
// float copies of the arguments and of both gradients.
//
// Threads: a chunk writes its own rows and the 2 below. Even chunks run first, then odd ones, so no
// two running chunks touch the same row, no atomics are needed, and the order in which a row receives
// its contributions does not depend on the thread count. The per-chunk loss sums are added in chunk
// order, in double: the result is deterministic.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <cmath>
#include <algorithm>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/smooth_loss.h"
#include "cpu/alloc.h"
#include "cpu/dispatch.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

namespace lowlight_fast {
namespace smooth {
namespace {

constexpr int64_t kChunkRows = 16;  // >= kMaxOffset, so only neighbouring chunks share rows
constexpr int kPeriod = 48;          // a multiple of 3 and of every vector width (faithful YCbCr tables)

#if defined(__GNUC__)
#define SL_ALWAYS_INLINE inline __attribute__((always_inline))
#define SL_PREFETCH(ptr, rw) __builtin_prefetch((ptr), (rw))
#else
#define SL_ALWAYS_INLINE inline
#define SL_PREFETCH(ptr, rw) ((void)(ptr))
#endif

// SCI's faithful rgb2yCbCr as a 5-tap filter over the flat memory with coefficients periodic in 3:
// Y[f] = sum_{k=-2..2} tap[k+2][f % 3] * in[f + k] + bias[f % 3], tabulated over kPeriod (+2 for the
// phase of the first element) so that the loop over f vectorises.
template <typename acc_t>
struct FaithfulTables {
  alignas(64) acc_t tap[5][kPeriod + 2];
  alignas(64) acc_t bias[kPeriod + 2];
  FaithfulTables() {
    for (int m = 0; m < kPeriod + 2; ++m) {
      const int j = m % 3;
      for (int k = -2; k <= 2; ++k) {
        const int i = k + j;
        tap[k + 2][m] = (i >= 0 && i <= 2) ? ycbcr_m<acc_t>(i, j) : acc_t(0);
      }
      bias[m] = ycbcr_bias<acc_t>(j);
    }
  }
};

// One image and the rows a task owns.
template <typename acc_t>
struct RowTask {
  const acc_t* in;  // 3 planes of height x width (the image)
  acc_t* y;         // converted rows [y_row0, y_row0 + y_rows) of the 3 planes, filled by the task
  int64_t y_row0, y_rows;
  const acc_t* o;  // 3 planes (output / illumination)
  acc_t* go;       // 3 planes of d loss / d o, or null (loss only)
  acc_t* gy;       // 3 planes of d loss / d y, or null
  acc_t* scratch;  // 6 x width
  int64_t height, width;
  int64_t row_begin, row_end;    // p-rows processed
  int64_t zero_begin, zero_end;  // gradient rows to clear first (this task writes them first)
  const Coefs<acc_t>* coefs;
  const FaithfulTables<acc_t>* faithful;  // null: per-pixel conversion
};

// Y for the task's rows (the p-rows and the kMaxOffset rows below them), from the image.
template <typename acc_t>
SL_ALWAYS_INLINE void convert_rows(const RowTask<acc_t>& t) {
  const int64_t w = t.width, hw = t.height * w, n = t.y_rows * w, first = t.y_row0 * w;
  if (t.faithful == nullptr) {
    for (int j = 0; j < 3; ++j) {
      const acc_t m0 = ycbcr_m<acc_t>(0, j), m1 = ycbcr_m<acc_t>(1, j), m2 = ycbcr_m<acc_t>(2, j);
      const acc_t bj = ycbcr_bias<acc_t>(j);
      const acc_t* __restrict__ r = t.in + first;
      const acc_t* __restrict__ g = r + hw;
      const acc_t* __restrict__ b = g + hw;
      acc_t* __restrict__ out = t.y + j * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) out[i] = r[i] * m0 + g[i] * m1 + b[i] * m2 + bj;
    }
    return;
  }
  const FaithfulTables<acc_t>& tb = *t.faithful;
  for (int c = 0; c < 3; ++c) {
    const int64_t f0 = c * hw + first, f1 = f0 + n;  // flat range of this plane's rows
    acc_t* __restrict__ out = t.y + c * n;             // out[f - f0]
    // The first and last conversion rows of the image would read outside it: scalar there.
    const int64_t v0 = std::min(f1, std::max<int64_t>(f0, 3)), v1 = std::max(v0, std::min<int64_t>(f1, 3 * hw - 3));
    const auto scalar = [&](int64_t from, int64_t to) {
      for (int64_t f = from; f < to; ++f) {
        const int64_t base = f - f % 3;
        const int j = static_cast<int>(f % 3);
        out[f - f0] = t.in[base] * ycbcr_m<acc_t>(0, j) + t.in[base + 1] * ycbcr_m<acc_t>(1, j) +
                      t.in[base + 2] * ycbcr_m<acc_t>(2, j) + ycbcr_bias<acc_t>(j);
      }
    };
    scalar(f0, v0);
    scalar(v1, f1);
    const int ph = static_cast<int>(v0 % 3);
    const acc_t* __restrict__ k0 = tb.tap[0] + ph;
    const acc_t* __restrict__ k1 = tb.tap[1] + ph;
    const acc_t* __restrict__ k2 = tb.tap[2] + ph;
    const acc_t* __restrict__ k3 = tb.tap[3] + ph;
    const acc_t* __restrict__ k4 = tb.tap[4] + ph;
    const acc_t* __restrict__ kb = tb.bias + ph;
    for (int64_t blk = v0; blk < v1; blk += kPeriod) {
      const int64_t len = std::min<int64_t>(kPeriod, v1 - blk);
      const acc_t* __restrict__ src = t.in + blk;
      acc_t* __restrict__ dst = out + (blk - f0);
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        dst[i] = k0[i] * src[i - 2] + k1[i] * src[i - 1] + k2[i] * src[i] + k3[i] * src[i + 1] + k4[i] * src[i + 2] +
                 kb[i];
      }
    }
  }
}

// Pairs (row, x) -> (row + dy, x + dx) for one offset: returns sum_x t; with gradients, adds the q-side
// derivatives to go/gy and the p-side ones to the 6 scratch rows.
template <typename acc_t, bool kGrad>
SL_ALWAYS_INLINE acc_t row_offset(const RowTask<acc_t>& t, int64_t row, int k) {
  const int dy = offset_dy(k), dx = offset_dx(k);
  const int64_t w = t.width, hw = t.height * w;
  const int64_t x0 = dx < 0 ? -dx : 0, x1 = dx > 0 ? w - dx : w;
  const int64_t p = row * w, q = (row + dy) * w + dx;
  const int64_t yhw = t.y_rows * w, yp = (row - t.y_row0) * w, yq = yp + dy * w + dx;
  const acc_t s = t.coefs->s, a = t.coefs->a[k], m2sa = acc_t(-2) * s * a;
  const acc_t* __restrict__ yp0 = t.y + yp;
  const acc_t* __restrict__ yp1 = yp0 + yhw;
  const acc_t* __restrict__ yp2 = yp1 + yhw;
  const acc_t* __restrict__ yq0 = t.y + yq;
  const acc_t* __restrict__ yq1 = yq0 + yhw;
  const acc_t* __restrict__ yq2 = yq1 + yhw;
  const acc_t* __restrict__ op0 = t.o + p;
  const acc_t* __restrict__ op1 = op0 + hw;
  const acc_t* __restrict__ op2 = op1 + hw;
  const acc_t* __restrict__ oq0 = t.o + q;
  const acc_t* __restrict__ oq1 = oq0 + hw;
  const acc_t* __restrict__ oq2 = oq1 + hw;
  acc_t sum = 0;
  if (!kGrad) {
#pragma omp simd reduction(+ : sum)
    for (int64_t x = x0; x < x1; ++x) {
      acc_t wgt;
      sum += pair_term(yq0[x] - yp0[x], yq1[x] - yp1[x], yq2[x] - yp2[x], oq0[x] - op0[x], oq1[x] - op1[x],
                       oq2[x] - op2[x], s, wgt);
    }
    return sum;
  }
  acc_t* __restrict__ goq0 = t.go + q;
  acc_t* __restrict__ goq1 = goq0 + hw;
  acc_t* __restrict__ goq2 = goq1 + hw;
  acc_t* __restrict__ gyq0 = t.gy + q;
  acc_t* __restrict__ gyq1 = gyq0 + hw;
  acc_t* __restrict__ gyq2 = gyq1 + hw;
  acc_t* __restrict__ sp0 = t.scratch;  // p-side d/dO, then d/dY, rows of width
  acc_t* __restrict__ sp1 = sp0 + w;
  acc_t* __restrict__ sp2 = sp1 + w;
  acc_t* __restrict__ sp3 = sp2 + w;
  acc_t* __restrict__ sp4 = sp3 + w;
  acc_t* __restrict__ sp5 = sp4 + w;
#pragma omp simd reduction(+ : sum)
  for (int64_t x = x0; x < x1; ++x) {
    const acc_t d0 = yq0[x] - yp0[x], d1 = yq1[x] - yp1[x], d2 = yq2[x] - yp2[x];
    const acc_t g0 = oq0[x] - op0[x], g1 = oq1[x] - op1[x], g2 = oq2[x] - op2[x];
    acc_t wgt;
    const acc_t term = pair_term(d0, d1, d2, g0, g1, g2, s, wgt);
    sum += term;
    const acc_t cw = a * wgt, ct = m2sa * term;
    const acc_t v0 = cw * sign_of(g0), v1 = cw * sign_of(g1), v2 = cw * sign_of(g2);
    const acc_t u0 = ct * d0, u1 = ct * d1, u2 = ct * d2;
    goq0[x] += v0;
    goq1[x] += v1;
    goq2[x] += v2;
    gyq0[x] += u0;
    gyq1[x] += u1;
    gyq2[x] += u2;
    sp0[x] -= v0;
    sp1[x] -= v1;
    sp2[x] -= v2;
    sp3[x] -= u0;
    sp4[x] -= u1;
    sp5[x] -= u2;
  }
  return sum;
}

// Asks for the row that the next p-row brings in (the only new data per row): hardware prefetchers
// lose track of the 12 to 24 streams of the pair loops, which made large images memory-bound.
template <typename acc_t>
SL_ALWAYS_INLINE void prefetch_row(const RowTask<acc_t>& t, int64_t row, bool with_grad) {
  if (row >= t.height) return;
  const int64_t w = t.width, hw = t.height * w, line = 64 / sizeof(acc_t);
  for (int ch = 0; ch < 3; ++ch) {
    const int64_t off = ch * hw + row * w;
    for (int64_t x = 0; x < w; x += line) {
      SL_PREFETCH(t.o + off + x, 0);
      if (with_grad) {
        SL_PREFETCH(t.go + off + x, 1);
        SL_PREFETCH(t.gy + off + x, 1);
      }
    }
  }
}

// The rows of one task; returns its share of the loss.
// The pair loops of one p-row for the generic variants: row_offset, vectorised by the compiler.
struct GenericPairs {
  template <typename acc_t, bool kGrad>
  static SL_ALWAYS_INLINE double row(const RowTask<acc_t>& t, int64_t row) {
    double loss = 0;
    for (int k = 0; k < kNumOffsets; ++k) {
      if (row + offset_dy(k) >= t.height) continue;
      loss += static_cast<double>(t.coefs->a[k] * row_offset<acc_t, kGrad>(t, row, k));
    }
    return loss;
  }
};

template <typename acc_t, bool kGrad, typename Pairs = GenericPairs>
SL_ALWAYS_INLINE double process_rows(const RowTask<acc_t>& t) {
  const int64_t w = t.width, hw = t.height * w;
  if (kGrad) {
    for (int ch = 0; ch < 3; ++ch) {
      const int64_t off = ch * hw + t.zero_begin * w, n = (t.zero_end - t.zero_begin) * w;
      if (n > 0) {
        std::memset(t.go + off, 0, n * sizeof(acc_t));
        std::memset(t.gy + off, 0, n * sizeof(acc_t));
      }
    }
  }
  convert_rows(t);
  double loss = 0;
  for (int64_t row = t.row_begin; row < t.row_end; ++row) {
    if (kGrad) std::memset(t.scratch, 0, 6 * w * sizeof(acc_t));
    prefetch_row(t, row + kMaxOffset + 1, kGrad);
    loss += Pairs::template row<acc_t, kGrad>(t, row);
    if (kGrad) {
      for (int ch = 0; ch < 3; ++ch) {
        acc_t* __restrict__ go = t.go + ch * hw + row * w;
        acc_t* __restrict__ gy = t.gy + ch * hw + row * w;
        const acc_t* __restrict__ s_o = t.scratch + ch * w;
        const acc_t* __restrict__ s_y = t.scratch + (3 + ch) * w;
#pragma omp simd
        for (int64_t x = 0; x < w; ++x) {
          go[x] += s_o[x];
          gy[x] += s_y[x];
        }
      }
    }
  }
  return loss;
}

// Instruction-set variants of the float32 row loops (double is for tests and gradcheck: generic only).
using RowsF32 = double (*)(const RowTask<float>&);

#if defined(__GNUC__) && defined(__x86_64__)
#define SL_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2")))
#define SL_AVX2 __attribute__((target("avx2,fma,bmi2")))
template <bool kGrad>
SL_AVX512 double rows_f32_avx512(const RowTask<float>& t) {
  return process_rows<float, kGrad>(t);
}

// The AVX2 pair loop, written with intrinsics: GCC's vectorisation of row_offset under
// target("avx2") keeps the reduction and the weight in stack arrays and spills the 24 stream pointers,
// a store-to-load chain through memory in every iteration. Same arithmetic as exp_nonpositive and
// row_offset (with FMA where the compiler contracts them); the last (x1 - x0) % 8 pairs of a row go
// through the same code with masked loads and stores, so every pair is computed the same way.
namespace avx2 {

// exp_nonpositive on 8 lanes. max(-87, x) with -87 first is `x < -87 ? -87 : x` (NaN stays NaN).
SL_AVX2 SL_ALWAYS_INLINE __m256 exp_nonpositive(__m256 x) {
  const __m256 xc = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  const __m256 shifted = _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), magic);
  const __m256 fx = _mm256_sub_ps(shifted, magic);
  __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fmadd_ps(fx, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
  // (n + 127) << 23 with n = bits(shifted) - bits(magic)
  const __m256i bits =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(127 - 0x4B400000)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

SL_AVX2 SL_ALWAYS_INLINE __m256 abs_ps(__m256 v) {
  return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

// c * sign_of(g): c with g's sign where g > 0 or g < 0, else 0 (g = 0 or NaN, as sign_of).
SL_AVX2 SL_ALWAYS_INLINE __m256 times_sign(__m256 c, __m256 g) {
  const __m256 nonzero = _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_NEQ_OQ);
  return _mm256_and_ps(nonzero, _mm256_xor_ps(c, _mm256_and_ps(g, _mm256_set1_ps(-0.0f))));
}

SL_AVX2 SL_ALWAYS_INLINE float hsum(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// Full (kMasked false) or masked loads and stores of 8 floats.
template <bool kMasked>
struct Lanes {
  __m256i mask;
  SL_AVX2 SL_ALWAYS_INLINE __m256 load(const float* ptr) const {
    return kMasked ? _mm256_maskload_ps(ptr, mask) : _mm256_loadu_ps(ptr);
  }
  SL_AVX2 SL_ALWAYS_INLINE void store(float* ptr, __m256 v) const {
    if (kMasked) {
      _mm256_maskstore_ps(ptr, mask, v);
    } else {
      _mm256_storeu_ps(ptr, v);
    }
  }
  SL_AVX2 SL_ALWAYS_INLINE __m256 keep(__m256 v) const {  // zero outside the mask
    return kMasked ? _mm256_and_ps(v, _mm256_castsi256_ps(mask)) : v;
  }
};

// The streams of one (row, offset): element x of each at ptr + x.
struct Streams {
  const float *yp[3], *yq[3], *op[3], *oq[3];
  float *goq[3], *gyq[3], *sp[6];
};

template <bool kGrad, bool kMasked>
SL_AVX2 SL_ALWAYS_INLINE void pairs8(const Streams& st, int64_t x, const Lanes<kMasked>& ln, __m256 neg_s, __m256 a,
                                     __m256 m2sa, __m256& sum) {
  const __m256 d0 = _mm256_sub_ps(ln.load(st.yq[0] + x), ln.load(st.yp[0] + x));
  const __m256 d1 = _mm256_sub_ps(ln.load(st.yq[1] + x), ln.load(st.yp[1] + x));
  const __m256 d2 = _mm256_sub_ps(ln.load(st.yq[2] + x), ln.load(st.yp[2] + x));
  const __m256 g0 = _mm256_sub_ps(ln.load(st.oq[0] + x), ln.load(st.op[0] + x));
  const __m256 g1 = _mm256_sub_ps(ln.load(st.oq[1] + x), ln.load(st.op[1] + x));
  const __m256 g2 = _mm256_sub_ps(ln.load(st.oq[2] + x), ln.load(st.op[2] + x));
  const __m256 dd = _mm256_fmadd_ps(d2, d2, _mm256_fmadd_ps(d1, d1, _mm256_mul_ps(d0, d0)));
  const __m256 wgt = exp_nonpositive(_mm256_mul_ps(neg_s, dd));
  const __m256 term = _mm256_mul_ps(wgt, _mm256_add_ps(_mm256_add_ps(abs_ps(g0), abs_ps(g1)), abs_ps(g2)));
  sum = _mm256_add_ps(sum, ln.keep(term));
  if (!kGrad) return;
  const __m256 cw = _mm256_mul_ps(a, wgt), ct = _mm256_mul_ps(m2sa, term);
  const __m256 v[3] = {times_sign(cw, g0), times_sign(cw, g1), times_sign(cw, g2)};
  const __m256 u[3] = {_mm256_mul_ps(ct, d0), _mm256_mul_ps(ct, d1), _mm256_mul_ps(ct, d2)};
  for (int c = 0; c < 3; ++c) {
    ln.store(st.goq[c] + x, _mm256_add_ps(ln.load(st.goq[c] + x), v[c]));
    ln.store(st.gyq[c] + x, _mm256_add_ps(ln.load(st.gyq[c] + x), u[c]));
    ln.store(st.sp[c] + x, _mm256_sub_ps(ln.load(st.sp[c] + x), v[c]));
    ln.store(st.sp[3 + c] + x, _mm256_sub_ps(ln.load(st.sp[3 + c] + x), u[c]));
  }
}

// Pairs of p-row `row` for offset k with x in [x0 + from, x0 + to) ∩ [x0, x1): returns sum_x t.
template <bool kGrad>
SL_AVX2 SL_ALWAYS_INLINE float row_offset(const RowTask<float>& t, int64_t row, int k, int64_t from, int64_t to) {
  const int dy = offset_dy(k), dx = offset_dx(k);
  const int64_t w = t.width, hw = t.height * w;
  const int64_t x0 = (dx < 0 ? -dx : 0) + from, x1 = std::min<int64_t>(dx > 0 ? w - dx : w, x0 - from + to);
  const int64_t p = row * w, q = (row + dy) * w + dx;
  const int64_t yhw = t.y_rows * w, yp = (row - t.y_row0) * w, yq = yp + dy * w + dx;
  const float s = t.coefs->s, a = t.coefs->a[k], m2sa = -2.0f * s * a;
  Streams st;
  for (int c = 0; c < 3; ++c) {
    st.yp[c] = t.y + yp + c * yhw;
    st.yq[c] = t.y + yq + c * yhw;
    st.op[c] = t.o + p + c * hw;
    st.oq[c] = t.o + q + c * hw;
    if (kGrad) {
      st.goq[c] = t.go + q + c * hw;
      st.gyq[c] = t.gy + q + c * hw;
    }
  }
  if (kGrad) {
    for (int c = 0; c < 6; ++c) st.sp[c] = t.scratch + c * w;
  }
  const __m256 neg_s = _mm256_set1_ps(-s), va = _mm256_set1_ps(a), vm2sa = _mm256_set1_ps(m2sa);
  __m256 sum = _mm256_setzero_ps();
  const Lanes<false> full{};
  int64_t x = x0;
  for (; x + 8 <= x1; x += 8) pairs8<kGrad>(st, x, full, neg_s, va, vm2sa, sum);
  if (x < x1) {
    const Lanes<true> part{_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(x1 - x)),
                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))};
    pairs8<kGrad>(st, x, part, neg_s, va, vm2sa, sum);
  }
  return hsum(sum);
}

// The pairs of one p-row, in blocks of kBlock pixels with the 12 offsets inside a block: the 24
// streams of a block (about 24 KiB) stay in L1 across the offsets; a whole row's (180 KiB at 1920
// pixels) came from L2 for every offset, and L2 bandwidth bounded the loop.
constexpr int64_t kBlock = 128;  // a multiple of 8: only a row's last block has a masked tail

// Not always_inline: process_rows, which calls it, has no target attribute.
template <bool kGrad>
SL_AVX2 double pair_row(const RowTask<float>& t, int64_t row) {
  float sums[kNumOffsets] = {};
  for (int64_t from = 0; from < t.width; from += kBlock) {
    for (int k = 0; k < kNumOffsets; ++k) {
      if (row + offset_dy(k) >= t.height) continue;
      sums[k] += row_offset<kGrad>(t, row, k, from, from + kBlock);
    }
  }
  double loss = 0;
  for (int k = 0; k < kNumOffsets; ++k) loss += static_cast<double>(t.coefs->a[k] * sums[k]);
  return loss;
}

struct Pairs {
  template <typename acc_t, bool kGrad>
  static SL_ALWAYS_INLINE double row(const RowTask<float>& t, int64_t row) {
    return pair_row<kGrad>(t, row);
  }
};

}  // namespace avx2

template <bool kGrad>
SL_AVX2 double rows_f32_avx2(const RowTask<float>& t) {
  return process_rows<float, kGrad, avx2::Pairs>(t);
}
#endif
template <bool kGrad>
double rows_f32_default(const RowTask<float>& t) {
  return process_rows<float, kGrad>(t);
}

// The float32 path: torch's CPU capability ("AVX512", "AVX2", ...; ATEN_CPU_CAPABILITY=default|avx2
// lowers it, for tests) where this CPU has the instructions.
enum class PathF32 { kAvx512, kAvx2, kDefault };

// The path every dispatched CPU kernel runs (cpu/dispatch.h: torch's capability, lowered by
// ATEN_CPU_CAPABILITY, and this CPU's support); the AVX2 copy is hand-written, so it is picked here.
PathF32 pick_path_f32() {
  switch (::lowlight_fast::cpu::chosen_path()) {
    case ::lowlight_fast::cpu::Path::kAvx512:
      return PathF32::kAvx512;
    case ::lowlight_fast::cpu::Path::kAvx2:
      return PathF32::kAvx2;
    default:
      return PathF32::kDefault;
  }
}

[[maybe_unused]] const bool smooth_loss_registered = ::lowlight_fast::cpu::register_kernel("smooth_loss");

template <bool kGrad>
RowsF32 pick_rows_f32() {
  switch (pick_path_f32()) {
#if defined(__GNUC__) && defined(__x86_64__)
    case PathF32::kAvx512:
      return rows_f32_avx512<kGrad>;
    case PathF32::kAvx2:
      return rows_f32_avx2<kGrad>;
#endif
    default:
      return rows_f32_default<kGrad>;
  }
}

template <typename acc_t, bool kGrad>
struct Rows {
  static double run(const RowTask<acc_t>& t) { return process_rows<acc_t, kGrad>(t); }
};
template <bool kGrad>
struct Rows<float, kGrad> {
  static double run(const RowTask<float>& t) {
    static const RowsF32 fn = pick_rows_f32<kGrad>();
    return fn(t);
  }
};

// The pair pass over all images: loss, and with gradients d/dO into go and d/dY into gy.
template <typename acc_t, bool kGrad>
double pair_pass(const acc_t* in, const acc_t* o, acc_t* go, acc_t* gy, int64_t batch, int64_t height, int64_t width,
                 const Coefs<acc_t>& coefs, bool faithful) {
  const FaithfulTables<acc_t> tables;
  const int64_t hw = height * width;
  const int64_t chunks = (height + kChunkRows - 1) / kChunkRows;
  std::vector<double> partial(batch * chunks, 0.0);
  // With gradients: wave 0 = even chunks, wave 1 = odd chunks. Without: one wave of all chunks.
  const int waves = kGrad ? 2 : 1;
  for (int wave = 0; wave < waves; ++wave) {
    const int64_t per_image = kGrad ? (chunks + 1 - wave) / 2 : chunks;
    at::parallel_for(0, batch * per_image, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch(kGrad ? 6 * width : 0);
      std::vector<acc_t> ybuf(3 * (kChunkRows + kMaxOffset) * width);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / per_image, i = task - b * per_image;
        const int64_t chunk = kGrad ? 2 * i + wave : i;
        RowTask<acc_t> t;
        t.in = in + b * 3 * hw;
        t.y = ybuf.data();
        t.o = o + b * 3 * hw;
        t.go = kGrad ? go + b * 3 * hw : nullptr;
        t.gy = kGrad ? gy + b * 3 * hw : nullptr;
        t.scratch = scratch.data();
        t.height = height;
        t.width = width;
        t.row_begin = chunk * kChunkRows;
        t.row_end = std::min(height, t.row_begin + kChunkRows);
        // Even chunks clear their rows and the kMaxOffset rows below; odd chunks the rest of theirs.
        t.zero_begin = wave == 0 ? t.row_begin : std::min(t.row_begin + kMaxOffset, t.row_end);
        t.zero_end = wave == 0 ? std::min(height, t.row_end + kMaxOffset) : t.row_end;
        t.y_row0 = t.row_begin;
        t.y_rows = std::min(height, t.row_end + kMaxOffset) - t.row_begin;
        t.coefs = &coefs;
        t.faithful = faithful ? &tables : nullptr;
        partial[b * chunks + chunk] = Rows<acc_t, kGrad>::run(t);
      }
    });
  }
  double loss = 0;
  for (const double v : partial) loss += v;
  return loss;
}

// in, out: float or double, contiguous. gin/gout: same dtype, or undefined (loss only).
template <typename acc_t>
double smooth_loss_kernel(const at::Tensor& in, const at::Tensor& out, double sigma, bool faithful, double scale,
                          at::Tensor* gin, at::Tensor* gout) {
  const int64_t batch = in.size(0), height = in.size(2), width = in.size(3);
  const int64_t hw = height * width, rows = batch * hw;
  const Coefs<acc_t> coefs = make_coefs<acc_t>(batch, height, width, sigma, scale);
  const acc_t* in_p = in.const_data_ptr<acc_t>();
  if (gin == nullptr) {
    return pair_pass<acc_t, false>(in_p, out.const_data_ptr<acc_t>(), nullptr, nullptr, batch, height, width, coefs,
                                   faithful);
  }
  // d loss / d Y is accumulated in gin's memory, then turned into d loss / d input in place (each
  // conversion row reads its 3 values before writing them).
  acc_t* gin_p = gin->mutable_data_ptr<acc_t>();
  const double loss = pair_pass<acc_t, true>(in_p, out.const_data_ptr<acc_t>(), gout->mutable_data_ptr<acc_t>(),
                                              gin_p, batch, height, width, coefs, faithful);
  at::parallel_for(0, rows, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) ycbcr_backward<acc_t>(gin_p, gin_p, triple_at(r, faithful, hw), acc_t(1));
  });
  return loss;
}

void check_args(const char* op, const at::Tensor& input, const at::Tensor& output, double sigma) {
  check::image(op, input, "input", 3, kMaxOffset + 1, kMaxOffset + 1, "the pairs reach 2 pixels away");
  check::same_shape(op, output, "output", input, "input");
  check::same_dtype(op, output, "output", input, "input");
  check::device(op, input, "input", at::kCPU);
  check::device(op, output, "output", at::kCPU);
  TORCH_CHECK(sigma > 0 && std::isfinite(sigma), op, ": sigma must be a positive number, got ", sigma);
}

at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Loss, and (with gradients) d loss / d input and d loss / d output times `scale`.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run(const char* op, const at::Tensor& input, const at::Tensor& output,
                                                   double sigma, bool faithful, bool with_grad, double scale) {
  check_args(op, input, output, sigma);
  const at::ScalarType ct = compute_type(input);
  const at::Tensor in = input.to(ct).contiguous();
  const at::Tensor out = output.to(ct).contiguous();
  at::Tensor gin, gout;
  if (with_grad) {
    gin = empty_output_like(in);
    gout = empty_output_like(in);
  }
  const double loss = ct == at::kDouble
                          ? smooth_loss_kernel<double>(in, out, sigma, faithful, scale, with_grad ? &gin : nullptr,
                                                       with_grad ? &gout : nullptr)
                          : smooth_loss_kernel<float>(in, out, sigma, faithful, scale, with_grad ? &gin : nullptr,
                                                      with_grad ? &gout : nullptr);
  // made in double and converted: a value beyond float32 becomes inf (scalar_tensor refuses it)
  at::Tensor loss_t = at::scalar_tensor(loss, in.options().dtype(at::kDouble)).to(in.scalar_type());
  if (with_grad) {
    gin = gin.to(input.scalar_type());
    gout = gout.to(input.scalar_type());
  }
  return {loss_t, gin, gout};
}

at::Tensor smooth_loss_cpu(const at::Tensor& input, const at::Tensor& output, double sigma, bool faithful) {
  return std::get<0>(run("smooth_loss", input, output, sigma, faithful, false, 1.0));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> smooth_loss_with_grad_cpu(const at::Tensor& input,
                                                                         const at::Tensor& output, double sigma,
                                                                         bool faithful) {
  return run("smooth_loss_with_grad", input, output, sigma, faithful, true, 1.0);
}

std::tuple<at::Tensor, at::Tensor> smooth_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                                            const at::Tensor& output, double sigma, bool faithful) {
  const char* op = "smooth_loss_backward";
  check::one_value(op, grad, "grad");
  auto res = run(op, input, output, sigma, faithful, true, grad.item<double>());
  return {std::get<1>(res), std::get<2>(res)};
}

}  // namespace

}  // namespace smooth
}  // namespace lowlight_fast

TORCH_LIBRARY_IMPL(lowlight_fast, CPU, m) {
  m.impl("smooth_loss", &lowlight_fast::smooth::smooth_loss_cpu);
  m.impl("smooth_loss_with_grad", &lowlight_fast::smooth::smooth_loss_with_grad_cpu);
  m.impl("smooth_loss_backward", &lowlight_fast::smooth::smooth_loss_backward_cpu);
}
