// The light-enhancement curve of Zero-DCE / Zero-DCE++, per element, shared by the CPU and CUDA kernels.
//
// One step: s <- s + r * (s^2 - s) (the authors' sign, r = -alpha of the paper), 8 steps.
//   d step / d s = 1 + r * (2 s - 1),   d step / d r = s^2 - s.
// Zero-DCE: a different map r_k per step (24 channels = 8 maps x 3); outputs the states after 4 and 8 steps.
// Zero-DCE++: one map a for all 8 steps (3 channels), optionally sampled from a low-resolution map
// with bilinear interpolation, align_corners=True (PyTorch's UpsamplingBilinear2d).
// The backward recomputes the 8 states from the input instead of storing them.
// T is float or double here, or a SIMD vector of them: only +, -, * and construction from a constant.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

#if defined(__CUDACC__) || defined(__HIPCC__) || defined(__clang__)
#define LOWLIGHT_FAST_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define LOWLIGHT_FAST_UNROLL _Pragma("GCC unroll 8")
#else
#define LOWLIGHT_FAST_UNROLL
#endif

namespace lowlight_fast {
namespace le_curve {

constexpr int kSteps = 8;     // curve steps
constexpr int kHalfSteps = 4;  // Zero-DCE also returns the image after this many steps
constexpr int kChannels = 3;  // one curve map has 3 channels; Zero-DCE's r has kSteps * kChannels

template <typename T>
LLF_HD T step(T s, T r) {
  return s + r * (s * s - s);
}

template <typename T>
LLF_HD T step_d_state(T s, T r) {
  return T(1) + r * (T(2) * s - T(1));
}

template <typename T>
LLF_HD T step_d_map(T s) {
  return s * s - s;
}

// Zero-DCE forward: r[k] is the map of step k.
template <typename T>
LLF_HD void forward(T x, const T (&r)[kSteps], T& after4, T& after8) {
  T s = x;
LOWLIGHT_FAST_UNROLL
  for (int k = 0; k < kSteps; ++k) {
    s = step(s, r[k]);
    if (k == kHalfSteps - 1) after4 = s;
  }
  after8 = s;
}

// Zero-DCE backward from the gradients of both outputs (pass 0 for an output without gradient).
template <typename T>
LLF_HD void backward(T x, const T (&r)[kSteps], T g_after4, T g_after8, T& g_x, T (&g_r)[kSteps]) {
  T s[kSteps];  // s[k]: the state entering step k
  s[0] = x;
LOWLIGHT_FAST_UNROLL
  for (int k = 1; k < kSteps; ++k) s[k] = step(s[k - 1], r[k - 1]);
  T g = g_after8;
LOWLIGHT_FAST_UNROLL
  for (int k = kSteps - 1; k >= 0; --k) {
    if (k == kHalfSteps - 1) g = g + g_after4;
    g_r[k] = g * step_d_map(s[k]);
    g = g * step_d_state(s[k], r[k]);
  }
  g_x = g;
}

// Zero-DCE++ forward: one map for the 8 steps.
template <typename T>
LLF_HD T forward_shared(T x, T a) {
  T s = x;
LOWLIGHT_FAST_UNROLL
  for (int k = 0; k < kSteps; ++k) s = step(s, a);
  return s;
}

// Zero-DCE++ backward: gradient to x and to the (full-resolution) map.
template <typename T>
LLF_HD void backward_shared(T x, T a, T g_out, T& g_x, T& g_a) {
  T s[kSteps];
  s[0] = x;
LOWLIGHT_FAST_UNROLL
  for (int k = 1; k < kSteps; ++k) s[k] = step(s[k - 1], a);
  T g = g_out;
  T ga = T(0);
LOWLIGHT_FAST_UNROLL
  for (int k = kSteps - 1; k >= 0; --k) {
    ga = ga + g * step_d_map(s[k]);
    g = g * step_d_state(s[k], a);
  }
  g_x = g;
  g_a = ga;
}

// Bilinear resampling with align_corners=True along one axis, as PyTorch computes it
// (aten/src/ATen/native/UpSample.h: area_pixel_compute_scale, guard_index_and_lambda):
// output index o reads the inputs i0, i1 with weights w0, w1.
template <typename T>
struct LinearTap {
  int64_t i0, i1;
  T w0, w1;
};

template <typename T>
LLF_HD T align_corners_scale(int64_t in_size, int64_t out_size) {
  return out_size > 1 ? T(in_size - 1) / T(out_size - 1) : T(0);
}

template <typename T>
LLF_HD LinearTap<T> align_corners_tap(int64_t o, int64_t in_size, int64_t out_size, T scale) {
  LinearTap<T> t;
  if (in_size == out_size) {
    t.i0 = t.i1 = o;
    t.w0 = T(1);
    t.w1 = T(0);
    return t;
  }
  const T src = scale * T(o);
  int64_t i0 = static_cast<int64_t>(std::floor(src));
  i0 = i0 < in_size - 1 ? i0 : in_size - 1;
  T w1 = src - T(i0);
  w1 = w1 < T(0) ? T(0) : (w1 > T(1) ? T(1) : w1);
  t.i0 = i0;
  t.i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  t.w0 = T(1) - w1;
  t.w1 = w1;
  return t;
}

// The bilinear sample at (row tap ty, column tap tx) of a plane with row stride `stride`, in PyTorch's order.
template <typename T, typename Load>
LLF_HD T bilinear(const LinearTap<T>& ty, const LinearTap<T>& tx, int64_t stride, Load load) {
  return ty.w0 * (tx.w0 * load(ty.i0 * stride + tx.i0) + tx.w1 * load(ty.i0 * stride + tx.i1)) +
         ty.w1 * (tx.w0 * load(ty.i1 * stride + tx.i0) + tx.w1 * load(ty.i1 * stride + tx.i1));
}

}  // namespace le_curve
}  // namespace lowlight_fast
