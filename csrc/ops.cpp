// Every op's schema, in one place. Kernels are registered per backend in csrc/cpu and csrc/cuda;
// the Python side (lowlight_fast/ops) adds fake (meta) implementations and autograd. The pybind module
// of _C holds build facts only; process-wide facilities (the caching CPU allocator) are in csrc/runtime.
#include <torch/extension.h>

#include <string>

#include "cpu/alloc.h"
#include "cpu/dispatch.h"

#ifndef LOWLIGHT_FAST_VERSION
#define LOWLIGHT_FAST_VERSION "unknown"
#endif

TORCH_LIBRARY(lowlight_fast, m) {
  // --- le_curve (Zero-DCE / Zero-DCE++ light-enhancement curve) ---
  // x (B,3,H,W), r (B,24,H,W) = 8 maps of 3 channels -> (image after 4 steps, image after 8 steps)
  m.def("le_curve(Tensor x, Tensor r) -> (Tensor, Tensor)");
  // gradients of either or both outputs -> (grad_x, grad_r); recomputes the 8 states from x and r
  m.def("le_curve_backward(Tensor x, Tensor r, Tensor? grad_after4, Tensor? grad_after8) -> (Tensor, Tensor)");
  // x (B,3,H,W), a (B,3,h,w) shared by the 8 steps; (h,w) != (H,W): bilinear, align_corners=True, in-kernel.
  // grid (Gh,Gw) >= (H,W): a covers that pixel grid (upsampled to it), x is its top-left part (default (H,W))
  m.def("le_curve_shared(Tensor x, Tensor a, int[]? grid=None) -> Tensor");
  m.def("le_curve_shared_backward(Tensor x, Tensor a, Tensor grad_out, int[]? grid=None) -> (Tensor, Tensor)");
  // --- smooth_loss (SCI 24-direction edge-aware smoothness) ---
  // loss only; loss with d loss/d input and d loss/d output in one pass; gradients times grad.
  m.def("smooth_loss(Tensor input, Tensor output, float sigma, bool faithful) -> Tensor");
  m.def("smooth_loss_with_grad(Tensor input, Tensor output, float sigma, bool faithful) -> (Tensor, Tensor, Tensor)");
  m.def("smooth_loss_backward(Tensor grad, Tensor input, Tensor output, float sigma, bool faithful) -> (Tensor, Tensor)");
  // --- tv_loss and pooled spatial / exposure / colour losses (Zero-DCE) ---
  m.def("tv_loss(Tensor x) -> Tensor");
  m.def("tv_loss_with_grad(Tensor x, float weight) -> (Tensor, Tensor)");
  m.def("tv_loss_backward(Tensor grad, Tensor x) -> Tensor");
  m.def("zerodce_pooled(Tensor enhanced, Tensor low) -> (Tensor pooled_enhanced, Tensor pooled_low, Tensor channel_means)");
  // one image: (4x4-pooled channel mean, channel means); its backward is zerodce_pooled_backward's d enhanced
  m.def("zerodce_pooled_single(Tensor x) -> (Tensor pooled, Tensor channel_means)");
  m.def("zerodce_pooled_backward(Tensor grad_pooled_enhanced, Tensor grad_pooled_low, Tensor grad_channel_means, Tensor enhanced, bool low_requires_grad) -> (Tensor grad_enhanced, Tensor grad_low)");
  // the terms the original-named classes return, from the pooled statistics (csrc/cpu/zerodce_terms.cpp)
  m.def("zerodce_spatial_map(Tensor pooled_org, Tensor pooled_enhance) -> Tensor");
  m.def("zerodce_spatial_map_backward(Tensor grad, Tensor pooled_org, Tensor pooled_enhance) -> (Tensor, Tensor)");
  m.def("zerodce_exposure(Tensor pooled, int exp_patch, float exp_mean) -> Tensor");
  m.def("zerodce_exposure_backward(Tensor grad, Tensor pooled, int exp_patch, float exp_mean) -> Tensor");
  m.def("zerodce_color(Tensor channel_means) -> Tensor");
  m.def("zerodce_color_backward(Tensor grad, Tensor channel_means) -> Tensor");
  // Sa_Loss: (loss, channel means, mean unit vector from the means) ; backward from x and those two
  m.def("zerodce_saturation(Tensor x) -> (Tensor loss, Tensor channel_means, Tensor unit_means)");
  m.def("zerodce_saturation_backward(Tensor grad, Tensor x, Tensor channel_means, Tensor unit_means) -> Tensor");
  m.def("zerodce_pooled_losses(Tensor pooled_enhanced, Tensor pooled_low, Tensor channel_means, int exp_patch, float exp_mean) -> (Tensor spa, Tensor col, Tensor exp)");
  m.def("zerodce_pooled_losses_backward(Tensor grad_spa, Tensor grad_col, Tensor grad_exp, Tensor pooled_enhanced, Tensor pooled_low, Tensor channel_means, int exp_patch, float exp_mean) -> (Tensor, Tensor, Tensor)");
  // --- conv3x3_nhwc (Zero-DCE / Zero-DCE++ inference trunk; csrc/cpu/conv3x3.cpp) ---
  // act(conv2d(cat([x, x2], 1), weight, bias, padding=1)), act 0 none, 1 ReLU, 2 tanh; Winograd
  // F(4x4,3x3), channels-last out
  m.def("conv3x3_nhwc(Tensor x, Tensor? x2, Tensor weight, Tensor? bias, int activation) -> Tensor");
  // its weight and bias gradients from the output gradient grad (N,Cout,H,W) and the inputs (any strides)
  // -> (grad_weight (Cout, Cx + Cx2, 3, 3), grad_bias (Cout)); direct sums, not Winograd
  m.def("conv3x3_nhwc_weight_grad(Tensor grad, Tensor x, Tensor? x2) -> (Tensor, Tensor)");
  // --- batch_norm_relu_nhwc (SCI's conv -> BatchNorm2d -> ReLU in training; csrc/cpu/batch_norm_relu.cpp) ---
  // relu(batch_norm(x, weight, bias, training=True, eps)) with the batch's statistics -> (y channels-last,
  // mean, biased var); the running statistics are the caller's (lowlight_fast/ops/batch_norm_relu.py)
  m.def("batch_norm_relu_nhwc(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor y, Tensor mean, Tensor var)");
  // from the gradient of y and the forward's inputs and statistics -> (grad_x, grad_weight, grad_bias)
  m.def("batch_norm_relu_nhwc_backward(Tensor grad, Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor var, float eps) -> (Tensor, Tensor, Tensor)");
  // --- quantize_hwc (image and video output) ---
  // x (B,C,H,W) float in [0,1], any strides -> (B,H,W,C) uint8 (bits 8) or uint16 (bits 16):
  // floor(clamp(x, 0, 1) * peak + 0.5) in float32, as lowlight_fast.io.quantize
  m.def("quantize_hwc(Tensor x, int bits) -> Tensor");
  // q (B,H,W,C) uint8/uint16 -> (B,C,H,W) float32 q / 255 (or 65535), as the image readers compute it
  m.def("dequantize_hwc(Tensor q) -> Tensor");
  // --- deflate_fast (PNG output, level 1) ---
  // data 1-D uint8 -> raw DEFLATE bytes: Huffman codes per block and runs of one byte, nothing else;
  // last=False ends on a byte boundary (an empty stored block, as Z_SYNC_FLUSH) so pieces concatenate
  m.def("deflate_fast(Tensor data, bool last) -> Tensor");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = LOWLIGHT_FAST_VERSION;
  info["torch_version"] = TORCH_VERSION;
  info["cpu"] = true;
#ifdef LOWLIGHT_FAST_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
#ifdef LOWLIGHT_FAST_CUDA_ARCHS
  info["cuda_archs"] = LOWLIGHT_FAST_CUDA_ARCHS;
#else
  info["cuda_archs"] = "";
#endif
  return info;
}

