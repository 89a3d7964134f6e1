// batch_norm_relu_nhwc: training-mode batch normalisation followed by ReLU, for channels-last images of
// any channel count (SCI's conv -> BatchNorm2d -> ReLU blocks, 3 and 16 channels), forward and backward.
//
//   mean[c], var[c]: over the M = N H W pixels of channel c of x (var biased: what BatchNorm
//                    normalises with); summed in double, shifted by the first pixel's value
//   y = max(0, x s[c] + t[c]),  s = weight / sqrt(var + eps),  t = bias - mean s
// backward, for dy = d loss / d y and dz = dy [x s + t > 0] (the ReLU's mask, recomputed from x with
// the forward's own arithmetic, so the output need not be read):
//   grad_bias[c] = sum dz,  grad_weight[c] = sum dz (x - mean) / sqrt(var + eps)
//   dx = s dz - s (x - mean) / (var + eps) sum dz (x - mean) / M - s sum dz / M
//
// ATen's channels-last batch norm is slow for few channels (a loop of C per pixel); here a
// channels-last tensor is one flat array whose element i has channel i % C, walked in blocks of
// L = lcm(C, 16) elements with a coefficient per element of a block, so every loop runs over contiguous
// vectors whatever C is. Sums are per chunk of blocks (a fixed split, not per thread) added in chunk
// order: the results do not depend on the thread count. Bytes per element: forward 2 reads and 1
// write, backward 4 reads and 1 write.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "cpu/alloc.h"
#include "cpu/dispatch.h"

// The ReLU mask (a comparison) in a vectorised loop: with trapping math GCC's AVX2 copies keep it a
// branch and the loops scalar. FP exceptions are not observed by anything here; results are unchanged.
#pragma GCC optimize("no-trapping-math")

