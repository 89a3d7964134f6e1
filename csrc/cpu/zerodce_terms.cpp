// CPU kernels of the Zero-DCE loss terms that the original-named classes return, each one op with its
// backward (see common/zerodce_losses.h for the pooled statistics they start from):
//   zerodce_spatial_map: L_spa's per-cell map from the two 4x4-pooled maps (B, 1, H/4, W/4): 8 B per cell
//     read, 4 written (1/48 of an image's bytes);
//   zerodce_exposure:    L_exp from the 4x4-pooled map (its (patch/4)-pool), a scalar;
//   zerodce_color:       L_color from the channel means (B, 3) -> (B, 1, 1, 1);
//   zerodce_saturation:  Sa_Loss from the image: two reads (channel means, then the distances), 12 B per
//     pixel each in float32; its backward one read and one write.
// As ops they replace some 10 small eager kernels per class, each a parallel region that costs more in
// thread synchronisation than in arithmetic on maps this small. Sums are taken per task in double and
// added in task order: deterministic for any thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/zerodce_losses.h"
#include "cpu/alloc.h"
#include "cpu/dispatch.h"
#include "cpu/simd.h"

namespace lowlight_fast {
namespace {

using pooled::kChannels;
using pooled::kPool;

// Rows of the small maps per task: small maps stay in one task (no parallel region for a few thousand cells).
int64_t rows_grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

at::Tensor scalar_result(double v, const at::Tensor& like) {
  // made in double and converted: a value beyond the dtype's range becomes inf as in eager arithmetic
  return at::scalar_tensor(v, like.options().dtype(at::kDouble)).to(like.scalar_type());
}

// ---- L_spa's map ----

void check_pooled_pair(const char* op, const at::Tensor& po, const at::Tensor& pe) {
  check::image(op, po, "pooled_org", 1);
  check::same_shape(op, pe, "pooled_enhance", po, "pooled_org");
  check::same_dtype(op, pe, "pooled_enhance", po, "pooled_org");
}

// q = org - enhance of row i of one image into q[1..W4] with zeros at q[0] and q[W4 + 1]; zeros outside.
template <typename S, typename acc_t>
inline void diff_row(const S* po, const S* pe, int64_t i, int64_t H4, int64_t W4, acc_t* q) {
  q[0] = q[W4 + 1] = acc_t(0);
  if (i < 0 || i >= H4) {
    std::fill(q + 1, q + W4 + 1, acc_t(0));
    return;
  }
  const S* a = po + i * W4;
  const S* b = pe + i * W4;
  for (int64_t j = 0; j < W4; ++j) q[j + 1] = acc_t(a[j]) - acc_t(b[j]);
}

// Row i of one image's map g into dst[1..W4] as acc_t, zeros at dst[0], dst[W4 + 1] and outside the map.
template <typename S, typename acc_t>
inline void padded_row(const S* g, int64_t i, int64_t H4, int64_t W4, acc_t* dst) {
  dst[0] = dst[W4 + 1] = acc_t(0);
  if (i < 0 || i >= H4) {
    std::fill(dst + 1, dst + W4 + 1, acc_t(0));
    return;
  }
  const S* src = g + i * W4;
  for (int64_t j = 0; j < W4; ++j) dst[j + 1] = acc_t(src[j]);
}

// Rows i - 1, i, i + 1 of a padded map, kept across the rows of a task: moving to the next row of the
// same image computes one new row instead of three. fill(row, dst) writes one padded row.
template <typename acc_t>
struct RowWindow {
  std::vector<acc_t> buf;
  acc_t* rows[3];
  int64_t img = -1, centre = 0;
  explicit RowWindow(int64_t W4) : buf(3 * (W4 + 2)) {
    for (int k = 0; k < 3; ++k) rows[k] = buf.data() + k * (W4 + 2);
  }
  template <typename Fill>
  void move_to(int64_t image, int64_t i, const Fill& fill) {
    if (image == img && i == centre + 1) {
      std::swap(rows[0], rows[1]);
      std::swap(rows[1], rows[2]);
      fill(i + 1, rows[2]);
    } else {
      for (int k = 0; k < 3; ++k) fill(i - 1 + k, rows[k]);
    }
    img = image;
    centre = i;
  }
};

at::Tensor zerodce_spatial_map_cpu(const at::Tensor& pooled_org, const at::Tensor& pooled_enhance) {
  check_pooled_pair("zerodce_spatial_map", pooled_org, pooled_enhance);
  const at::Tensor po = pooled_org.contiguous(), pe = pooled_enhance.contiguous();
  const int64_t B = po.size(0), H4 = po.size(2), W4 = po.size(3);
  at::Tensor out = at::empty({B, 1, H4, W4}, po.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, po.scalar_type(), "zerodce_spatial_map_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a = po.const_data_ptr<scalar_t>();
    const scalar_t* b = pe.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * H4, rows_grain(W4), [&](int64_t r0, int64_t r1) {
      RowWindow<acc_t> q(W4);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t img = r / H4, i = r % H4, off = img * H4 * W4;
        q.move_to(img, i, [&](int64_t row, acc_t* dst) { diff_row(a + off, b + off, row, H4, W4, dst); });
        const acc_t *up = q.rows[0], *c = q.rows[1], *dn = q.rows[2];
        scalar_t* orow = o + r * W4;
        for (int64_t j = 1; j <= W4; ++j) {
          const acc_t v = c[j], l = v - c[j - 1], rr = v - c[j + 1], u = v - up[j], d = v - dn[j];
          orow[j - 1] = scalar_t((l * l + rr * rr) + (u * u + d * d));
        }
      }
    });
  });
  return out;
}

