// CPU kernels of the light-enhancement curve; the math is in csrc/common/le_curve.h.
//
// s <- s + r_k (s^2 - s), 8 steps, in float32 (float64 for float64 tensors); the backward recomputes
// the 8 states per element from the inputs. Bytes moved per pixel (3 channels, float32):
//   le_curve                  reads x, r (27 values), writes the 4- and 8-step images (6):   132 B
//   le_curve_backward         reads x, r, 1 or 2 output gradients (30-33), writes grad_x, grad_r (27):
//                             228-240 B
//   le_curve_shared           reads x, a (6), writes the output (3): 36 B; a low-resolution map is
//                             sampled bilinearly (align_corners=True) and never written at full size
//   le_curve_shared_backward  reads x, a, grad (9), writes grad_x, grad_a (6): 60 B (+ the reduction of
//                             the full-resolution grad_a to a low-resolution map, when a is one)
// Outputs larger than the cache are computed into L1 tiles and written with non-temporal stores, from
// the output pool (cpu/alloc.h).
// Each element is independent: parallel over runs of elements (at::parallel_for), vectorised with
// `omp simd` loops that are compiled for AVX-512, AVX2 and baseline x86-64 and chosen at run time
// (cpu/dispatch.h: ATEN_CPU_CAPABILITY lowers the choice). float16 / bfloat16 runs are converted to
// float32 in tiles of kTile elements.
// The float16/bfloat16 tile buffers are filled by Tile::in before use; GCC cannot see that n > 0.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/le_curve.h"
#include "cpu/alloc.h"
#include "cpu/dispatch.h"
#include "cpu/simd.h"

namespace lowlight_fast {
namespace le_curve {
namespace {

constexpr int64_t kTile = 512;      // elements handled together (and converted together for 16-bit types)
constexpr int64_t kGrain = 16384;   // at least this many elements per parallel task

// ---- vectorised runs of n contiguous elements (float or double) ----

template <typename T>
LOWLIGHT_FAST_INLINE void forward_run(const T* x, const T* const* r, T* out4, T* out8, int64_t n) {
  LOWLIGHT_FAST_SIMD
  for (int64_t i = 0; i < n; ++i) {
    T rk[kSteps];
    for (int k = 0; k < kSteps; ++k) rk[k] = r[k][i];
    T o4, o8;
    forward(x[i], rk, o4, o8);
    out4[i] = o4;
    out8[i] = o8;
  }
}

template <typename T>
LOWLIGHT_FAST_INLINE void backward_run(const T* x, const T* const* r, const T* g4, const T* g8, T* gx, T* const* gr,
                         int64_t n) {
  LOWLIGHT_FAST_SIMD
  for (int64_t i = 0; i < n; ++i) {
    T rk[kSteps], grk[kSteps];
    for (int k = 0; k < kSteps; ++k) rk[k] = r[k][i];
    T g;
    backward(x[i], rk, g4[i], g8[i], g, grk);
    gx[i] = g;
    for (int k = 0; k < kSteps; ++k) gr[k][i] = grk[k];
  }
}

template <typename T>
LOWLIGHT_FAST_INLINE void shared_forward_run(const T* x, const T* a, T* out, int64_t n) {
  LOWLIGHT_FAST_SIMD
  for (int64_t i = 0; i < n; ++i) out[i] = forward_shared(x[i], a[i]);
}

template <typename T>
LOWLIGHT_FAST_INLINE void shared_backward_run(const T* x, const T* a, const T* g, T* gx, T* ga, int64_t n) {
  LOWLIGHT_FAST_SIMD
  for (int64_t i = 0; i < n; ++i) {
    T dx, da;
    backward_shared(x[i], a[i], g[i], dx, da);
    gx[i] = dx;
    ga[i] = da;
  }
}

// float32 (and the float tiles of 16-bit types): one copy per instruction set, chosen at run time
// (cpu/dispatch.h); float64: baseline only (gradcheck).
LOWLIGHT_FAST_CPU_DISPATCH("le_curve", forward_f32, forward_run<float>)
LOWLIGHT_FAST_CPU_DISPATCH("le_curve_backward", backward_f32, backward_run<float>)
LOWLIGHT_FAST_CPU_DISPATCH("le_curve_shared", shared_forward_f32, shared_forward_run<float>)
LOWLIGHT_FAST_CPU_DISPATCH("le_curve_shared_backward", shared_backward_f32, shared_backward_run<float>)

void run(const float* x, const float* const* r, float* o4, float* o8, int64_t n) { forward_f32(x, r, o4, o8, n); }
void run(const double* x, const double* const* r, double* o4, double* o8, int64_t n) {
  forward_run(x, r, o4, o8, n);
}
void run(const float* x, const float* const* r, const float* g4, const float* g8, float* gx, float* const* gr,
         int64_t n) {
  backward_f32(x, r, g4, g8, gx, gr, n);
}
void run(const double* x, const double* const* r, const double* g4, const double* g8, double* gx,
         double* const* gr, int64_t n) {
  backward_run(x, r, g4, g8, gx, gr, n);
}
void run(const float* x, const float* a, float* out, int64_t n) { shared_forward_f32(x, a, out, n); }
void run(const double* x, const double* a, double* out, int64_t n) { shared_forward_run(x, a, out, n); }
void run(const float* x, const float* a, const float* g, float* gx, float* ga, int64_t n) {
  shared_backward_f32(x, a, g, gx, ga, n);
}
void run(const double* x, const double* a, const double* g, double* gx, double* ga, int64_t n) {
  shared_backward_run(x, a, g, gx, ga, n);
}

// ---- element types: the math runs in Tile<S>::T; 16-bit types go through float tiles ----

template <typename S>
struct Tile {
  using T = std::conditional_t<std::is_same_v<S, double>, double, float>;
  static constexpr bool kDirect = std::is_same_v<S, T>;

