// CPU kernels of tv_loss (Zero-DCE L_TV); the math is in common/tv_loss.h.
//   tv_loss             reads A once (4 bytes/element in float32)
//   tv_loss_with_grad   reads A once and writes weight * dL/dA in the same pass (8 bytes/element): the
//                       registered backward only scales it (or hands it over as it is when grad is 1).
//                       Gradients larger than the cache are written with non-temporal stores.
//   tv_loss_backward    reads A once and writes dA (8 bytes/element): recomputes
// One row of one channel is one unit of work: its vertical differences are taken against the row below
// (the row above for the gradient); a missing neighbour row is the row itself, so its differences are 0
// and the loop has no branch. The interior of a row runs in 16 lanes (vectorised, one copy per
// instruction set, chosen at run time: cpu/dispatch.h); per-row partial sums (double) are reduced in row
// order, so the value does not depend on the thread count (the AVX2/AVX-512 copies may differ from baseline x86-64 in the last
// bits: they contract multiply-adds).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/tv_loss.h"
#include "cpu/alloc.h"
#include "cpu/dispatch.h"
#include "cpu/simd.h"

namespace lowlight_fast {
namespace {

constexpr int kLanes = 16;

void check_tv_input(const at::Tensor& x, const char* op) {
  check::image(op, x, "x", check::kAnyChannels, 2, 2, "L_TV divides by H-1 and W-1");
}

int64_t row_grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

// One row: *h = sum (down-v)^2, *w = sum (right-v)^2, and with kGrad g = tv::grad_at(...) per element.
// `up` / `down` are the row itself where the image has no such row. T is float or double; S the storage.
template <bool kGrad, typename S, typename T>
LOWLIGHT_FAST_INLINE void tv_row(const S* __restrict__ row, const S* __restrict__ up, const S* __restrict__ down,
                                 S* __restrict__ g, int64_t W, T kh, T kw, double* h, double* w) {
  T lane_h[kLanes] = {}, lane_w[kLanes] = {};
  // x = 0: no left neighbour
  T v = T(row[0]), dr = T(row[1]) - v, dd = T(down[0]) - v;
  T tail_h = dd * dd, tail_w = dr * dr;
  if (kGrad) g[0] = S(tv::grad_at(v, T(up[0]), T(down[0]), v, T(row[1]), kh, kw));
  int64_t x = 1;
  for (; x + kLanes <= W - 1; x += kLanes) {
    LOWLIGHT_FAST_SIMD
    for (int k = 0; k < kLanes; ++k) {
      const T c = T(row[x + k]);
      const T right = T(row[x + k + 1]) - c, below = T(down[x + k]) - c;
      lane_h[k] += below * below;
      lane_w[k] += right * right;
      if (kGrad) g[x + k] = S(tv::grad_at(c, T(up[x + k]), T(down[x + k]), T(row[x + k - 1]), T(row[x + k + 1]), kh, kw));
    }
  }
  for (; x < W - 1; ++x) {
    const T c = T(row[x]);
    const T right = T(row[x + 1]) - c, below = T(down[x]) - c;
    tail_h += below * below;
    tail_w += right * right;
    if (kGrad) g[x] = S(tv::grad_at(c, T(up[x]), T(down[x]), T(row[x - 1]), T(row[x + 1]), kh, kw));
  }
  // x = W - 1: no right neighbour
  v = T(row[W - 1]);
  dd = T(down[W - 1]) - v;
  tail_h += dd * dd;
  if (kGrad) g[W - 1] = S(tv::grad_at(v, T(up[W - 1]), T(down[W - 1]), T(row[W - 2]), v, kh, kw));
  double sh = 0.0, sw = 0.0;
  for (int k = 0; k < kLanes; ++k) {
    sh += double(lane_h[k]);
    sw += double(lane_w[k]);
  }
  *h = sh + double(tail_h);
  *w = sw + double(tail_w);
}

// Row r of a (rows = B*C*H, W) image stack with H rows per channel; its gradient goes to g.
template <bool kGrad, typename S, typename T>
LOWLIGHT_FAST_INLINE void tv_stack_row(const S* p, S* g, int64_t r, int64_t H, int64_t W, T kh, T kw, double* part_h,
                                       double* part_w) {
  const int64_t y = r % H;
  const S* row = p + r * W;
  tv_row<kGrad, S, T>(row, y > 0 ? row - W : row, y + 1 < H ? row + W : row, g, W, kh, kw, part_h + r, part_w + r);
}

// Rows [r0, r1); their gradient (kGrad) into q, laid out like p.
template <bool kGrad, typename S, typename T>
LOWLIGHT_FAST_INLINE void tv_rows(const S* p, S* q, int64_t r0, int64_t r1, int64_t H, int64_t W, T kh, T kw,
                                  double* part_h, double* part_w) {
  for (int64_t r = r0; r < r1; ++r) {
    tv_stack_row<kGrad, S, T>(p, kGrad ? q + r * W : nullptr, r, H, W, kh, kw, part_h, part_w);
  }
}

// float32: one copy per instruction set; other dtypes: baseline only. With `stream`, each gradient row
// is computed into a row buffer (in L1) and streamed out: the arithmetic, and so the value, is the same.
LOWLIGHT_FAST_INLINE void run_rows_f32(const float* p, float* q, int64_t r0, int64_t r1, int64_t H, int64_t W,
                                       float kh, float kw, double* ph, double* pw, bool stream) {
  if (q == nullptr) {
    tv_rows<false, float, float>(p, q, r0, r1, H, W, kh, kw, ph, pw);
  } else if (!stream) {
    tv_rows<true, float, float>(p, q, r0, r1, H, W, kh, kw, ph, pw);
  } else {
    std::vector<float> buffer(W);
    for (int64_t r = r0; r < r1; ++r) {
      tv_stack_row<true, float, float>(p, buffer.data(), r, H, W, kh, kw, ph, pw);
      stream_copy(q + r * W, buffer.data(), W);  // non-temporal stores (cpu/simd.h)
    }
    stream_fence();  // the streamed stores are visible before the task is reported done
  }
}
LOWLIGHT_FAST_CPU_DISPATCH("tv_loss", run_rows_f32_dispatched, run_rows_f32)

void run_rows(const float* p, float* q, int64_t r0, int64_t r1, int64_t H, int64_t W, float kh, float kw, double* ph,
              double* pw, bool stream) {
  run_rows_f32_dispatched(p, q, r0, r1, H, W, kh, kw, ph, pw, stream);
}
template <typename S, typename T>
void run_rows(const S* p, S* q, int64_t r0, int64_t r1, int64_t H, int64_t W, T kh, T kw, double* ph, double* pw,
              bool /*stream: float32 only*/) {
  if (q != nullptr) {
    tv_rows<true, S, T>(p, q, r0, r1, H, W, kh, kw, ph, pw);
  } else {
    tv_rows<false, S, T>(p, q, r0, r1, H, W, kh, kw, ph, pw);
  }
}

// weight * L_TV(x), and weight * dL/dx into `grad` when it is defined. Returns the loss in double.
double tv_pass(const at::Tensor& x, const at::Tensor& grad, double weight) {
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  const int64_t rows = x.size(0) * x.size(1) * H;
  double sh, sw;
  tv::scales<double>(B, H, W, &sh, &sw);
  std::vector<double> part_h(rows), part_w(rows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tv_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t kh = acc_t(2.0 * sh * weight), kw = acc_t(2.0 * sw * weight);
    const scalar_t* p = x.const_data_ptr<scalar_t>();
    scalar_t* q = grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr;
    const bool stream = kCanStream && q != nullptr && x.numel() * int64_t(sizeof(scalar_t)) >= kStreamBytes;
    at::parallel_for(0, rows, row_grain(W), [&](int64_t r0, int64_t r1) {
      run_rows(p, q, r0, r1, H, W, kh, kw, part_h.data(), part_w.data(), stream);
    });
  });
  double h = 0.0, w = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    h += part_h[r];
    w += part_w[r];
  }
  return weight * (h * sh + w * sw);
}