// d q_c = 2 sum over the 4 neighbours n of (g_c + g_n) (q_c - q_n), q and g zero outside the map: the
// cell's own term and the neighbour's term that has c as its neighbour.
std::tuple<at::Tensor, at::Tensor> zerodce_spatial_map_backward_cpu(const at::Tensor& grad,
                                                                     const at::Tensor& pooled_org,
                                                                     const at::Tensor& pooled_enhance) {
  const char* op = "zerodce_spatial_map_backward";
  check_pooled_pair(op, pooled_org, pooled_enhance);
  check::shape(op, grad, "grad", pooled_org.sizes());
  check::same_dtype(op, grad, "grad", pooled_org, "pooled_org");
  const at::Tensor po = pooled_org.contiguous(), pe = pooled_enhance.contiguous(), g = grad.contiguous();
  const int64_t B = po.size(0), H4 = po.size(2), W4 = po.size(3);
  at::Tensor g_org = at::empty_like(po), g_enh = at::empty_like(po);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, po.scalar_type(), "zerodce_spatial_map_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a = po.const_data_ptr<scalar_t>();
    const scalar_t* b = pe.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* go = g_org.mutable_data_ptr<scalar_t>();
    scalar_t* ge = g_enh.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * H4, rows_grain(W4), [&](int64_t r0, int64_t r1) {
      RowWindow<acc_t> q(W4), gw(W4);  // q = org - enhance and the incoming gradient, rows i - 1 .. i + 1
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t img = r / H4, i = r % H4, off = img * H4 * W4;
        q.move_to(img, i, [&](int64_t row, acc_t* dst) { diff_row(a + off, b + off, row, H4, W4, dst); });
        gw.move_to(img, i, [&](int64_t row, acc_t* dst) { padded_row(gp + off, row, H4, W4, dst); });
        const acc_t *qu = q.rows[0], *qc = q.rows[1], *qd = q.rows[2];
        const acc_t *gu = gw.rows[0], *gc = gw.rows[1], *gd = gw.rows[2];
        scalar_t* o1 = go + r * W4;
        scalar_t* o2 = ge + r * W4;
        for (int64_t j = 1; j <= W4; ++j) {
          const acc_t v = qc[j], gv = gc[j];
          const acc_t d = acc_t(2) * ((gv + gc[j - 1]) * (v - qc[j - 1]) + (gv + gc[j + 1]) * (v - qc[j + 1]) +
                                      (gv + gu[j]) * (v - qu[j]) + (gv + gd[j]) * (v - qd[j]));
          o1[j - 1] = scalar_t(d);
          o2[j - 1] = scalar_t(-d);
        }
      }
    });
  });
  return {g_org, g_enh};
}

// ---- L_exp from the pooled map ----

struct ExposureShape {
  int64_t B, H4, W4, p, Hp, Wp;
};

