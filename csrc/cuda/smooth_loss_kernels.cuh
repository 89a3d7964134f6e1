// CUDA kernels of SCI's smoothness loss and the host-side launch sequence, free of torch types so that
// the same code runs on a GPU (csrc/cuda/smooth_loss.cu) and, without one, on the CPU through the
// host emulation in csrc/emulate (grid and block loops around these kernel bodies).
//
// Kernels use neither shared memory, nor barriers, nor atomics: every thread writes its own outputs,
// and the loss is reduced in a fixed order (per-pixel values -> kPartials strided partial sums ->
// one thread), so results are deterministic and independent of the launch order.
//
// Pipeline (per call, B x 3 x H x W):
//   1. ycbcr_kernel        one thread per conversion row: Y (acc_t), reads 3 and writes 3 elements.
//   2. pixel_kernel        one thread per pixel: the 12 pairs that start at it (loss) and, with
//                          gradients, the 12 that end at it too (gathered, no scatter): reads Y and O
//                          at the pixel and its 24 neighbours (3 channels each, mostly cache hits),
//                          writes the pixel's loss share, d/dO (scalar_t) and d/dY (acc_t).
//   3. partial_sum_kernel  kPartials threads, each a strided sum of the per-pixel shares.
//      final_sum_kernel    one thread: the partial sums in order.
//   4. ycbcr_backward_kernel  one thread per conversion row: d input from d/dY (3 reads, 3 writes).
//
// The includer defines dim3 / threadIdx / blockIdx / blockDim and the CUDA keywords (nvcc does).
#pragma once

#include "common/smooth_loss.h"

