// Autograd of the Zero-DCE loss ops in C++ (torch::autograd::Function), registered for the Autograd key:
// the drop-in classes (L_spa, L_color, L_exp, Sa_Loss) call these ops on small pooled maps, where a
// Python autograd node (torch.library.register_autograd) costs more than the kernel it wraps (profile in
// benchmarks/RESULTS.md, issue #15). The formulas are those of the Python registrations they replace in
// lowlight_fast/ops/zerodce_losses.py (which registers them only where this file is not compiled in):
// each backward is the op's own backward op, called through the dispatcher.
//
// - zerodce_pooled(enhanced, low): saves no tensor (the backward needs the image's shape only), so one
//   node can be shared by several losses (the memo of the drop-in classes) without a later backward
//   finding its saved tensors freed; undefined output gradients are zeros.
// - zerodce_pooled_single(x): undefined output gradients stay undefined: L_color alone gives d x as the
//   channel means' gradient broadcast (no image-sized write).
// - zerodce_spatial_map, zerodce_exposure, zerodce_color, zerodce_saturation: save their inputs.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

namespace lowlight_fast {
namespace zerodce_autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// one element of the image's dtype and device, broadcast to its shape: what the pooled backward op reads
at::Tensor shape_proxy(AutogradContext* ctx) {
  const auto shape = ctx->saved_data["shape"].toIntVector();
  const auto options = at::TensorOptions()
                           .dtype(ctx->saved_data["dtype"].toScalarType())
                           .device(ctx->saved_data["device"].toDevice());
  return at::empty({}, options).expand(shape);
}

void save_shape(AutogradContext* ctx, const at::Tensor& x) {
  ctx->saved_data["shape"] = x.sizes().vec();
  ctx->saved_data["dtype"] = x.scalar_type();
  ctx->saved_data["device"] = x.device();
}

using PooledBackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                             const at::Tensor&, bool);

class Pooled : public torch::autograd::Function<Pooled> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& enhanced, const at::Tensor& low) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&)>(
        "lowlight_fast::zerodce_pooled");
    save_shape(ctx, enhanced);
    auto [pe, pl, means] = fwd.call(enhanced, low);
    return {pe, pl, means};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<PooledBackwardSig>("lowlight_fast::zerodce_pooled_backward");
    const bool low_requires_grad = ctx->needs_input_grad(1);
    auto [grad_enhanced, grad_low] = bwd.call(grads[0], grads[1], grads[2], shape_proxy(ctx), low_requires_grad);
    return {grad_enhanced, low_requires_grad ? grad_low : at::Tensor()};
  }
};

class PooledSingle : public torch::autograd::Function<PooledSingle> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>("lowlight_fast::zerodce_pooled_single");
    save_shape(ctx, x);
    ctx->set_materialize_grads(false);
    auto [pooled, means] = fwd.call(x);
    return {pooled, means};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<PooledBackwardSig>("lowlight_fast::zerodce_pooled_backward");
    at::Tensor grad_pooled = grads[0], grad_means = grads[1];
    if (!grad_pooled.defined() && !grad_means.defined()) return {at::Tensor()};
    const auto shape = ctx->saved_data["shape"].toIntVector();
    if (!grad_pooled.defined()) {  // L_color alone: d x = d means / (H W), the same for a whole channel
      return {(grad_means / static_cast<double>(shape[2] * shape[3])).reshape({shape[0], shape[1], 1, 1}).expand(shape)};
    }
    if (!grad_means.defined()) grad_means = grad_pooled.new_zeros({shape[0], shape[1]});
    auto [grad_x, unused] = bwd.call(grad_pooled, at::zeros_like(grad_pooled), grad_means, shape_proxy(ctx), false);
    return {grad_x};
  }
};

class SpatialMap : public torch::autograd::Function<SpatialMap> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& pooled_org, const at::Tensor& pooled_enhance) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = op<at::Tensor(const at::Tensor&, const at::Tensor&)>("lowlight_fast::zerodce_spatial_map");
    ctx->save_for_backward({pooled_org, pooled_enhance});
    return fwd.call(pooled_org, pooled_enhance);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
        "lowlight_fast::zerodce_spatial_map_backward");
    const auto saved = ctx->get_saved_variables();
    auto [grad_org, grad_enhance] = bwd.call(grads[0], saved[0], saved[1]);
    return {grad_org, grad_enhance};
  }
};

class Exposure : public torch::autograd::Function<Exposure> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& pooled, int64_t exp_patch, double exp_mean) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = op<at::Tensor(const at::Tensor&, int64_t, double)>("lowlight_fast::zerodce_exposure");
    ctx->save_for_backward({pooled});
    ctx->saved_data["exp_patch"] = exp_patch;
    ctx->saved_data["exp_mean"] = exp_mean;
    return fwd.call(pooled, exp_patch, exp_mean);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double)>(
        "lowlight_fast::zerodce_exposure_backward");
    const auto saved = ctx->get_saved_variables();
    return {bwd.call(grads[0], saved[0], ctx->saved_data["exp_patch"].toInt(), ctx->saved_data["exp_mean"].toDouble()),
            at::Tensor(), at::Tensor()};
  }
};

class Color : public torch::autograd::Function<Color> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& means) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = op<at::Tensor(const at::Tensor&)>("lowlight_fast::zerodce_color");
    ctx->save_for_backward({means});
    return fwd.call(means);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<at::Tensor(const at::Tensor&, const at::Tensor&)>("lowlight_fast::zerodce_color_backward");
    return {bwd.call(grads[0], ctx->get_saved_variables()[0])};
  }
};

class Saturation : public torch::autograd::Function<Saturation> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&)>(
        "lowlight_fast::zerodce_saturation");
    auto [loss, means, unit] = fwd.call(x);
    ctx->mark_non_differentiable({means, unit});
    ctx->save_for_backward({x, means, unit});
    return {loss, means, unit};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
        "lowlight_fast::zerodce_saturation_backward");
    const auto saved = ctx->get_saved_variables();
    return {bwd.call(grads[0], saved[0], saved[1], saved[2])};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> pooled_autograd(const at::Tensor& enhanced, const at::Tensor& low) {
  auto out = Pooled::apply(enhanced, low);
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor> pooled_single_autograd(const at::Tensor& x) {
  auto out = PooledSingle::apply(x);
  return {out[0], out[1]};
}

at::Tensor spatial_map_autograd(const at::Tensor& pooled_org, const at::Tensor& pooled_enhance) {
  return SpatialMap::apply(pooled_org, pooled_enhance);
}

at::Tensor exposure_autograd(const at::Tensor& pooled, int64_t exp_patch, double exp_mean) {
  return Exposure::apply(pooled, exp_patch, exp_mean);
}

at::Tensor color_autograd(const at::Tensor& means) { return Color::apply(means); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> saturation_autograd(const at::Tensor& x) {
  auto out = Saturation::apply(x);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(lowlight_fast, Autograd, m) {
  m.impl("zerodce_pooled", &pooled_autograd);
  m.impl("zerodce_pooled_single", &pooled_single_autograd);
  m.impl("zerodce_spatial_map", &spatial_map_autograd);
  m.impl("zerodce_exposure", &exposure_autograd);
  m.impl("zerodce_color", &color_autograd);
  m.impl("zerodce_saturation", &saturation_autograd);
}

}  // namespace zerodce_autograd
}  // namespace lowlight_fast