ExposureShape check_exposure(const char* op, const at::Tensor& pooled, int64_t exp_patch) {
  check::image(op, pooled, "pooled", 1);
  TORCH_CHECK(exp_patch >= kPool && exp_patch % kPool == 0, op, ": exp_patch must be a multiple of 4, got ", exp_patch);
  const int64_t p = exp_patch / kPool;
  TORCH_CHECK(pooled.size(2) >= p && pooled.size(3) >= p, op, ": the image must be at least ", exp_patch, "x",
              exp_patch, " pixels for the exposure pool, got a pooled map of ", pooled.size(2), "x", pooled.size(3));
  return {pooled.size(0), pooled.size(2), pooled.size(3), p, pooled.size(2) / p, pooled.size(3) / p};
}

// The mean of block (bi, bj) of image img.
template <typename S>
inline double block_mean(const S* m, const ExposureShape& s, int64_t img, int64_t bi, int64_t bj) {
  const S* base = m + img * s.H4 * s.W4 + bi * s.p * s.W4 + bj * s.p;
  double acc = 0.0;
  for (int64_t a = 0; a < s.p; ++a) {
    for (int64_t k = 0; k < s.p; ++k) acc += double(base[a * s.W4 + k]);
  }
  return acc / double(s.p * s.p);
}

at::Tensor zerodce_exposure_cpu(const at::Tensor& pooled_in, int64_t exp_patch, double exp_mean) {
  const ExposureShape s = check_exposure("zerodce_exposure", pooled_in, exp_patch);
  const at::Tensor pooled = pooled_in.contiguous();
  const int64_t rows = s.B * s.Hp;
  std::vector<double> partial(rows, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pooled.scalar_type(), "zerodce_exposure_cpu", [&] {
    const scalar_t* m = pooled.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, rows_grain(s.W4 * s.p), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        double acc = 0.0;
        for (int64_t bj = 0; bj < s.Wp; ++bj) {
          const double d = block_mean(m, s, r / s.Hp, r % s.Hp, bj) - exp_mean;
          acc += d * d;
        }
        partial[r] = acc;
      }
    });
  });
  double total = 0.0;
  for (const double v : partial) total += v;
  return scalar_result(total / double(s.B * s.Hp * s.Wp), pooled);
}

at::Tensor zerodce_exposure_backward_cpu(const at::Tensor& grad, const at::Tensor& pooled_in, int64_t exp_patch,
                                         double exp_mean) {
  const char* op = "zerodce_exposure_backward";
  const ExposureShape s = check_exposure(op, pooled_in, exp_patch);
  check::one_value(op, grad, "grad");
  const at::Tensor pooled = pooled_in.contiguous();
  const double k = grad.item<double>() * 2.0 / (double(s.B * s.Hp * s.Wp) * double(s.p * s.p));
  at::Tensor out = at::zeros_like(pooled);  // cells beyond the last whole block get no gradient
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pooled.scalar_type(), "zerodce_exposure_backward_cpu", [&] {
    const scalar_t* m = pooled.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.B * s.Hp, rows_grain(s.W4 * s.p), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t img = r / s.Hp, bi = r % s.Hp;
        for (int64_t bj = 0; bj < s.Wp; ++bj) {
          const scalar_t v = scalar_t(k * (block_mean(m, s, img, bi, bj) - exp_mean));
          scalar_t* base = o + img * s.H4 * s.W4 + bi * s.p * s.W4 + bj * s.p;
          for (int64_t a = 0; a < s.p; ++a) std::fill(base + a * s.W4, base + a * s.W4 + s.p, v);
        }
      }
    });
  });
  return out;
}

// ---- L_color from the channel means ----

void check_means(const char* op, const at::Tensor& means) {
  TORCH_CHECK(means.dim() == 2 && means.size(1) == kChannels && means.size(0) > 0, op,
              ": channel_means must be (B, 3) with B >= 1, got shape ", means.sizes());
  check::floating(op, means, "channel_means");
}

struct Color {
  double d_rg, d_rb, d_gb, value;
};

inline Color color_of(double r, double g, double b) {
  const double d_rg = (r - g) * (r - g), d_rb = (r - b) * (r - b), d_gb = (b - g) * (b - g);
  return {d_rg, d_rb, d_gb, std::sqrt(d_rg * d_rg + d_rb * d_rb + d_gb * d_gb)};
}

