// CPU kernels of zerodce_pooled: one read of (enhanced, low) gives the 4x4-pooled channel means of both
// and the channel means of enhanced (see common/zerodce_losses.h); the backward writes d enhanced (and
// d low when asked) in one pass. Work is split into (image, group of 4 rows) tasks; the channel sums are
// reduced from per-task partials in a fixed order (deterministic for any thread count).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/zerodce_losses.h"
#include "cpu/alloc.h"
#include "cpu/dispatch.h"
#include "cpu/simd.h"

namespace lowlight_fast {
namespace {

using pooled::kCell;
using pooled::kChannels;
using pooled::kPool;

// Serial conversion: at::Tensor::to would start a parallel region for a few values.
at::Tensor from_double(const std::vector<double>& v, at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "from_double", [&] {
    scalar_t* q = out.mutable_data_ptr<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i) q[i] = static_cast<scalar_t>(v[i]);
  });
  return out;
}

void check_image(const at::Tensor& t, const char* op, const char* name) {
  check::image(op, t, name, kChannels, kPool, kPool, "AvgPool2d(4)");
}

void check_pair(const at::Tensor& enhanced, const at::Tensor& low, const char* fn) {
  check_image(enhanced, fn, "enhanced");
  check_image(low, fn, "low");
  TORCH_CHECK(enhanced.sizes() == low.sizes(), fn, ": enhanced and low must have the same shape, got ",
              enhanced.sizes(), " and ", low.sizes());
  check::same_dtype(fn, low, "low", enhanced, "enhanced");
}

// Sum of v[0..n) in 16 lanes (vectorised) and a fixed-order combine: the same value for any thread count.
template <typename acc_t>
LOWLIGHT_FAST_INLINE double sum16(const acc_t* v, int64_t n) {
  acc_t lanes[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    LOWLIGHT_FAST_SIMD
    for (int k = 0; k < 16; ++k) lanes[k] += v[i + k];
  }
  double total = 0.0;
  for (int k = 0; k < 16; ++k) total += double(lanes[k]);
  for (; i < n; ++i) total += double(v[i]);
  return total;
}

// Pools one group of (up to) 4 rows of one 3-channel image: the column sums of each channel (`col`),
// optionally their per-channel totals, and, for a whole group, the 4x4-pooled channel mean into out.
template <typename S, typename acc_t>
LOWLIGHT_FAST_INLINE void pool_group(const S* img, int64_t plane, int64_t rows, int64_t W, int64_t W4, bool full,
                                     acc_t* col, acc_t* comb, double* channel_sums, S* out) {
  for (int c = 0; c < kChannels; ++c) {
    const S* p = img + c * plane;
    if (rows == kPool) {
      const S *r0 = p, *r1 = p + W, *r2 = p + 2 * W, *r3 = p + 3 * W;
      LOWLIGHT_FAST_SIMD
      for (int64_t x = 0; x < W; ++x) col[x] = (acc_t(r0[x]) + acc_t(r1[x])) + (acc_t(r2[x]) + acc_t(r3[x]));
    } else {
      for (int64_t x = 0; x < W; ++x) col[x] = acc_t(p[x]);
      for (int64_t k = 1; k < rows; ++k) {
        LOWLIGHT_FAST_SIMD
        for (int64_t x = 0; x < W; ++x) col[x] += acc_t(p[k * W + x]);
      }
    }
    if (channel_sums != nullptr) channel_sums[c] = sum16(col, W);
    if (!full) continue;
    if (c == 0) {
      std::copy(col, col + W, comb);
    } else {
      LOWLIGHT_FAST_SIMD
      for (int64_t x = 0; x < W; ++x) comb[x] += col[x];
    }
  }
  if (!full) return;
  const acc_t inv = acc_t(1) / acc_t(kCell);
  LOWLIGHT_FAST_SIMD
  for (int64_t j = 0; j < W4; ++j) {
    out[j] = S(((comb[4 * j] + comb[4 * j + 1]) + (comb[4 * j + 2] + comb[4 * j + 3])) * inv);
  }
}

// Task t of the forward and the backward: image b, group g of 4 rows (fewer at the bottom).
struct GroupTask {
  int64_t b, rows;
  int64_t offset;  // of the group's first pixel in a (B, 3, H, W) image
  int64_t pooled;  // of its row of the (B, 1, H/4, W/4) pooled map
  bool full;       // 4 whole rows: the group has a pooled row (AvgPool2d's floor drops the others)
};

