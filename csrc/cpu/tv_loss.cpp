// CPU kernels of tv_loss (Zero-DCE L_TV); the math is in common/tv_loss.h.
// Forward: one read of A, per-row partial sums (double) reduced in a fixed order (deterministic).
// Backward: one read of A, one write of dA.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/tv_loss.h"

namespace lowlight_fast {
namespace {

void check_tv_input(const at::Tensor& x, const char* fn) {
  TORCH_CHECK(x.dim() == 4, fn, ": x must be a 4-D tensor (B, C, H, W), got ", x.dim(), "-D with shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), fn, ": x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(x.numel() > 0, fn, ": x is empty (shape ", x.sizes(), ")");
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, fn, ": x must be at least 2x2 pixels (L_TV divides by H-1 and W-1), got ",
              x.size(2), "x", x.size(3));
}

int64_t row_grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

at::Tensor tv_loss_cpu(const at::Tensor& x_in) {
  check_tv_input(x_in, "tv_loss");
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  const int64_t rows = x.size(0) * x.size(1) * H;
  std::vector<double> part_h(rows), part_w(rows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tv_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = x.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(W), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = p + r * W;
        part_w[r] = lane_sum<acc_t>(W - 1, [row](int64_t i) {
          const acc_t d = acc_t(row[i + 1]) - acc_t(row[i]);
          return d * d;
        });
        if (r % H + 1 < H) {
          const scalar_t* next = row + W;
          part_h[r] = lane_sum<acc_t>(W, [row, next](int64_t i) {
            const acc_t d = acc_t(next[i]) - acc_t(row[i]);
            return d * d;
          });
        } else {
          part_h[r] = 0.0;
        }
      }
    });
  });
  double h = 0.0, w = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    h += part_h[r];
    w += part_w[r];
  }
  double sh, sw;
  tv::scales<double>(B, H, W, &sh, &sw);
  return at::scalar_tensor(h * sh + w * sw, x.options());
}

at::Tensor tv_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& x_in) {
  check_tv_input(x_in, "tv_loss_backward");
  TORCH_CHECK(grad.numel() == 1, "tv_loss_backward: grad must hold one value (the loss is a scalar), got shape ",
              grad.sizes());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  const int64_t rows = x.size(0) * x.size(1) * H;
  const double g = grad.item<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tv_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    double sh, sw;
    tv::scales<double>(B, H, W, &sh, &sw);
    const acc_t kh = acc_t(2.0 * sh * g), kw = acc_t(2.0 * sw * g);
    const scalar_t* p = x.const_data_ptr<scalar_t>();
    scalar_t* q = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(W), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t y = r % H;
        const bool has_up = y > 0, has_down = y + 1 < H;
        const scalar_t* row = p + r * W;
        const scalar_t* up = has_up ? row - W : row;
        const scalar_t* down = has_down ? row + W : row;
        scalar_t* o = q + r * W;
        o[0] = scalar_t(tv::grad_at<acc_t>(acc_t(row[0]), acc_t(up[0]), acc_t(down[0]), acc_t(0), acc_t(row[1]), has_up,
                                           has_down, false, true, kh, kw));
        for (int64_t i = 1; i < W - 1; ++i) {
          o[i] = scalar_t(tv::grad_at<acc_t>(acc_t(row[i]), acc_t(up[i]), acc_t(down[i]), acc_t(row[i - 1]),
                                             acc_t(row[i + 1]), has_up, has_down, true, true, kh, kw));
        }
        o[W - 1] = scalar_t(tv::grad_at<acc_t>(acc_t(row[W - 1]), acc_t(up[W - 1]), acc_t(down[W - 1]), acc_t(row[W - 2]),
                                               acc_t(0), has_up, has_down, true, false, kh, kw));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lowlight_fast, CPU, m) {
  m.impl("tv_loss", &tv_loss_cpu);
  m.impl("tv_loss_backward", &tv_loss_backward_cpu);
}

}  // namespace lowlight_fast