at::Tensor zerodce_color_cpu(const at::Tensor& means_in) {
  check_means("zerodce_color", means_in);
  const at::Tensor means = means_in.contiguous();
  const int64_t B = means.size(0);
  at::Tensor out = at::empty({B, 1, 1, 1}, means.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, means.scalar_type(), "zerodce_color_cpu", [&] {
    const scalar_t* m = means.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) o[b] = scalar_t(color_of(double(m[3 * b]), double(m[3 * b + 1]), double(m[3 * b + 2])).value);
  });
  return out;
}

// d/d d_xy of sqrt(sum d^2) = d_xy / value; 0 where value = 0 (all channel means equal, where the
// original's sqrt gives NaN).
at::Tensor zerodce_color_backward_cpu(const at::Tensor& grad_in, const at::Tensor& means_in) {
  const char* op = "zerodce_color_backward";
  check_means(op, means_in);
  check::shape(op, grad_in, "grad", {means_in.size(0), 1, 1, 1});
  check::same_dtype(op, grad_in, "grad", means_in, "channel_means");
  const at::Tensor means = means_in.contiguous(), grad = grad_in.contiguous();
  const int64_t B = means.size(0);
  at::Tensor out = at::empty_like(means);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, means.scalar_type(), "zerodce_color_backward_cpu", [&] {
    const scalar_t* m = means.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      const double r = double(m[3 * b]), gr = double(m[3 * b + 1]), bl = double(m[3 * b + 2]);
      const Color t = color_of(r, gr, bl);
      const double k = double(g[b]);
      const double s_rg = t.value > 0 ? k * t.d_rg / t.value : 0.0;
      const double s_rb = t.value > 0 ? k * t.d_rb / t.value : 0.0;
      const double s_gb = t.value > 0 ? k * t.d_gb / t.value : 0.0;
      o[3 * b] = scalar_t(s_rg * 2.0 * (r - gr) + s_rb * 2.0 * (r - bl));
      o[3 * b + 1] = scalar_t(-s_rg * 2.0 * (r - gr) - s_gb * 2.0 * (bl - gr));
      o[3 * b + 2] = scalar_t(-s_rb * 2.0 * (r - bl) + s_gb * 2.0 * (bl - gr));
    }
  });
  return out;
}

// ---- Sa_Loss ----
// loss = mean over (b, y, x) of |x(p) - m_b| (the Euclidean norm over the 3 channels, m_b the channel means);
// with u = (x - m) / |x - m| (0 where |x - m| = 0) and ubar_b its mean over the image's pixels,
// d loss / d x(p) = grad / (B H W) (u(p) - ubar_b) (the channel means depend on every pixel).

constexpr int64_t kSatRows = 8;  // rows per task

struct SatShape {
  int64_t B, H, W, tasks_per_image;
};

SatShape sat_shape(const at::Tensor& x) {
  const int64_t H = x.size(2);
  return {x.size(0), H, x.size(3), (H + kSatRows - 1) / kSatRows};
}

// Per-task channel sums of x: partial[t * 3 + c].
template <typename S>
void channel_sums(const S* x, const SatShape& s, std::vector<double>& partial) {
  using acc_t = at::opmath_type<S>;
  const int64_t plane = s.H * s.W;
  at::parallel_for(0, s.B * s.tasks_per_image, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / s.tasks_per_image, y0 = (t % s.tasks_per_image) * kSatRows;
      const int64_t n = (std::min(s.H, y0 + kSatRows) - y0) * s.W;
      for (int c = 0; c < kChannels; ++c) {
        const S* p = x + (b * kChannels + c) * plane + y0 * s.W;
        acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < n; ++i) acc += acc_t(p[i]);
        partial[t * kChannels + c] = double(acc);
      }
    }
  });
}

// Per image: the sums of partial[t * width + k] over its tasks, in task order, times `scale`.
std::vector<double> per_image(const std::vector<double>& partial, const SatShape& s, int width, double scale) {
  std::vector<double> out(s.B * width, 0.0);
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t t = 0; t < s.tasks_per_image; ++t) {
      for (int k = 0; k < width; ++k) out[b * width + k] += partial[(b * s.tasks_per_image + t) * width + k];
    }
    for (int k = 0; k < width; ++k) out[b * width + k] *= scale;
  }
  return out;
}