LOWLIGHT_FAST_INLINE GroupTask group_task(int64_t t, int64_t H, int64_t W) {
  const int64_t groups = (H + kPool - 1) / kPool, b = t / groups, g = t % groups;
  return {b, std::min<int64_t>(kPool, H - g * kPool), b * kChannels * H * W + g * kPool * W,
          (b * (H / kPool) + g) * (W / kPool), g < H / kPool};
}

// The tasks [t0, t1) of zerodce_pooled (l and pl null: zerodce_pooled_single, one image).
template <typename S, typename acc_t>
LOWLIGHT_FAST_INLINE void pool_tasks(const S* e, const S* l, S* pe, S* pl, double* partial, int64_t t0, int64_t t1,
                                     int64_t H, int64_t W, acc_t* col, acc_t* comb) {
  const int64_t W4 = W / kPool, plane = H * W;
  for (int64_t t = t0; t < t1; ++t) {
    const GroupTask k = group_task(t, H, W);
    pool_group<S, acc_t>(e + k.offset, plane, k.rows, W, W4, k.full, col, comb, partial + t * kChannels, pe + k.pooled);
    if (k.full && l != nullptr)
      pool_group<S, acc_t>(l + k.offset, plane, k.rows, W, W4, true, col, comb, nullptr, pl + k.pooled);
  }
}

// float32: one copy per instruction set, chosen at run time (cpu/dispatch.h); other dtypes: baseline.
LOWLIGHT_FAST_CPU_DISPATCH("zerodce_pooled", pool_tasks_f32, (pool_tasks<float, float>))
void run_pool_tasks(const float* e, const float* l, float* pe, float* pl, double* partial, int64_t t0, int64_t t1,
                    int64_t H, int64_t W, float* col, float* comb) {
  pool_tasks_f32(e, l, pe, pl, partial, t0, t1, H, W, col, comb);
}
template <typename S, typename acc_t>
void run_pool_tasks(const S* e, const S* l, S* pe, S* pl, double* partial, int64_t t0, int64_t t1, int64_t H,
                    int64_t W, acc_t* col, acc_t* comb) {
  pool_tasks<S, acc_t>(e, l, pe, pl, partial, t0, t1, H, W, col, comb);
}

