// SCI's 24-direction edge-aware smoothness loss: the per-pixel math, shared by the CPU kernels
// (csrc/cpu/smooth_loss.cpp), the CUDA kernels (csrc/cuda/smooth_loss_kernels.cuh) and the host
// emulation of the CUDA kernels (csrc/emulate). Plain C++ with host+device markers, no torch types.
//
//   Y = rgb2yCbCr(input)   (faithful: rows of 3 consecutive NCHW memory elements; or per pixel)
//   for each of the 12 offsets k = (dy, dx), each pixel pair p -> q = p + (dy, dx) inside the image:
//     w = exp(-s * sum_c (Y_c[q] - Y_c[p])^2),  s = 1 / (2 sigma^2)
//     t = w * sum_c |O_c[q] - O_c[p]|
//   loss = sum_k a_k * sum_pairs t,  a_k = 2 / (B (H - dy) (W - |dx|))   (24 means = 12 offsets x 2)
//   d loss / d dO_c = a_k w sign(dO_c),  d loss / d dY_c = -2 s a_k dY_c t,  sign(0) = 0
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/host_device.h"

namespace lowlight_fast {
namespace smooth {

constexpr int kNumOffsets = 12;
constexpr int kMaxOffset = 2;  // |dy|, |dx| <= 2: images need H, W >= 3

// The 12 unique offsets (dy >= 0); the original's 24 terms are these and their mirrors.
LLF_HD int offset_dy(int k) {
  const int dy[kNumOffsets] = {1, 0, 1, 1, 2, 0, 2, 2, 1, 1, 2, 2};
  return dy[k];
}
LLF_HD int offset_dx(int k) {
  const int dx[kNumOffsets] = {0, 1, 1, -1, 0, 2, 1, -1, 2, -2, 2, -2};
  return dx[k];
}

// SCI's rgb2yCbCr: out_j = sum_i in_i * M[i][j] + bias_j.
template <typename T>
LLF_HD T ycbcr_m(int i, int j) {
  const T m[9] = {T(0.257), T(-0.148), T(0.439), T(0.564), T(-0.291), T(-0.368), T(0.098), T(0.439), T(-0.071)};
  return m[i * 3 + j];
}
template <typename T>
LLF_HD T ycbcr_bias(int j) {
  const T b[3] = {T(16.0 / 255.0), T(128.0 / 255.0), T(128.0 / 255.0)};
  return b[j];
}

// Where the 3 values of conversion row r live in NCHW memory (r in [0, B*H*W)):
// faithful: elements 3r, 3r+1, 3r+2 (the original's view(-1, 3)); per pixel: the 3 channels of pixel r.
struct Triple {
  int64_t base;
  int64_t stride;
};
LLF_HD Triple triple_at(int64_t r, bool faithful, int64_t hw) {
  if (faithful) return Triple{3 * r, 1};
  const int64_t b = r / hw;
  return Triple{b * 3 * hw + (r - b * hw), hw};
}

// Forward of one conversion row: Y at the 3 places of the triple.
template <typename acc_t, typename in_t>
LLF_HD void ycbcr_forward(const in_t* in, acc_t* y, Triple t) {
  const acc_t v0 = static_cast<acc_t>(in[t.base]);
  const acc_t v1 = static_cast<acc_t>(in[t.base + t.stride]);
  const acc_t v2 = static_cast<acc_t>(in[t.base + 2 * t.stride]);
  for (int j = 0; j < 3; ++j) {
    y[t.base + j * t.stride] =
        v0 * ycbcr_m<acc_t>(0, j) + v1 * ycbcr_m<acc_t>(1, j) + v2 * ycbcr_m<acc_t>(2, j) + ycbcr_bias<acc_t>(j);
  }
}

// Backward of one conversion row: d input_i = scale * sum_j M[i][j] dY_j.
template <typename acc_t, typename out_t>
LLF_HD void ycbcr_backward(const acc_t* gy, out_t* gin, Triple t, acc_t scale) {
  const acc_t g0 = gy[t.base], g1 = gy[t.base + t.stride], g2 = gy[t.base + 2 * t.stride];
  for (int i = 0; i < 3; ++i) {
    gin[t.base + i * t.stride] =
        static_cast<out_t>(scale * (g0 * ycbcr_m<acc_t>(i, 0) + g1 * ycbcr_m<acc_t>(i, 1) + g2 * ycbcr_m<acc_t>(i, 2)));
  }
}

// exp for x <= 0. float on the host: a Cephes-style polynomial (about 1 ulp) written so that a
// compiler vectorises it inside `#pragma omp simd` loops; float on a GPU: expf; double: exp.
LLF_HD float exp_nonpositive(float x) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return expf(x);
#else
  // Below -87 the result (< 1.7e-38) is returned as exp(-87): harmless here, and keeps the code branch-free.
  // The clamp works on the bits, as integers (the same as `x < -87 ? -87 : x` for every x, -inf, -0 and
  // NaN included): a float select (`?:`, std::max) becomes a branch whose -87 arm GCC folds to a
  // constant, leaving the polynomial in the other arm, where if-conversion must not speculate float
  // operations (they may trap): the loops around it then stayed scalar on SSE2 and AVX2.
  // As int32, floats below -87 down to -inf are the values in (kMinus87, kMinusInf].
  constexpr int32_t kMinus87 = -1028784128;  // 0xC2AE0000, the bits of -87.0f
  constexpr int32_t kMinusInf = -8388608;    // 0xFF800000, the bits of -inf
  int32_t x_bits;
  std::memcpy(&x_bits, &x, sizeof(x_bits));
  const int32_t below = -static_cast<int32_t>((x_bits > kMinus87) & (x_bits <= kMinusInf));  // all ones: clamp
  const int32_t xc_bits = (x_bits & ~below) | (kMinus87 & below);
  float xc;
  std::memcpy(&xc, &xc_bits, sizeof(xc));
  // n = round(xc / ln 2) with the 1.5 * 2^23 trick (no float -> int conversion, which could trap).
  const float magic = 12582912.0f;
  const float shifted = xc * 1.44269504088896341f + magic;
  const float fx = shifted - magic;
  int32_t n_bits;
  std::memcpy(&n_bits, &shifted, sizeof(n_bits));
  const int32_t n = n_bits - 0x4B400000;  // the bits of magic
  float r = xc - fx * 0.693359375f;
  r = r + fx * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
#endif
}
LLF_HD double exp_nonpositive(double x) { return exp(x); }

template <typename T>
LLF_HD T sign_of(T v) {
  return static_cast<T>(v > T(0)) - static_cast<T>(v < T(0));
}
template <typename T>
LLF_HD T abs_of(T v) {
  return v < T(0) ? -v : v;
}

// One pair: returns t = w * sum_c |dO_c| and sets w.
template <typename T>
LLF_HD T pair_term(T dy0, T dy1, T dy2, T do0, T do1, T do2, T s, T& w) {
  w = exp_nonpositive(-s * (dy0 * dy0 + dy1 * dy1 + dy2 * dy2));
  return w * (abs_of(do0) + abs_of(do1) + abs_of(do2));
}

// Host-side constants of one call.
template <typename acc_t>
struct Coefs {
  acc_t a[kNumOffsets];  // weight of a pair sum in the loss: 2 / (B (H - dy) (W - |dx|))
  acc_t s;               // 1 / (2 sigma^2)
};

template <typename acc_t>
inline Coefs<acc_t> make_coefs(int64_t batch, int64_t height, int64_t width, double sigma, double scale) {
  Coefs<acc_t> c;
  for (int k = 0; k < kNumOffsets; ++k) {
    const double region = static_cast<double>(height - offset_dy(k)) *
                          static_cast<double>(width - (offset_dx(k) < 0 ? -offset_dx(k) : offset_dx(k)));
    c.a[k] = static_cast<acc_t>(scale * 2.0 / (static_cast<double>(batch) * region));
  }
  c.s = static_cast<acc_t>(1.0 / (2.0 * sigma * sigma));
  return c;
}

}  // namespace smooth
}  // namespace lowlight_fast