  // A read-only view of n <= kTile elements at p as T (p itself when S is T).
  static const T* in(const S* p, T* buf, int64_t n) {
    if constexpr (kDirect) {
      return p;
    } else {
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<T>(p[i]);
      return buf;
    }
  }
  // Where to write n elements destined for p (p itself, or buf when converting or streaming); flush()
  // stores them there, with non-temporal stores when `stream` (float32 / float64 only).
  static T* out(S* p, T* buf, bool stream) {
    if constexpr (kDirect) {
      return stream ? buf : p;
    } else {
      return buf;
    }
  }
  static void flush(S* p, const T* buf, int64_t n, bool stream) {
    if constexpr (kDirect) {
      if (stream) stream_copy(p, buf, n);
    } else {
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<S>(buf[i]);
    }
  }
  // kTile zeros: the gradient of an output that has none.
  static const T* zeros() {
    alignas(64) static const T z[kTile] = {};
    return z;
  }
};

// Whether outputs of `bytes` in all are written with non-temporal stores (cpu/simd.h).
bool stream_outputs(int64_t bytes) { return kCanStream && bytes >= kStreamBytes; }

// Calls fn(plane, p, n) on runs [p, p + n) of at most kTile elements within one plane, for all planes.
template <typename Fn>
void for_each_run(int64_t planes, int64_t plane_size, const Fn& fn) {
  at::parallel_for(0, planes * plane_size, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t plane = i / plane_size;
      const int64_t p = i % plane_size;
      const int64_t n = std::min({kTile, plane_size - p, end - i});
      fn(plane, p, n);
      i += n;
    }
    stream_fence();
  });
}

// The pixel grid the map covers: (Gh, Gw) >= the image's (H, W), whose pixels are its top-left part.
struct Grid {
  int64_t h, w;
};

Grid grid_of(const char* op, const at::Tensor& x, at::OptionalIntArrayRef grid) {
  const int64_t H = x.size(2), W = x.size(3);
  if (!grid.has_value()) return {H, W};
  const auto g = *grid;
  TORCH_CHECK(g.size() == 2, op, ": grid must be (height, width), got ", g);
  TORCH_CHECK(g[0] >= H && g[1] >= W, op, ": grid ", g, " must cover the image, ", H, "x", W);
  return {g[0], g[1]};
}

// Zero-DCE++: calls fn(plane, p, n, a_run) where a_run holds the map at pixels [p, p + n) of the plane
// as T: read from a when it has the image's size (and grid), else sampled from it bilinearly
// (align_corners=True) onto the grid's pixels, of which the image's H x W are computed.
template <typename S, typename Fn>
void for_each_map_run(const at::Tensor& a, int64_t planes, int64_t H, int64_t W, Grid grid, const Fn& fn) {
  using T = typename Tile<S>::T;
  const S* ap = a.const_data_ptr<S>();
  const int64_t h = a.size(2), w = a.size(3);
  if (h == H && w == W && grid.h == H && grid.w == W) {
    for_each_run(planes, H * W, [&](int64_t plane, int64_t p, int64_t n) {
      T buf[kTile];
      fn(plane, p, n, Tile<S>::in(ap + plane * H * W + p, buf, n));
    });
    return;
  }
  const T scale_y = align_corners_scale<T>(h, grid.h);
  const T scale_x = align_corners_scale<T>(w, grid.w);
  std::vector<LinearTap<T>> cols(W);
  for (int64_t ox = 0; ox < W; ++ox) cols[ox] = align_corners_tap<T>(ox, w, grid.w, scale_x);
  const int64_t grain_rows = std::max<int64_t>(1, kGrain / W);
  at::parallel_for(0, planes * H, grain_rows, [&](int64_t begin, int64_t end) {
    // The map's rows resampled along x (PyTorch's inner sum of `bilinear`), two at a time: consecutive
    // output rows read the same two source rows, so the per-column gathers are done once per source row
    // and each output row is one vectorised blend of two cached rows.
    std::vector<T> rows(2 * W);
    int64_t cached[2] = {-1, -1};  // plane * h + source row held by each half of `rows`
    const auto source_row = [&](int64_t plane, int64_t iy, int keep) -> const T* {
      const int64_t id = plane * h + iy;
      for (int slot = 0; slot < 2; ++slot) {
        if (cached[slot] == id) return rows.data() + slot * W;
      }
      const int slot = keep == 0 ? 1 : 0;  // never the slot holding the other row in use
      T* dst = rows.data() + slot * W;
      const S* src = ap + id * w;
      for (int64_t ox = 0; ox < W; ++ox) {
        const LinearTap<T>& tx = cols[ox];
        dst[ox] = tx.w0 * static_cast<T>(src[tx.i0]) + tx.w1 * static_cast<T>(src[tx.i1]);
      }
      cached[slot] = id;
      return dst;
    };
    T buf[kTile];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / H, oy = row % H;
      const LinearTap<T> ty = align_corners_tap<T>(oy, h, grid.h, scale_y);
      const T* r0 = source_row(plane, ty.i0, -1);
      const int slot0 = r0 == rows.data() ? 0 : 1;
      const T* r1 = source_row(plane, ty.i1, slot0);
      const T w0 = ty.w0, w1 = ty.w1;
      for (int64_t x0 = 0; x0 < W; x0 += kTile) {
        const int64_t n = std::min(kTile, W - x0);
        LOWLIGHT_FAST_SIMD
        for (int64_t i = 0; i < n; ++i) buf[i] = w0 * r0[x0 + i] + w1 * r1[x0 + i];
        fn(plane, oy * W + x0, n, static_cast<const T*>(buf));
      }
    }
    stream_fence();
  });
}