// The pooled map(s) and channel means; low undefined: zerodce_pooled_single (one read of one image).
std::tuple<at::Tensor, at::Tensor, at::Tensor> pooled_forward(const at::Tensor& enhanced_in, const at::Tensor* low_in) {
  const at::Tensor enhanced = enhanced_in.contiguous();
  const at::Tensor low = low_in != nullptr ? low_in->contiguous() : at::Tensor();
  const int64_t B = enhanced.size(0), H = enhanced.size(2), W = enhanced.size(3);
  const int64_t H4 = H / kPool, W4 = W / kPool, groups = (H + kPool - 1) / kPool;
  at::Tensor pooled_enhanced = at::empty({B, 1, H4, W4}, enhanced.options());
  at::Tensor pooled_low = low.defined() ? at::empty({B, 1, H4, W4}, enhanced.options()) : at::Tensor();
  std::vector<double> partial(B * groups * kChannels);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, enhanced.scalar_type(), "zerodce_pooled_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* e = enhanced.const_data_ptr<scalar_t>();
    const scalar_t* l = low.defined() ? low.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* pe = pooled_enhanced.mutable_data_ptr<scalar_t>();
    scalar_t* pl = low.defined() ? pooled_low.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B * groups, 1, [&](int64_t t0, int64_t t1) {
      std::vector<acc_t> col(W), comb(W);
      run_pool_tasks(e, l, pe, pl, partial.data(), t0, t1, H, W, col.data(), comb.data());
    });
  });
  std::vector<double> means(B * kChannels);
  for (int64_t b = 0; b < B; ++b) {
    for (int c = 0; c < kChannels; ++c) {
      double acc = 0.0;
      for (int64_t g = 0; g < groups; ++g) acc += partial[(b * groups + g) * kChannels + c];
      means[b * kChannels + c] = acc / static_cast<double>(H * W);
    }
  }
  return {pooled_enhanced, pooled_low, from_double(means, {B, kChannels}, enhanced.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> zerodce_pooled_cpu(const at::Tensor& enhanced, const at::Tensor& low) {
  check_pair(enhanced, low, "zerodce_pooled");
  return pooled_forward(enhanced, &low);
}

std::tuple<at::Tensor, at::Tensor> zerodce_pooled_single_cpu(const at::Tensor& x) {
  check::image("zerodce_pooled_single", x, "x", kChannels, kPool, kPool, "AvgPool2d(4)");
  auto res = pooled_forward(x, nullptr);
  return {std::get<0>(res), std::get<2>(res)};
}

void check_grad(const at::Tensor& g, const at::Tensor& like, at::IntArrayRef shape, const char* name) {
  const char* op = "zerodce_pooled_backward";
  check::shape(op, g, name, shape);
  check::same_dtype(op, g, name, like, "enhanced");
}

// Expands one row of the pooled-map gradient (times 1/48) to image columns; 0 beyond the pooled region.
template <typename scalar_t, typename acc_t>
inline void expand_row(const scalar_t* g, int64_t W4, int64_t W, bool full, acc_t* rep) {
  const acc_t inv = acc_t(1) / acc_t(kCell);
  int64_t x = 0;
  if (full) {
    for (int64_t j = 0; j < W4; ++j) {
      const acc_t v = acc_t(g[j]) * inv;
      for (int k = 0; k < kPool; ++k) rep[x++] = v;
    }
  }
  for (; x < W; ++x) rep[x] = acc_t(0);
}

std::tuple<at::Tensor, at::Tensor> zerodce_pooled_backward_cpu(const at::Tensor& grad_pooled_enhanced,
                                                                const at::Tensor& grad_pooled_low,
                                                                const at::Tensor& grad_channel_means,
                                                                const at::Tensor& enhanced, bool low_requires_grad) {
  check_image(enhanced, "zerodce_pooled_backward", "enhanced");
  const int64_t B = enhanced.size(0), H = enhanced.size(2), W = enhanced.size(3);
  const int64_t H4 = H / kPool, W4 = W / kPool, groups = (H + kPool - 1) / kPool;
  check_grad(grad_pooled_enhanced, enhanced, {B, 1, H4, W4}, "grad_pooled_enhanced");
  check_grad(grad_pooled_low, enhanced, {B, 1, H4, W4}, "grad_pooled_low");
  check_grad(grad_channel_means, enhanced, {B, kChannels}, "grad_channel_means");
  const at::Tensor gpe = grad_pooled_enhanced.contiguous();
  const at::Tensor gpl = grad_pooled_low.contiguous();
  const at::Tensor gm = grad_channel_means.contiguous();
  at::Tensor grad_enhanced = empty_output({B, kChannels, H, W}, enhanced.options());
  at::Tensor grad_low =
      low_requires_grad ? empty_output({B, kChannels, H, W}, enhanced.options()) : at::empty({0}, enhanced.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, enhanced.scalar_type(), "zerodce_pooled_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ge = gpe.const_data_ptr<scalar_t>();
    const scalar_t* gl = gpl.const_data_ptr<scalar_t>();
    const scalar_t* gmp = gm.const_data_ptr<scalar_t>();
    scalar_t* oe = grad_enhanced.mutable_data_ptr<scalar_t>();
    scalar_t* ol = low_requires_grad ? grad_low.mutable_data_ptr<scalar_t>() : nullptr;
    const int64_t plane = H * W;
    const acc_t inv_plane = acc_t(1) / acc_t(plane);
    at::parallel_for(0, B * groups, 1, [&](int64_t t0, int64_t t1) {
      std::vector<acc_t> rep(W);
      for (int64_t t = t0; t < t1; ++t) {
        const GroupTask k = group_task(t, H, W);
        const int64_t b = k.b, rows = k.rows, offset = k.offset, prow = k.pooled;
        const bool full = k.full;
        expand_row<scalar_t, acc_t>(ge + prow, W4, W, full, rep.data());
        for (int c = 0; c < kChannels; ++c) {
          const acc_t gc = acc_t(gmp[b * kChannels + c]) * inv_plane;
          for (int64_t k = 0; k < rows; ++k) {
            scalar_t* o = oe + offset + c * plane + k * W;
            for (int64_t x = 0; x < W; ++x) o[x] = scalar_t(pooled::pixel_grad<acc_t>(rep[x], gc));
          }
        }
        if (ol == nullptr) continue;
        expand_row<scalar_t, acc_t>(gl + prow, W4, W, full, rep.data());
        for (int c = 0; c < kChannels; ++c) {
          for (int64_t k = 0; k < rows; ++k) {
            scalar_t* o = ol + offset + c * plane + k * W;
            for (int64_t x = 0; x < W; ++x) o[x] = scalar_t(rep[x]);
          }
        }
      }
    });
  });
  return {grad_enhanced, grad_low};
}

// ---- the three losses from the pooled statistics (maps 48x smaller than the images) ----
// One op over the small maps, in double, one image per task (per-image terms summed in image order): as
// an op it replaces some 40 small eager kernels, each a parallel region that costs more in thread
// synchronisation than in arithmetic.

struct PooledMaps {
  int64_t B, H4, W4;
};

PooledMaps check_pooled(const at::Tensor& pe, const at::Tensor& pl, const at::Tensor& means, int64_t exp_patch,
                        const char* fn) {
  check::image(fn, pe, "pooled_enhanced", 1);
  check::same_shape(fn, pl, "pooled_low", pe, "pooled_enhanced");
  TORCH_CHECK(means.dim() == 2 && means.size(0) == pe.size(0) && means.size(1) == kChannels, fn,
              ": channel_means must be (B, 3), got ", means.sizes());
  check::same_dtype(fn, pl, "pooled_low", pe, "pooled_enhanced");
  check::same_dtype(fn, means, "channel_means", pe, "pooled_enhanced");
  TORCH_CHECK(exp_patch >= kPool && exp_patch % kPool == 0, fn, ": exp_patch must be a multiple of 4, got ", exp_patch);
  const int64_t p = exp_patch / kPool;
  TORCH_CHECK(pe.size(2) >= p && pe.size(3) >= p, fn, ": the images must be at least ", exp_patch, "x", exp_patch,
              " pixels for the exposure pool, got pooled maps of ", pe.size(2), "x", pe.size(3));
  return {pe.size(0), pe.size(2), pe.size(3)};
}

struct ColorTerms {
  double d_rg, d_rb, d_gb, value;
};

inline ColorTerms color_terms(const double* m) {
  const double d_rg = (m[0] - m[1]) * (m[0] - m[1]);
  const double d_rb = (m[0] - m[2]) * (m[0] - m[2]);
  const double d_gb = (m[2] - m[1]) * (m[2] - m[1]);
  return {d_rg, d_rb, d_gb, std::sqrt(d_rg * d_rg + d_rb * d_rb + d_gb * d_gb)};
}

// q = pooled_enhanced - pooled_low of one image, in double, with a border of zeros: L_spa's neighbours
// outside the map count as 0, so every cell has 4 neighbours and the loops have no branch.
class PaddedDiff {
 public:
  PaddedDiff(int64_t H4, int64_t W4) : H4_(H4), W4_(W4), stride_(W4 + 2), q_((H4 + 2) * (W4 + 2), 0.0) {}

  template <typename S>
  void fill(const S* e, const S* l) {
    for (int64_t i = 0; i < H4_; ++i) {
      double* row = at(i);
      for (int64_t j = 0; j < W4_; ++j) row[j] = double(e[i * W4_ + j]) - double(l[i * W4_ + j]);
    }
  }
  double* at(int64_t i) { return q_.data() + (i + 1) * stride_ + 1; }
  int64_t stride() const { return stride_; }

 private:
  int64_t H4_, W4_, stride_;
  std::vector<double> q_;
};

// sum over the cells of sum over their 4 neighbours of (q - q_neighbour)^2
inline double spatial_sum(PaddedDiff& q, int64_t H4, int64_t W4) {
  const int64_t s = q.stride();
  double total = 0.0;
  for (int64_t i = 0; i < H4; ++i) {
    const double* c = q.at(i);
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < W4; ++j) {
      const double v = c[j], a = v - c[j - 1], b = v - c[j + 1], u = v - c[j - s], d = v - c[j + s];
      acc += (a * a + b * b) + (u * u + d * d);
    }
    total += acc;
  }
  return total;
}