namespace lowlight_fast {
namespace {

using at::Tensor;

constexpr int64_t kChunkElements = int64_t(1) << 16;
constexpr int kLanes = 16;  // L is a multiple of it

struct Layout {
  int64_t channels;  // C
  int64_t block;     // L = lcm(C, 16)
  int64_t numel;     // N H W C
  int64_t chunk;     // elements per chunk, a multiple of L
  int64_t chunks;
};

Layout layout_of(const Tensor& x) {
  Layout g;
  g.channels = x.size(1);
  g.block = std::lcm(g.channels, int64_t(16));
  g.numel = x.numel();
  g.chunk = std::max<int64_t>(1, kChunkElements / g.block) * g.block;
  g.chunks = (g.numel + g.chunk - 1) / g.chunk;
  return g;
}

// x s + t: one function for the forward's output and the backward's mask, so both round alike
template <typename T>
LOWLIGHT_FAST_INLINE T affine(T x, T s, T t) {
  return x * s + t;
}

// Shifted sums of one chunk [begin, end) (begin a multiple of L): sum[j] += x - k[j], sq[j] += (x - k[j])^2
// per position j of a block. The sums of 16 positions at a time live in local arrays over the chunk's
// blocks (registers: with sum[j] in memory GCC kept the loop scalar), then the tail after the last full
// block.
template <typename T>
LOWLIGHT_FAST_INLINE void stats_chunk(const T* x, int64_t begin, int64_t end, int64_t block, const double* k,
                                      double* sum, double* sq) {
  const int64_t full = begin + (end - begin) / block * block;
  for (int64_t j0 = 0; j0 < block; j0 += kLanes) {
    double as[kLanes], aq[kLanes], kk[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      as[l] = 0.0;
      aq[l] = 0.0;
      kk[l] = k[j0 + l];
    }
    for (int64_t i = begin + j0; i < full; i += block) {
      const T* p = x + i;
      LOWLIGHT_FAST_SIMD
      for (int l = 0; l < kLanes; ++l) {
        const double v = double(p[l]) - kk[l];
        as[l] += v;
        aq[l] += v * v;
      }
    }
    for (int l = 0; l < kLanes; ++l) {
      sum[j0 + l] += as[l];
      sq[j0 + l] += aq[l];
    }
  }
  for (int64_t j = 0; full + j < end; ++j) {
    const double v = double(x[full + j]) - k[j];
    sum[j] += v;
    sq[j] += v * v;
  }
}

template <typename T>
LOWLIGHT_FAST_INLINE void forward_chunk(const T* x, int64_t begin, int64_t end, int64_t block, const T* s,
                                        const T* t, T* __restrict__ y) {
  int64_t i = begin;
  for (; i + block <= end; i += block) {
    const T* p = x + i;
    T* q = y + i;
    LOWLIGHT_FAST_SIMD
    for (int64_t j = 0; j < block; ++j) {
      const T v = affine(p[j], s[j], t[j]);
      q[j] = v > T(0) ? v : T(0);
    }
  }
  const int64_t tail = end - i;
  LOWLIGHT_FAST_SIMD
  for (int64_t j = 0; j < tail; ++j) {
    const T v = affine(x[i + j], s[j], t[j]);
    y[i + j] = v > T(0) ? v : T(0);
  }
}

// sum[j] += dz, cross[j] += dz (x - mean[j]), as stats_chunk
template <typename T>
LOWLIGHT_FAST_INLINE void backward_sums_chunk(const T* dy, const T* x, int64_t begin, int64_t end, int64_t block,
                                              const T* s, const T* t, const double* mean, double* sum,
                                              double* cross) {
  const int64_t full = begin + (end - begin) / block * block;
  for (int64_t j0 = 0; j0 < block; j0 += kLanes) {
    double as[kLanes], ac[kLanes], mm[kLanes];
    T ss[kLanes], tt[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      as[l] = 0.0;
      ac[l] = 0.0;
      mm[l] = mean[j0 + l];
      ss[l] = s[j0 + l];
      tt[l] = t[j0 + l];
    }
    for (int64_t i = begin + j0; i < full; i += block) {
      const T* g = dy + i;
      const T* p = x + i;
      LOWLIGHT_FAST_SIMD
      for (int l = 0; l < kLanes; ++l) {
        const double d = double(g[l] * T(affine(p[l], ss[l], tt[l]) > T(0)));
        as[l] += d;
        ac[l] += d * (double(p[l]) - mm[l]);
      }
    }
    for (int l = 0; l < kLanes; ++l) {
      sum[j0 + l] += as[l];
      cross[j0 + l] += ac[l];
    }
  }
  for (int64_t j = 0; full + j < end; ++j) {
    const double d = double(dy[full + j] * T(affine(x[full + j], s[j], t[j]) > T(0)));
    sum[j] += d;
    cross[j] += d * (double(x[full + j]) - mean[j]);
  }
}

// dx = a dz + b (x - m) + c, per position of a block
template <typename T>
LOWLIGHT_FAST_INLINE void backward_chunk(const T* dy, const T* x, int64_t begin, int64_t end, int64_t block,
                                         const T* s, const T* t, const T* m, const T* b, const T* c, T* __restrict__ dx) {
  int64_t i = begin;
  for (; i + block <= end; i += block) {
    const T* g = dy + i;
    const T* p = x + i;
    T* q = dx + i;
    LOWLIGHT_FAST_SIMD
    for (int64_t j = 0; j < block; ++j) {
      const T dz = g[j] * T(affine(p[j], s[j], t[j]) > T(0));
      q[j] = s[j] * dz + b[j] * (p[j] - m[j]) + c[j];
    }
  }
  const int64_t tail = end - i;
  LOWLIGHT_FAST_SIMD
  for (int64_t j = 0; j < tail; ++j) {
    const T dz = dy[i + j] * T(affine(x[i + j], s[j], t[j]) > T(0));
    dx[i + j] = s[j] * dz + b[j] * (x[i + j] - m[j]) + c[j];
  }
}

LOWLIGHT_FAST_CPU_DISPATCH("batch_norm_relu_nhwc", stats_f32, stats_chunk<float>)
LOWLIGHT_FAST_CPU_DISPATCH("batch_norm_relu_nhwc", stats_f64, stats_chunk<double>)
LOWLIGHT_FAST_CPU_DISPATCH("batch_norm_relu_nhwc", forward_f32, forward_chunk<float>)
LOWLIGHT_FAST_CPU_DISPATCH("batch_norm_relu_nhwc", forward_f64, forward_chunk<double>)
LOWLIGHT_FAST_CPU_DISPATCH("batch_norm_relu_nhwc", sums_f32, backward_sums_chunk<float>)
LOWLIGHT_FAST_CPU_DISPATCH("batch_norm_relu_nhwc", sums_f64, backward_sums_chunk<double>)
LOWLIGHT_FAST_CPU_DISPATCH("batch_norm_relu_nhwc", backward_f32, backward_chunk<float>)
LOWLIGHT_FAST_CPU_DISPATCH("batch_norm_relu_nhwc", backward_f64, backward_chunk<double>)

template <typename T, typename... A>
void stats_dispatch(A... a) {
  if constexpr (std::is_same_v<T, float>) stats_f32(a...); else stats_f64(a...);
}
template <typename T, typename... A>
void forward_dispatch(A... a) {
  if constexpr (std::is_same_v<T, float>) forward_f32(a...); else forward_f64(a...);
}
template <typename T, typename... A>
void sums_dispatch(A... a) {
  if constexpr (std::is_same_v<T, float>) sums_f32(a...); else sums_f64(a...);
}
template <typename T, typename... A>
void backward_dispatch(A... a) {
  if constexpr (std::is_same_v<T, float>) backward_f32(a...); else backward_f64(a...);
}

// Two per-position sums over the whole tensor: each chunk's partial sums (2 L doubles), added in chunk
// order, then folded from block positions to channels.
template <typename F>
std::vector<double> reduce_chunks(const Layout& g, const F& chunk_sums) {
  // the two sums in separate arrays: adjacent, GCC's run-time alias check sent the loops to their scalar copy
  std::vector<double> first(g.chunks * g.block, 0.0), second(g.chunks * g.block, 0.0);
  at::parallel_for(0, g.chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      chunk_sums(c * g.chunk, std::min(g.numel, (c + 1) * g.chunk), first.data() + c * g.block,
                 second.data() + c * g.block);
  });
  std::vector<double> total(2 * g.channels, 0.0);
  for (int64_t c = 0; c < g.chunks; ++c)
    for (int64_t j = 0; j < g.block; ++j) {
      total[j % g.channels] += first[c * g.block + j];
      total[g.channels + j % g.channels] += second[c * g.block + j];
    }
  return total;
}

// per channel -> per position of a block
template <typename T>
std::vector<T> pattern(const std::vector<T>& per_channel, int64_t block) {
  std::vector<T> out(block);
  for (int64_t j = 0; j < block; ++j) out[j] = per_channel[j % per_channel.size()];
  return out;
}

// s and t from the statistics as stored (rounded to T), the same in forward and backward
template <typename T>
void coefficients(const T* mean, const T* var, const T* weight, const T* bias, double eps, int64_t channels,
                  std::vector<T>& s, std::vector<T>& t) {
  s.resize(channels);
  t.resize(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const double inv = 1.0 / std::sqrt(double(var[c]) + eps);
    s[c] = T(double(weight[c]) * inv);
    t[c] = T(double(bias[c]) - double(mean[c]) * double(weight[c]) * inv);
  }
}

// (N, C, H, W) channels-last, written in full (from the output pool when big)
Tensor empty_channels_last(const Tensor& like) {
  return empty_output({like.size(0), like.size(2), like.size(3), like.size(1)}, like.options())
      .permute({0, 3, 1, 2});
}

void check_args(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be a 4-D tensor (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.numel() > 0, op, ": x is empty (shape ", x.sizes(), ")");
  const int64_t c = x.size(1);
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{weight, "weight"}, {bias, "bias"}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == c, op, ": ", name, " must have shape (", c, "), got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(),
                ", got ", t.scalar_type());
  }
  TORCH_CHECK(x.numel() / c > 1, op, ": expected more than 1 value per channel in training, got input of shape ",
              x.sizes());
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor> forward_run(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                               double eps) {
  const Layout g = layout_of(x);
  const int64_t channels = g.channels;
  const T* xp = x.const_data_ptr<T>();
  std::vector<double> k(g.block);
  for (int64_t j = 0; j < g.block; ++j) k[j] = double(xp[j % channels]);
  const std::vector<double> total = reduce_chunks(g, [&](int64_t b, int64_t e, double* sum, double* sq) {
    stats_dispatch<T>(xp, b, e, g.block, k.data(), sum, sq);
  });
  const double count = double(g.numel / channels);
  Tensor mean = at::empty({channels}, x.options()), var = at::empty({channels}, x.options());
  T* mp = mean.data_ptr<T>();
  T* vp = var.data_ptr<T>();
  for (int64_t c = 0; c < channels; ++c) {
    const double m = total[c] / count;  // of x - k[c]
    mp[c] = T(m + k[c]);
    vp[c] = T(std::max(0.0, total[channels + c] / count - m * m));
  }
  std::vector<T> s, t;
  coefficients(mp, vp, weight.const_data_ptr<T>(), bias.const_data_ptr<T>(), eps, channels, s, t);
  const std::vector<T> sb = pattern(s, g.block), tb = pattern(t, g.block);
  Tensor y = empty_channels_last(x);
  T* yp = y.data_ptr<T>();
  at::parallel_for(0, g.chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      forward_dispatch<T>(xp, c * g.chunk, std::min(g.numel, (c + 1) * g.chunk), g.block, sb.data(), tb.data(), yp);
  });
  return {y, mean, var};
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor> backward_run(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                                const Tensor& bias, const Tensor& mean, const Tensor& var,
                                                double eps) {
  const Layout g = layout_of(x);
  const int64_t channels = g.channels;
  const T* xp = x.const_data_ptr<T>();
  const T* gp = dy.const_data_ptr<T>();
  const T* mp = mean.const_data_ptr<T>();
  const T* vp = var.const_data_ptr<T>();
  const T* wp = weight.const_data_ptr<T>();
  std::vector<T> s, t;
  coefficients(mp, vp, wp, bias.const_data_ptr<T>(), eps, channels, s, t);
  const std::vector<T> sb = pattern(s, g.block), tb = pattern(t, g.block);
  std::vector<double> mean_d(channels);
  for (int64_t c = 0; c < channels; ++c) mean_d[c] = double(mp[c]);
  const std::vector<double> mb = pattern(mean_d, g.block);
  const std::vector<double> total = reduce_chunks(g, [&](int64_t b, int64_t e, double* sum, double* cross) {
    sums_dispatch<T>(gp, xp, b, e, g.block, sb.data(), tb.data(), mb.data(), sum, cross);
  });
  const double count = double(g.numel / channels);
  Tensor grad_weight = at::empty({channels}, x.options()), grad_bias = at::empty({channels}, x.options());
  std::vector<T> m(channels), b(channels), c(channels);
  for (int64_t ch = 0; ch < channels; ++ch) {
    const double inv = 1.0 / std::sqrt(double(vp[ch]) + eps);
    const double sum = total[ch], cross = total[channels + ch];
    grad_bias.data_ptr<T>()[ch] = T(sum);
    grad_weight.data_ptr<T>()[ch] = T(cross * inv);
    const double sc = double(wp[ch]) * inv;
    m[ch] = mp[ch];
    b[ch] = T(-sc * inv * inv * cross / count);
    c[ch] = T(-sc * sum / count);
  }
  const std::vector<T> mbt = pattern(m, g.block), bb = pattern(b, g.block), cb = pattern(c, g.block);
  Tensor dx = empty_channels_last(x);
  T* dp = dx.data_ptr<T>();
  at::parallel_for(0, g.chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t k = c0; k < c1; ++k)
      backward_dispatch<T>(gp, xp, k * g.chunk, std::min(g.numel, (k + 1) * g.chunk), g.block, sb.data(),
                           tb.data(), mbt.data(), bb.data(), cb.data(), dp);
  });
  return {dx, grad_weight, grad_bias};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_relu_nhwc_cpu(const Tensor& x, const Tensor& weight,
                                                            const Tensor& bias, double eps) {
  check_args("batch_norm_relu_nhwc", x, weight, bias);
  TORCH_CHECK(eps >= 0, "batch_norm_relu_nhwc: eps must not be negative, got ", eps);
  const auto cl = at::MemoryFormat::ChannelsLast;
  const Tensor xc = x.contiguous(cl), wc = weight.contiguous(), bc = bias.contiguous();
  if (x.scalar_type() == at::kFloat) return forward_run<float>(xc, wc, bc, eps);
  return forward_run<double>(xc, wc, bc, eps);
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_relu_nhwc_backward_cpu(const Tensor& grad, const Tensor& x,
                                                                     const Tensor& weight, const Tensor& bias,
                                                                     const Tensor& mean, const Tensor& var,
                                                                     double eps) {
  const char* op = "batch_norm_relu_nhwc_backward";
  check_args(op, x, weight, bias);
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad must have x's shape ", x.sizes(), ", got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), op, ": grad must have x's dtype ", x.scalar_type(), ", got ",
              grad.scalar_type());
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{mean, "mean"}, {var, "var"}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1) && t.scalar_type() == x.scalar_type(), op, ": ", name,
                " must be (", x.size(1), ") of x's dtype, got ", t.sizes(), " ", t.scalar_type());
  }
  const auto cl = at::MemoryFormat::ChannelsLast;
  const Tensor gc = grad.contiguous(cl), xc = x.contiguous(cl);
  const Tensor wc = weight.contiguous(), bc = bias.contiguous(), mc = mean.contiguous(), vc = var.contiguous();
  if (x.scalar_type() == at::kFloat) return backward_run<float>(gc, xc, wc, bc, mc, vc, eps);
  return backward_run<double>(gc, xc, wc, bc, mc, vc, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(lowlight_fast, CPU, m) {
  m.impl("batch_norm_relu_nhwc", &batch_norm_relu_nhwc_cpu);
  m.impl("batch_norm_relu_nhwc_backward", &batch_norm_relu_nhwc_backward_cpu);
}

}  // namespace lowlight_fast