// ---- argument checks ----

void check_x(const char* op, const at::Tensor& x) {
  check::image(op, x, "x", kChannels);
  check::device(op, x, "x", at::kCPU);
}

// A tensor that goes with x: its dtype and batch, and (same_size) its spatial size too.
void check_like(const char* op, const at::Tensor& t, const char* name, const at::Tensor& x, int64_t channels,
                bool same_size) {
  check::image(op, t, name, channels);
  check::device(op, t, name, at::kCPU);
  check::same_dtype(op, t, name, x, "x");
  TORCH_CHECK(t.size(0) == x.size(0), op, ": ", name, " has batch ", t.size(0), " but x has ", x.size(0));
  if (same_size) {
    TORCH_CHECK(t.size(2) == x.size(2) && t.size(3) == x.size(3), op, ": ", name,
                " must have the spatial size of x, ", x.size(2), "x", x.size(3), ", got shape ", t.sizes());
  }
}

// ---- r channels-last ----

// The curve maps as the convolution trunk leaves them on the CPU (channels-last: a pixel's 24 values
// adjacent). Instead of a contiguous copy of r (24 values a pixel through memory), runs of kClTile
// pixels are transposed into plane tiles in L1 and computed by the same vectorised runs; x is NCHW
// contiguous, the outputs NCHW as on the other path.
constexpr int64_t kClTile = 256;  // 24 float tiles of kClTile = 24 KiB: the transposed block stays in L1