at::Tensor from_values(const std::vector<double>& v, at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "from_values", [&] {
    scalar_t* q = out.mutable_data_ptr<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i) q[i] = static_cast<scalar_t>(v[i]);
  });
  return out;
}

// The pixel loops of one task (n pixels of each of the 3 planes, `plane` apart): sums of the distances
// and of the unit vectors; and the gradient k (u - ubar) with c = k ubar.
template <typename S>
LOWLIGHT_FAST_INLINE void saturation_sums_impl(const S* p0, int64_t plane, int64_t n, const at::opmath_type<S>* m,
                                               at::opmath_type<S>* sums) {
  using acc_t = at::opmath_type<S>;
  const S* p1 = p0 + plane;
  const S* p2 = p1 + plane;
  const acc_t m0 = m[0], m1 = m[1], m2 = m[2];
  acc_t dist = 0, u0 = 0, u1 = 0, u2 = 0;
#pragma omp simd reduction(+ : dist, u0, u1, u2)
  for (int64_t i = 0; i < n; ++i) {
    const acc_t d0 = acc_t(p0[i]) - m0, d1 = acc_t(p1[i]) - m1, d2 = acc_t(p2[i]) - m2;
    const acc_t r = std::sqrt(d0 * d0 + d1 * d1 + d2 * d2);
    const acc_t inv = r > acc_t(0) ? acc_t(1) / r : acc_t(0);
    dist += r;
    u0 += d0 * inv;
    u1 += d1 * inv;
    u2 += d2 * inv;
  }
  sums[0] = dist;
  sums[1] = u0;
  sums[2] = u1;
  sums[3] = u2;
}

template <typename S>
LOWLIGHT_FAST_INLINE void saturation_grad_impl(const S* p0, S* o0, int64_t plane, int64_t n,
                                               const at::opmath_type<S>* m, const at::opmath_type<S>* c,
                                               at::opmath_type<S> k) {
  using acc_t = at::opmath_type<S>;
  const S* p1 = p0 + plane;
  const S* p2 = p1 + plane;
  S* o1 = o0 + plane;
  S* o2 = o1 + plane;
  const acc_t m0 = m[0], m1 = m[1], m2 = m[2], c0 = c[0], c1 = c[1], c2 = c[2];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const acc_t d0 = acc_t(p0[i]) - m0, d1 = acc_t(p1[i]) - m1, d2 = acc_t(p2[i]) - m2;
    const acc_t r = std::sqrt(d0 * d0 + d1 * d1 + d2 * d2);
    const acc_t inv = r > acc_t(0) ? k / r : acc_t(0);
    o0[i] = S(d0 * inv - c0);
    o1[i] = S(d1 * inv - c1);
    o2[i] = S(d2 * inv - c2);
  }
}

// float32: one copy per instruction set, chosen at run time (cpu/dispatch.h); other dtypes: baseline.
LOWLIGHT_FAST_CPU_DISPATCH("zerodce_saturation", saturation_sums_f32, saturation_sums_impl<float>)
LOWLIGHT_FAST_CPU_DISPATCH("zerodce_saturation", saturation_grad_f32, saturation_grad_impl<float>)

template <typename S>
void saturation_sums(const S* p0, int64_t plane, int64_t n, const at::opmath_type<S>* m, at::opmath_type<S>* sums) {
  if constexpr (std::is_same_v<S, float>) {
    saturation_sums_f32(p0, plane, n, m, sums);
  } else {
    saturation_sums_impl<S>(p0, plane, n, m, sums);
  }
}