// Each image's three terms, unnormalised: [spa, exp, col] per image.
template <typename S>
void image_terms(const S* pe, const S* pl, const S* means, int64_t B, int64_t H4, int64_t W4, int64_t p,
                 double exp_mean, double* terms) {
  const int64_t cells = H4 * W4, Hp = H4 / p, Wp = W4 / p;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    PaddedDiff q(H4, W4);
    for (int64_t b = b0; b < b1; ++b) {
      const S* e = pe + b * cells;
      q.fill(e, pl + b * cells);
      double exp = 0.0;
      for (int64_t i = 0; i < Hp; ++i) {
        for (int64_t j = 0; j < Wp; ++j) {
          double acc = 0.0;
          for (int64_t a = 0; a < p; ++a) {
            for (int64_t k = 0; k < p; ++k) acc += double(e[(i * p + a) * W4 + j * p + k]);
          }
          const double d = acc / double(p * p) - exp_mean;
          exp += d * d;
        }
      }
      const double m[3] = {double(means[b * 3]), double(means[b * 3 + 1]), double(means[b * 3 + 2])};
      terms[b * 3] = spatial_sum(q, H4, W4);
      terms[b * 3 + 1] = exp;
      terms[b * 3 + 2] = color_terms(m).value;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> zerodce_pooled_losses_cpu(const at::Tensor& pooled_enhanced,
                                                                         const at::Tensor& pooled_low,
                                                                         const at::Tensor& channel_means,
                                                                         int64_t exp_patch, double exp_mean) {
  const PooledMaps s = check_pooled(pooled_enhanced, pooled_low, channel_means, exp_patch, "zerodce_pooled_losses");
  const at::Tensor pe = pooled_enhanced.contiguous(), pl = pooled_low.contiguous(), m = channel_means.contiguous();
  const int64_t p = exp_patch / kPool, Hp = s.H4 / p, Wp = s.W4 / p, cells = s.H4 * s.W4;
  std::vector<double> terms(s.B * 3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pe.scalar_type(), "zerodce_pooled_losses_cpu", [&] {
    image_terms(pe.const_data_ptr<scalar_t>(), pl.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), s.B,
                s.H4, s.W4, p, exp_mean, terms.data());
  });
  double spa = 0.0, exp = 0.0, col = 0.0;
  for (int64_t b = 0; b < s.B; ++b) {  // image order: deterministic
    spa += terms[b * 3];
    exp += terms[b * 3 + 1];
    col += terms[b * 3 + 2];
  }
  // made in double and converted, so that a sum beyond the dtype's range becomes inf as in eager
  // arithmetic (at::scalar_tensor refuses a double that overflows the target dtype)
  const auto as_result = [&](double v) {
    return at::scalar_tensor(v, pooled_enhanced.options().dtype(at::kDouble)).to(pooled_enhanced.scalar_type());
  };
  return {as_result(spa / static_cast<double>(s.B * cells)), as_result(col / static_cast<double>(s.B)),
          as_result(exp / static_cast<double>(s.B * Hp * Wp))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> zerodce_pooled_losses_backward_cpu(
    const at::Tensor& grad_spa, const at::Tensor& grad_col, const at::Tensor& grad_exp,
    const at::Tensor& pooled_enhanced, const at::Tensor& pooled_low, const at::Tensor& channel_means,
    int64_t exp_patch, double exp_mean) {
  const PooledMaps s =
      check_pooled(pooled_enhanced, pooled_low, channel_means, exp_patch, "zerodce_pooled_losses_backward");
  check::one_value("zerodce_pooled_losses_backward", grad_spa, "grad_spa");
  check::one_value("zerodce_pooled_losses_backward", grad_col, "grad_col");
  check::one_value("zerodce_pooled_losses_backward", grad_exp, "grad_exp");
  const at::Tensor pe = pooled_enhanced.contiguous(), pl = pooled_low.contiguous(), m = channel_means.contiguous();
  const int64_t p = exp_patch / kPool, Hp = s.H4 / p, Wp = s.W4 / p, cells = s.H4 * s.W4, H4 = s.H4, W4 = s.W4;
  const double k_spa = grad_spa.item<double>() / static_cast<double>(s.B * cells);
  const double k_col = grad_col.item<double>() / static_cast<double>(s.B);
  const double k_exp = grad_exp.item<double>() / static_cast<double>(s.B * Hp * Wp);
  at::Tensor g_pe = at::empty_like(pe), g_pl = at::empty_like(pl), g_m = at::empty_like(m);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pe.scalar_type(), "zerodce_pooled_losses_backward_cpu", [&] {
    using S = scalar_t;
    const S* pe_p = pe.const_data_ptr<S>();
    const S* pl_p = pl.const_data_ptr<S>();
    const S* m_p = m.const_data_ptr<S>();
    S* ge_p = g_pe.mutable_data_ptr<S>();
    S* gl_p = g_pl.mutable_data_ptr<S>();
    S* gm_p = g_m.mutable_data_ptr<S>();
    at::parallel_for(0, s.B, 1, [&](int64_t b0, int64_t b1) {
      PaddedDiff q(H4, W4);
      std::vector<double> g(cells);
      for (int64_t b = b0; b < b1; ++b) {
        const S* e = pe_p + b * cells;
        q.fill(e, pl_p + b * cells);
        const int64_t st = q.stride();
        // d/dq of sum_c sum_n (q_c - q_n)^2 = sum over inside n of 4 (q - q_n) + sum over outside n of 2 q
        //   = 16 q - 4 (sum of the (zero-padded) neighbours) - 2 (number of outside neighbours) q
        for (int64_t i = 0; i < H4; ++i) {
          const double* c = q.at(i);
          const double rows_out = double(i == 0) + double(i == H4 - 1);
          double* gi = g.data() + i * W4;
          LOWLIGHT_FAST_SIMD
          for (int64_t j = 0; j < W4; ++j) {
            const double out = rows_out + double(j == 0) + double(j == W4 - 1);
            const double v = c[j];
            gi[j] = k_spa * ((16.0 - 2.0 * out) * v - 4.0 * ((c[j - 1] + c[j + 1]) + (c[j - st] + c[j + st])));
          }
        }
        S* gl = gl_p + b * cells;
        for (int64_t c = 0; c < cells; ++c) gl[c] = S(-g[c]);
        const double inv_block = 1.0 / static_cast<double>(p * p);
        for (int64_t i = 0; i < Hp; ++i) {
          for (int64_t j = 0; j < Wp; ++j) {
            double acc = 0.0;
            for (int64_t a = 0; a < p; ++a) {
              for (int64_t k = 0; k < p; ++k) acc += double(e[(i * p + a) * W4 + j * p + k]);
            }
            const double ge = k_exp * 2.0 * (acc * inv_block - exp_mean) * inv_block;
            for (int64_t a = 0; a < p; ++a) {
              for (int64_t k = 0; k < p; ++k) g[(i * p + a) * W4 + j * p + k] += ge;
            }
          }
        }
        S* go = ge_p + b * cells;
        for (int64_t c = 0; c < cells; ++c) go[c] = S(g[c]);
        const double mb[3] = {double(m_p[b * 3]), double(m_p[b * 3 + 1]), double(m_p[b * 3 + 2])};
        const ColorTerms t = color_terms(mb);
        // d col / d d_xy = d_xy / col; 0 where col = 0 (all channel means equal), where sqrt has no derivative
        const double s_rg = t.value > 0 ? k_col * t.d_rg / t.value : 0.0;
        const double s_rb = t.value > 0 ? k_col * t.d_rb / t.value : 0.0;
        const double s_gb = t.value > 0 ? k_col * t.d_gb / t.value : 0.0;
        S* gm = gm_p + b * kChannels;
        gm[0] = S(s_rg * 2.0 * (mb[0] - mb[1]) + s_rb * 2.0 * (mb[0] - mb[2]));
        gm[1] = S(-s_rg * 2.0 * (mb[0] - mb[1]) - s_gb * 2.0 * (mb[2] - mb[1]));
        gm[2] = S(-s_rb * 2.0 * (mb[0] - mb[2]) + s_gb * 2.0 * (mb[2] - mb[1]));
      }
    });
  });
  return {g_pe, g_pl, g_m};
}

}  // namespace

TORCH_LIBRARY_IMPL(lowlight_fast, CPU, m) {
  m.impl("zerodce_pooled", &zerodce_pooled_cpu);
  m.impl("zerodce_pooled_single", &zerodce_pooled_single_cpu);
  m.impl("zerodce_pooled_backward", &zerodce_pooled_backward_cpu);
  m.impl("zerodce_pooled_losses", &zerodce_pooled_losses_cpu);
  m.impl("zerodce_pooled_losses_backward", &zerodce_pooled_losses_backward_cpu);
}

}  // namespace lowlight_fast