void le_curve_channels_last(const at::Tensor& x, const at::Tensor& r, at::Tensor& out4, at::Tensor& out8,
                            bool stream) {
  constexpr int kMaps = kSteps * kChannels;
  const int64_t B = x.size(0), HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "le_curve_cpu_channels_last", [&] {
    using IO = Tile<scalar_t>;
    using T = typename IO::T;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    scalar_t* o4p = out4.mutable_data_ptr<scalar_t>();
    scalar_t* o8p = out8.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * HW, kGrain / kChannels, [&](int64_t begin, int64_t end) {
      alignas(64) T rb[kMaps][kClTile];
      T xb[kTile], o4b[kTile], o8b[kTile];
      for (int64_t i = begin; i < end;) {
        const int64_t b = i / HW, p = i % HW;
        const int64_t n = std::min({kClTile, HW - p, end - i});
        const scalar_t* src = rp + i * kMaps;  // pixel (b, p) of the channels-last maps
        for (int64_t j = 0; j < n; ++j) {
          for (int m = 0; m < kMaps; ++m) rb[m][j] = static_cast<T>(src[j * kMaps + m]);
        }
        for (int c = 0; c < kChannels; ++c) {
          const T* rt[kSteps];
          for (int k = 0; k < kSteps; ++k) rt[k] = rb[k * kChannels + c];
          const int64_t off = (b * kChannels + c) * HW + p;
          T* o4 = IO::out(o4p + off, o4b, stream);
          T* o8 = IO::out(o8p + off, o8b, stream);
          run(IO::in(xp + off, xb, n), rt, o4, o8, n);
          IO::flush(o4p + off, o4, n, stream);
          IO::flush(o8p + off, o8, n, stream);
        }
        i += n;
      }
      stream_fence();
    });
  });
}

// ---- ops ----

std::tuple<at::Tensor, at::Tensor> le_curve_cpu(const at::Tensor& x_in, const at::Tensor& r_in) {
  check_x("le_curve", x_in);
  check_like("le_curve", r_in, "r", x_in, kSteps * kChannels, true);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out4 = empty_output_like(x), out8 = empty_output_like(x);
  const int64_t HW = x.size(2) * x.size(3);
  const bool stream = stream_outputs(2 * int64_t(x.nbytes()));
  if (!r_in.is_contiguous() && r_in.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    le_curve_channels_last(x, r_in, out4, out8, stream);
    return {out4, out8};
  }
  const at::Tensor r = r_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "le_curve_cpu", [&] {
    using IO = Tile<scalar_t>;
    using T = typename IO::T;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    scalar_t* o4p = out4.mutable_data_ptr<scalar_t>();
    scalar_t* o8p = out8.mutable_data_ptr<scalar_t>();
    for_each_run(x.size(0) * kChannels, HW, [&](int64_t plane, int64_t p, int64_t n) {
      const int64_t b = plane / kChannels, c = plane % kChannels;
      T xb[kTile], rb[kSteps][kTile], o4b[kTile], o8b[kTile];
      const T* rt[kSteps];
      for (int k = 0; k < kSteps; ++k) rt[k] = IO::in(rp + ((b * kSteps + k) * kChannels + c) * HW + p, rb[k], n);
      const int64_t off = plane * HW + p;
      T* o4 = IO::out(o4p + off, o4b, stream);
      T* o8 = IO::out(o8p + off, o8b, stream);
      run(IO::in(xp + off, xb, n), rt, o4, o8, n);
      IO::flush(o4p + off, o4, n, stream);
      IO::flush(o8p + off, o8, n, stream);
    });
  });
  return {out4, out8};
}