template <typename S>
void saturation_grad(const S* p0, S* o0, int64_t plane, int64_t n, const at::opmath_type<S>* m,
                     const at::opmath_type<S>* c, at::opmath_type<S> k) {
  if constexpr (std::is_same_v<S, float>) {
    saturation_grad_f32(p0, o0, plane, n, m, c, k);
  } else {
    saturation_grad_impl<S>(p0, o0, plane, n, m, c, k);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> zerodce_saturation_cpu(const at::Tensor& x_in) {
  check::image("zerodce_saturation", x_in, "x", kChannels);
  const at::Tensor x = x_in.contiguous();
  const SatShape s = sat_shape(x);
  const int64_t plane = s.H * s.W, tasks = s.B * s.tasks_per_image;
  std::vector<double> sums(tasks * kChannels), partial(tasks * 4);
  std::vector<double> means;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zerodce_saturation_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    channel_sums(xp, s, sums);
    means = per_image(sums, s, kChannels, 1.0 / double(plane));
    // second read: the distances and the unit vectors' sums (for the backward)
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / s.tasks_per_image, y0 = (t % s.tasks_per_image) * kSatRows;
        const int64_t n = (std::min(s.H, y0 + kSatRows) - y0) * s.W;
        const scalar_t* p0 = xp + b * kChannels * plane + y0 * s.W;
        const acc_t m[3] = {acc_t(means[b * 3]), acc_t(means[b * 3 + 1]), acc_t(means[b * 3 + 2])};
        acc_t task_sums[4];
        saturation_sums(p0, plane, n, m, task_sums);
        for (int k = 0; k < 4; ++k) partial[t * 4 + k] = double(task_sums[k]);
      }
    });
  });
  const std::vector<double> img = per_image(partial, s, 4, 1.0);
  double total = 0.0;
  std::vector<double> unit(s.B * kChannels);
  for (int64_t b = 0; b < s.B; ++b) {
    total += img[b * 4];
    for (int c = 0; c < kChannels; ++c) unit[b * kChannels + c] = img[b * 4 + 1 + c] / double(plane);
  }
  return {scalar_result(total / double(s.B * plane), x), from_values(means, {s.B, kChannels}, x.options()),
          from_values(unit, {s.B, kChannels}, x.options())};
}

at::Tensor zerodce_saturation_backward_cpu(const at::Tensor& grad, const at::Tensor& x_in, const at::Tensor& means_in,
                                           const at::Tensor& unit_in) {
  const char* op = "zerodce_saturation_backward";
  check::image(op, x_in, "x", kChannels);
  check::one_value(op, grad, "grad");
  check::shape(op, means_in, "channel_means", {x_in.size(0), kChannels});
  check::shape(op, unit_in, "unit_means", {x_in.size(0), kChannels});
  const at::Tensor x = x_in.contiguous(), means = means_in.to(at::kDouble).contiguous(),
                   unit = unit_in.to(at::kDouble).contiguous();
  const SatShape s = sat_shape(x);
  const int64_t plane = s.H * s.W;
  const double k = grad.item<double>() / double(s.B * plane);
  at::Tensor out = empty_output_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zerodce_saturation_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const double* mp = means.const_data_ptr<double>();
    const double* up = unit.const_data_ptr<double>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.B * s.tasks_per_image, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / s.tasks_per_image, y0 = (t % s.tasks_per_image) * kSatRows;
        const int64_t n = (std::min(s.H, y0 + kSatRows) - y0) * s.W, base = b * kChannels * plane + y0 * s.W;
        const scalar_t* p0 = xp + base;
        scalar_t* o0 = op_ + base;
        const acc_t m[3] = {acc_t(mp[b * 3]), acc_t(mp[b * 3 + 1]), acc_t(mp[b * 3 + 2])};
        const acc_t c[3] = {acc_t(k * up[b * 3]), acc_t(k * up[b * 3 + 1]), acc_t(k * up[b * 3 + 2])};
        saturation_grad(p0, o0, plane, n, m, c, acc_t(k));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lowlight_fast, CPU, m) {
  m.impl("zerodce_spatial_map", &zerodce_spatial_map_cpu);
  m.impl("zerodce_spatial_map_backward", &zerodce_spatial_map_backward_cpu);
  m.impl("zerodce_exposure", &zerodce_exposure_cpu);
  m.impl("zerodce_exposure_backward", &zerodce_exposure_backward_cpu);
  m.impl("zerodce_color", &zerodce_color_cpu);
  m.impl("zerodce_color_backward", &zerodce_color_backward_cpu);
  m.impl("zerodce_saturation", &zerodce_saturation_cpu);
  m.impl("zerodce_saturation_backward", &zerodce_saturation_backward_cpu);
}

}  // namespace lowlight_fast