namespace lowlight_fast {
namespace smooth {
namespace cuda_kernels {

constexpr int kThreads = 256;
// The number of partial sums is fixed, so the order of the loss reduction depends on the size only.
constexpr int64_t kPartials = 1024;

__device__ __forceinline__ int64_t global_thread_index() {
  return static_cast<int64_t>(blockIdx.x) * static_cast<int64_t>(blockDim.x) + static_cast<int64_t>(threadIdx.x);
}

inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

template <typename scalar_t, typename acc_t>
__global__ void ycbcr_kernel(const scalar_t* __restrict__ in, acc_t* __restrict__ y, int64_t rows, int64_t hw,
                             bool faithful) {
  const int64_t r = global_thread_index();
  if (r >= rows) return;
  ycbcr_forward<acc_t>(in, y, triple_at(r, faithful, hw));
}

template <typename scalar_t, typename acc_t, bool kGrad>
__global__ void pixel_kernel(const acc_t* __restrict__ y, const scalar_t* __restrict__ o, Coefs<acc_t> c,
                             int64_t batch, int64_t height, int64_t width, acc_t* __restrict__ loss_px,
                             scalar_t* __restrict__ gout, acc_t* __restrict__ gy, const acc_t* __restrict__ scale) {
  const int64_t hw = height * width;
  const int64_t idx = global_thread_index();
  if (idx >= batch * hw) return;
  const int64_t b = idx / hw;
  const int64_t pix = idx - b * hw;
  const int64_t row = pix / width;
  const int64_t col = pix - row * width;
  const acc_t* yb = y + b * 3 * hw;
  const scalar_t* ob = o + b * 3 * hw;

  acc_t yz[3], oz[3], g_o[3] = {0, 0, 0}, g_y[3] = {0, 0, 0};
  for (int ch = 0; ch < 3; ++ch) {
    yz[ch] = yb[ch * hw + pix];
    oz[ch] = static_cast<acc_t>(ob[ch * hw + pix]);
  }
  acc_t loss = 0;
  for (int k = 0; k < kNumOffsets; ++k) {
    const int dy = offset_dy(k), dx = offset_dx(k);
    const int64_t step = dy * width + dx;
    // sign = +1: the pair starting here (pix -> pix + step); sign = -1: the pair ending here.
    for (int dir = 0; dir < (kGrad ? 2 : 1); ++dir) {
      const int64_t r2 = dir == 0 ? row + dy : row - dy;
      const int64_t c2 = dir == 0 ? col + dx : col - dx;
      if (r2 < 0 || r2 >= height || c2 < 0 || c2 >= width) continue;
      const int64_t other = dir == 0 ? pix + step : pix - step;
      acc_t d[3], g[3];
      for (int ch = 0; ch < 3; ++ch) {  // q - p
        d[ch] = dir == 0 ? yb[ch * hw + other] - yz[ch] : yz[ch] - yb[ch * hw + other];
        const acc_t ov = static_cast<acc_t>(ob[ch * hw + other]);
        g[ch] = dir == 0 ? ov - oz[ch] : oz[ch] - ov;
      }
      acc_t w;
      const acc_t t = pair_term(d[0], d[1], d[2], g[0], g[1], g[2], c.s, w);
      if (dir == 0) loss += c.a[k] * t;
      if (kGrad) {
        // This pixel is p (dir 0, derivative of q - p is -1) or q (dir 1, +1).
        const acc_t side = dir == 0 ? acc_t(-1) : acc_t(1);
        const acc_t cw = side * c.a[k] * w;
        const acc_t ct = side * acc_t(-2) * c.s * c.a[k] * t;
        for (int ch = 0; ch < 3; ++ch) {
          g_o[ch] += cw * sign_of(g[ch]);
          g_y[ch] += ct * d[ch];
        }
      }
    }
  }
  loss_px[idx] = loss;
  if (kGrad) {
    const acc_t sc = scale == nullptr ? acc_t(1) : *scale;
    for (int ch = 0; ch < 3; ++ch) {
      gout[b * 3 * hw + ch * hw + pix] = static_cast<scalar_t>(sc * g_o[ch]);
      gy[b * 3 * hw + ch * hw + pix] = g_y[ch];
    }
  }
}

template <typename acc_t>
__global__ void partial_sum_kernel(const acc_t* __restrict__ v, int64_t n, acc_t* __restrict__ partials) {
  const int64_t i = global_thread_index();
  if (i >= kPartials) return;
  acc_t s = 0;
  for (int64_t j = i; j < n; j += kPartials) s += v[j];
  partials[i] = s;
}

template <typename acc_t>
__global__ void final_sum_kernel(const acc_t* __restrict__ partials, acc_t* __restrict__ out) {
  if (global_thread_index() != 0) return;
  acc_t s = 0;
  for (int64_t i = 0; i < kPartials; ++i) s += partials[i];
  *out = s;
}

template <typename scalar_t, typename acc_t>
__global__ void ycbcr_backward_kernel(const acc_t* __restrict__ gy, scalar_t* __restrict__ gin, int64_t rows,
                                      int64_t hw, bool faithful, const acc_t* __restrict__ scale) {
  const int64_t r = global_thread_index();
  if (r >= rows) return;
  ycbcr_backward<acc_t>(gy, gin, triple_at(r, faithful, hw), scale == nullptr ? acc_t(1) : *scale);
}

// Scratch buffers of one call (elements of acc_t), allocated by the caller.
struct WorkspaceSizes {
  int64_t y, gy, loss_px, partials;
};
inline WorkspaceSizes workspace_sizes(int64_t batch, int64_t height, int64_t width, bool with_grad) {
  const int64_t pixels = batch * height * width;
  return WorkspaceSizes{3 * pixels, with_grad ? 3 * pixels : 0, pixels, kPartials};
}

// The whole launch sequence. `launch(grid, block, kernel, args...)` runs one kernel (a CUDA launch on
// the current stream, or the host emulation's loops). gin/gout/gy may be null when !with_grad;
// `scale` (device pointer or null) multiplies the gradients (the incoming gradient of the loss).
template <typename scalar_t, typename acc_t, typename Launch>
void run_smooth_loss(Launch&& launch, const scalar_t* in, const scalar_t* out, int64_t batch, int64_t height,
                     int64_t width, double sigma, bool faithful, bool with_grad, acc_t* ws_y, acc_t* ws_gy,
                     acc_t* ws_loss_px, acc_t* ws_partials, acc_t* loss, scalar_t* gin, scalar_t* gout,
                     const acc_t* scale) {
  const int64_t hw = height * width;
  const int64_t pixels = batch * hw;  // also the number of conversion rows
  const Coefs<acc_t> c = make_coefs<acc_t>(batch, height, width, sigma, 1.0);
  const dim3 block(kThreads);
  launch(dim3(blocks_for(pixels)), block, ycbcr_kernel<scalar_t, acc_t>, in, ws_y, pixels, hw, faithful);
  if (with_grad) {
    launch(dim3(blocks_for(pixels)), block, pixel_kernel<scalar_t, acc_t, true>, static_cast<const acc_t*>(ws_y),
           out, c, batch, height, width, ws_loss_px, gout, ws_gy, scale);
  } else {
    launch(dim3(blocks_for(pixels)), block, pixel_kernel<scalar_t, acc_t, false>, static_cast<const acc_t*>(ws_y),
           out, c, batch, height, width, ws_loss_px, static_cast<scalar_t*>(nullptr), static_cast<acc_t*>(nullptr),
           scale);
  }
  launch(dim3(blocks_for(kPartials)), block, partial_sum_kernel<acc_t>, static_cast<const acc_t*>(ws_loss_px), pixels,
         ws_partials);
  launch(dim3(1), dim3(1), final_sum_kernel<acc_t>, static_cast<const acc_t*>(ws_partials), loss);
  if (with_grad) {
    launch(dim3(blocks_for(pixels)), block, ycbcr_backward_kernel<scalar_t, acc_t>, static_cast<const acc_t*>(ws_gy),
           gin, pixels, hw, faithful, scale);
  }
}

}  // namespace cuda_kernels
}  // namespace smooth
}  // namespace lowlight_fast