std::tuple<at::Tensor, at::Tensor> le_curve_backward_cpu(const at::Tensor& x_in, const at::Tensor& r_in,
                                                         const std::optional<at::Tensor>& grad4_in,
                                                         const std::optional<at::Tensor>& grad8_in) {
  const char* op = "le_curve_backward";
  check_x(op, x_in);
  check_like(op, r_in, "r", x_in, kSteps * kChannels, true);
  const bool has4 = grad4_in.has_value() && grad4_in->defined();
  const bool has8 = grad8_in.has_value() && grad8_in->defined();
  if (has4) check_like(op, *grad4_in, "grad_after4", x_in, kChannels, true);
  if (has8) check_like(op, *grad8_in, "grad_after8", x_in, kChannels, true);
  if (!has4 && !has8) return {at::zeros_like(x_in), at::zeros_like(r_in)};
  const at::Tensor x = x_in.contiguous(), r = r_in.contiguous();
  const at::Tensor g4 = has4 ? grad4_in->contiguous() : at::Tensor();
  const at::Tensor g8 = has8 ? grad8_in->contiguous() : at::Tensor();
  at::Tensor grad_x = empty_output_like(x), grad_r = empty_output_like(r);
  const int64_t HW = x.size(2) * x.size(3);
  const bool stream = stream_outputs(int64_t(x.nbytes() + r.nbytes()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "le_curve_backward_cpu", [&] {
    using IO = Tile<scalar_t>;
    using T = typename IO::T;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    const scalar_t* g4p = has4 ? g4.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* g8p = has8 ? g8.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* grp = grad_r.mutable_data_ptr<scalar_t>();
    for_each_run(x.size(0) * kChannels, HW, [&](int64_t plane, int64_t p, int64_t n) {
      const int64_t b = plane / kChannels, c = plane % kChannels;
      T xb[kTile], rb[kSteps][kTile], g4b[kTile], g8b[kTile], gxb[kTile], grb[kSteps][kTile];
      const T* rt[kSteps];
      T* grt[kSteps];
      for (int k = 0; k < kSteps; ++k) {
        const int64_t roff = ((b * kSteps + k) * kChannels + c) * HW + p;
        rt[k] = IO::in(rp + roff, rb[k], n);
        grt[k] = IO::out(grp + roff, grb[k], stream);
      }
      const int64_t off = plane * HW + p;
      const T* g4t = has4 ? IO::in(g4p + off, g4b, n) : IO::zeros();
      const T* g8t = has8 ? IO::in(g8p + off, g8b, n) : IO::zeros();
      T* gx = IO::out(gxp + off, gxb, stream);
      run(IO::in(xp + off, xb, n), rt, g4t, g8t, gx, grt, n);
      IO::flush(gxp + off, gx, n, stream);
      for (int k = 0; k < kSteps; ++k) {
        IO::flush(grp + ((b * kSteps + k) * kChannels + c) * HW + p, grt[k], n, stream);
      }
    });
  });
  return {grad_x, grad_r};
}

at::Tensor le_curve_shared_cpu(const at::Tensor& x_in, const at::Tensor& a_in, at::OptionalIntArrayRef grid_in) {
  check_x("le_curve_shared", x_in);
  check_like("le_curve_shared", a_in, "a", x_in, kChannels, false);
  const Grid grid = grid_of("le_curve_shared", x_in, grid_in);
  const at::Tensor x = x_in.contiguous(), a = a_in.contiguous();
  at::Tensor out = empty_output_like(x);
  const int64_t H = x.size(2), W = x.size(3);
  const bool stream = stream_outputs(int64_t(x.nbytes()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "le_curve_shared_cpu", [&] {
    using IO = Tile<scalar_t>;
    using T = typename IO::T;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for_each_map_run<scalar_t>(a, x.size(0) * kChannels, H, W, grid, [&](int64_t plane, int64_t p, int64_t n,
                                                                   const T* amap) {
      T xb[kTile], ob[kTile];
      const int64_t off = plane * H * W + p;
      T* o = IO::out(op + off, ob, stream);
      run(IO::in(xp + off, xb, n), amap, o, n);
      IO::flush(op + off, o, n, stream);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> le_curve_shared_backward_cpu(const at::Tensor& x_in, const at::Tensor& a_in,
                                                                const at::Tensor& grad_in,
                                                                at::OptionalIntArrayRef grid_in) {
  const char* op = "le_curve_shared_backward";
  check_x(op, x_in);
  check_like(op, a_in, "a", x_in, kChannels, false);
  check_like(op, grad_in, "grad_out", x_in, kChannels, true);
  const Grid grid = grid_of(op, x_in, grid_in);
  const at::Tensor x = x_in.contiguous(), a = a_in.contiguous(), g = grad_in.contiguous();
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  const bool full = a.size(2) == H && a.size(3) == W && grid.h == H && grid.w == W;
  // grad_a at full resolution: in a's dtype when it is the answer, else in the math type until reduced.
  const at::ScalarType math_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_x = empty_output_like(x);
  at::Tensor grad_a_full = full ? empty_output_like(x) : at::empty(x.sizes(), x.options().dtype(math_type));
  const bool stream = stream_outputs(int64_t(full ? 2 * x.nbytes() : x.nbytes()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "le_curve_shared_backward_cpu", [&] {
    using IO = Tile<scalar_t>;
    using T = typename IO::T;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* gap = full ? grad_a_full.mutable_data_ptr<scalar_t>() : nullptr;
    T* gap_math = full ? nullptr : grad_a_full.mutable_data_ptr<T>();
    for_each_map_run<scalar_t>(a, B * kChannels, H, W, grid, [&](int64_t plane, int64_t p, int64_t n,
                                                                 const T* amap) {
      T xb[kTile], gb[kTile], gxb[kTile], gab[kTile];
      const int64_t off = plane * H * W + p;
      T* gx = IO::out(gxp + off, gxb, stream);
      T* ga = full ? IO::out(gap + off, gab, stream) : gap_math + off;
      run(IO::in(xp + off, xb, n), amap, IO::in(gp + off, gb, n), gx, ga, n);
      IO::flush(gxp + off, gx, n, stream);
      if (full) IO::flush(gap + off, ga, n, stream);
    });
  });
  if (full) return {grad_x, grad_a_full};
  // The grid's pixels outside the image contribute nothing; then the adjoint of the bilinear upsampling
  // (deterministic on CPU: one thread per plane), unless the map has the grid's size.
  if (grid.h != H || grid.w != W) grad_a_full = at::constant_pad_nd(grad_a_full, {0, grid.w - W, 0, grid.h - H});
  if (a.size(2) == grid.h && a.size(3) == grid.w) return {grad_x, grad_a_full.to(a.scalar_type())};
  at::Tensor grad_a = at::upsample_bilinear2d_backward(grad_a_full, {grid.h, grid.w}, a.sizes(),
                                                       /*align_corners=*/true, std::nullopt, std::nullopt);
  return {grad_x, grad_a.to(a.scalar_type())};
}

}  // namespace
}  // namespace le_curve
}  // namespace lowlight_fast

TORCH_LIBRARY_IMPL(lowlight_fast, CPU, m) {
  using namespace lowlight_fast::le_curve;
  m.impl("le_curve", &le_curve_cpu);
  m.impl("le_curve_backward", &le_curve_backward_cpu);
  m.impl("le_curve_shared", &le_curve_shared_cpu);
  m.impl("le_curve_shared_backward", &le_curve_shared_backward_cpu);
}
