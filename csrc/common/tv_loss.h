// Zero-DCE illumination smoothness (L_TV) on curve maps A (B, C, H, W):
//   h = sum (A[y+1,x] - A[y,x])^2,  w = sum (A[y,x+1] - A[y,x])^2  (over batch and channels)
//   L = 2 * (h / ((H-1) W) + w / (H (W-1))) / B
// dL/dA[y,x] = kh * ((A[y]-A[y-1])[y>0] - (A[y+1]-A[y])[y<H-1]) + kw * (same along x),
//   kh = 4 / (B (H-1) W), kw = 4 / (B H (W-1)).
// Forward reads A once (4 bytes/element in float32); backward (or the forward that also returns the
// gradient) reads A once and writes dA (8 bytes/element).
#pragma once

#include "common/host_device.h"

namespace lowlight_fast {
namespace tv {

// The per-element gradient; a neighbour the image does not have is passed as `v` itself (difference 0).
template <typename T>
LLF_HD T grad_at(T v, T up, T down, T left, T right, T kh, T kw) {
  return kh * ((v - up) - (down - v)) + kw * ((v - left) - (right - v));
}

// The scale factors of the loss: L = h * sh + w * sw.
template <typename T>
LLF_HD void scales(long long batch, long long height, long long width, T* sh, T* sw) {
  *sh = T(2) / (T(batch) * T(height - 1) * T(width));
  *sw = T(2) / (T(batch) * T(height) * T(width - 1));
}

}  // namespace tv
}  // namespace lowlight_fast
