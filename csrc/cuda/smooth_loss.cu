// CUDA registration of smooth_loss: argument checks, allocation, dtype dispatch, and the launch
// sequence of smooth_loss_kernels.cuh (shared with the host emulation) on the current stream.
// float16/bfloat16 are loaded and stored as such and computed in float32; float64 in float64.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "cuda/smooth_loss_kernels.cuh"

namespace lowlight_fast {
namespace smooth {
namespace {

struct CudaLaunch {
  cudaStream_t stream;
  template <typename Kernel, typename... Args>
  void operator()(dim3 grid, dim3 block, Kernel kernel, Args... args) const {
    kernel<<<grid, block, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

void check_args(const at::Tensor& input, const at::Tensor& output, double sigma) {
  TORCH_CHECK(input.dim() == 4 && input.size(1) == 3, "smooth_loss: input must be (B, 3, H, W), got shape ",
              input.sizes());
  TORCH_CHECK(output.sizes() == input.sizes(), "smooth_loss: output must have the shape of input ", input.sizes(),
              ", got ", output.sizes());
  TORCH_CHECK(output.scalar_type() == input.scalar_type(), "smooth_loss: input and output must have one dtype, got ",
              input.scalar_type(), " and ", output.scalar_type());
  const at::ScalarType st = input.scalar_type();
  TORCH_CHECK(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble,
              "smooth_loss: expected a float16, bfloat16, float32 or float64 tensor, got ", st);
  TORCH_CHECK(input.is_cuda() && output.device() == input.device(),
              "smooth_loss (CUDA kernel): tensors must be on one CUDA device, got ", input.device(), " and ",
              output.device());
  TORCH_CHECK(input.size(0) >= 1 && input.size(2) > kMaxOffset && input.size(3) > kMaxOffset,
              "smooth_loss: images must be at least 3x3 pixels with B >= 1, got shape ", input.sizes());
  TORCH_CHECK(sigma > 0 && std::isfinite(sigma), "smooth_loss: sigma must be a positive number, got ", sigma);
}

// Loss and, with gradients, d loss / d input and d loss / d output (times *grad when given).
std::tuple<at::Tensor, at::Tensor, at::Tensor> run(const at::Tensor& input, const at::Tensor& output, double sigma,
                                                   bool faithful, bool with_grad, const at::Tensor* grad) {
  check_args(input, output, sigma);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor in = input.contiguous();
  const at::Tensor out = output.contiguous();
  const int64_t batch = in.size(0), height = in.size(2), width = in.size(3);
  const at::ScalarType acc_type = in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto acc_opts = in.options().dtype(acc_type);
  const cuda_kernels::WorkspaceSizes sizes = cuda_kernels::workspace_sizes(batch, height, width, with_grad);
  at::Tensor y = at::empty({sizes.y}, acc_opts);
  at::Tensor gy = at::empty({sizes.gy}, acc_opts);
  at::Tensor loss_px = at::empty({sizes.loss_px}, acc_opts);
  at::Tensor partials = at::empty({sizes.partials}, acc_opts);
  at::Tensor loss = at::empty({}, acc_opts);
  at::Tensor gin, gout, scale;
  if (with_grad) {
    gin = at::empty_like(in);
    gout = at::empty_like(in);
  }
  if (grad != nullptr) {
    TORCH_CHECK(grad->numel() == 1, "smooth_loss_backward: grad must be a scalar, got shape ", grad->sizes());
    scale = grad->to(in.device(), acc_type).contiguous();
  }
  const CudaLaunch launch{c10::cuda::getCurrentCUDAStream()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "smooth_loss_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    cuda_kernels::run_smooth_loss<scalar_t, acc_t>(
        launch, in.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), batch, height, width, sigma, faithful,
        with_grad, y.mutable_data_ptr<acc_t>(), with_grad ? gy.mutable_data_ptr<acc_t>() : nullptr,
        loss_px.mutable_data_ptr<acc_t>(), partials.mutable_data_ptr<acc_t>(), loss.mutable_data_ptr<acc_t>(),
        with_grad ? gin.mutable_data_ptr<scalar_t>() : nullptr, with_grad ? gout.mutable_data_ptr<scalar_t>() : nullptr,
        grad != nullptr ? scale.const_data_ptr<acc_t>() : nullptr);
  });
  return {loss, gin, gout};
}

at::Tensor smooth_loss_cuda(const at::Tensor& input, const at::Tensor& output, double sigma, bool faithful) {
  return std::get<0>(run(input, output, sigma, faithful, false, nullptr));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> smooth_loss_with_grad_cuda(const at::Tensor& input,
                                                                          const at::Tensor& output, double sigma,
                                                                          bool faithful) {
  return run(input, output, sigma, faithful, true, nullptr);
}

std::tuple<at::Tensor, at::Tensor> smooth_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                                             const at::Tensor& output, double sigma, bool faithful) {
  auto res = run(input, output, sigma, faithful, true, &grad);
  return {std::get<1>(res), std::get<2>(res)};
}

}  // namespace
}  // namespace smooth
}  // namespace lowlight_fast

TORCH_LIBRARY_IMPL(lowlight_fast, CUDA, m) {
  m.impl("smooth_loss", &lowlight_fast::smooth::smooth_loss_cuda);
  m.impl("smooth_loss_with_grad", &lowlight_fast::smooth::smooth_loss_with_grad_cuda);
  m.impl("smooth_loss_backward", &lowlight_fast::smooth::smooth_loss_backward_cuda);
}