at::Tensor tv_loss_cpu(const at::Tensor& x_in) {
  check_tv_input(x_in, "tv_loss");
  const at::Tensor x = x_in.contiguous();
  // made in double and converted: a value beyond the dtype becomes inf (scalar_tensor refuses it)
  return at::scalar_tensor(tv_pass(x, at::Tensor(), 1.0), x.options().dtype(at::kDouble)).to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> tv_loss_with_grad_cpu(const at::Tensor& x_in, double weight) {
  check_tv_input(x_in, "tv_loss_with_grad");
  const at::Tensor x = x_in.contiguous();
  at::Tensor grad = empty_output_like(x);
  const double loss = tv_pass(x, grad, weight);
  return {at::scalar_tensor(loss, x.options().dtype(at::kDouble)).to(x.scalar_type()), grad};
}

at::Tensor tv_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& x_in) {
  check_tv_input(x_in, "tv_loss_backward");
  check::one_value("tv_loss_backward", grad, "grad");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = empty_output_like(x);
  tv_pass(x, out, grad.item<double>());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lowlight_fast, CPU, m) {
  m.impl("tv_loss", &tv_loss_cpu);
  m.impl("tv_loss_with_grad", &tv_loss_with_grad_cpu);
  m.impl("tv_loss_backward", &tv_loss_backward_cpu);
}

}  // namespace lowlight_fast
