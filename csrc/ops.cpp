// Every op's schema, in one place. Kernels are registered per backend in csrc/cpu and csrc/cuda;
// the Python side (lowlight_fast/ops) adds fake (meta) implementations and autograd.
#include <torch/extension.h>

#include <string>

#ifndef LOWLIGHT_FAST_VERSION
#define LOWLIGHT_FAST_VERSION "unknown"
#endif

TORCH_LIBRARY(lowlight_fast, m) {
  // --- le_curve (Zero-DCE / Zero-DCE++ light-enhancement curve) ---
  // --- smooth_loss (SCI 24-direction edge-aware smoothness) ---
  // --- tv_loss and pooled spatial / exposure / colour losses (Zero-DCE) ---
  m.def("tv_loss(Tensor x) -> Tensor");
  m.def("tv_loss_backward(Tensor grad, Tensor x) -> Tensor");
  m.def("zerodce_pooled(Tensor enhanced, Tensor low) -> (Tensor pooled_enhanced, Tensor pooled_low, Tensor channel_means)");
  m.def("zerodce_pooled_backward(Tensor grad_pooled_enhanced, Tensor grad_pooled_low, Tensor grad_channel_means, Tensor enhanced, bool low_requires_grad) -> (Tensor grad_enhanced, Tensor grad_low)");
  m.def("zerodce_pooled_losses(Tensor pooled_enhanced, Tensor pooled_low, Tensor channel_means, int exp_patch, float exp_mean) -> (Tensor spa, Tensor col, Tensor exp)");
  m.def("zerodce_pooled_losses_backward(Tensor grad_spa, Tensor grad_col, Tensor grad_exp, Tensor pooled_enhanced, Tensor pooled_low, Tensor channel_means, int exp_patch, float exp_mean) -> (Tensor, Tensor, Tensor)");
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lowlight_fast compiled kernels; ops live in torch.ops.lowlight_fast";
  m.def("build_info", &build_info, "Which backends this build of lowlight_fast._C contains");
}