// kernel name -> instruction-set path its float32 loops run ("avx512", "avx2", "default"): cpu/dispatch.h.
pybind11::dict cpu_paths() {
  pybind11::dict d;
  for (const auto& [kernel, path] : lowlight_fast::cpu::cpu_paths()) d[pybind11::str(kernel)] = path;
  return d;
}

// The output pool of the CPU kernels (cpu/alloc.h); lowlight_fast.memory is its Python side.
pybind11::dict output_pool_stats() {
  const auto s = lowlight_fast::output_pool::stats();
  pybind11::dict d;
  d["enabled"] = s.enabled;
  d["cached_bytes"] = s.cached_bytes;
  d["cached_blocks"] = s.cached_blocks;
  d["live_bytes"] = s.live_bytes;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["limit_bytes"] = s.limit_bytes;
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lowlight_fast compiled kernels; ops live in torch.ops.lowlight_fast";
  m.def("build_info", &build_info, "Which backends this build of lowlight_fast._C contains");
  m.def("cpu_paths", &cpu_paths,
        "kernel -> the instruction-set path its CPU loops run in this process (ATEN_CPU_CAPABILITY lowers it)");
  m.def("output_pool_stats", &output_pool_stats, "Counters of the CPU kernels' output pool");
  m.def("output_pool_release", &lowlight_fast::output_pool::release,
        "Give the output pool's held blocks back to the system");
}
