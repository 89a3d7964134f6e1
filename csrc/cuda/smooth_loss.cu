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

#include "common/checks.h"
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

void check_args(const char* op, const at::Tensor& input, const at::Tensor& output, double sigma) {
  check::image(op, input, "input", 3, kMaxOffset + 1, kMaxOffset + 1, "the pairs reach 2 pixels away");
  check::same_shape(op, output, "output", input, "input");
  check::same_dtype(op, output, "output", input, "input");
  check::device(op, input, "input", at::kCUDA);
  check::same_device(op, output, "output", input, "input");
  TORCH_CHECK(sigma > 0 && std::isfinite(sigma), op, ": sigma must be a positive number, got ", sigma);
}

// Loss and, with gradients, d loss / d input and d loss / d output (times *grad when given).
std::tuple<at::Tensor, at::Tensor, at::Tensor> run(const char* op, const at::Tensor& input, const at::Tensor& output,
                                                   double sigma, bool faithful, bool with_grad,
                                                   const at::Tensor* grad) {
  check_args(op, input, output, sigma);
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
  if (grad != nullptr) scale = grad->to(in.device(), acc_type).contiguous();
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
  return std::get<0>(run("smooth_loss", input, output, sigma, faithful, false, nullptr));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> smooth_loss_with_grad_cuda(const at::Tensor& input,
                                                                          const at::Tensor& output, double sigma,
                                                                          bool faithful) {
  return run("smooth_loss_with_grad", input, output, sigma, faithful, true, nullptr);
}

std::tuple<at::Tensor, at::Tensor> smooth_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                                             const at::Tensor& output, double sigma, bool faithful) {
  const char* op = "smooth_loss_backward";
  check::one_value(op, grad, "grad");
  auto res = run(op, input, output, sigma, faithful, true, &grad);
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
