// conv3x3_nhwc: a 3x3 convolution (stride 1, zero padding 1) of channels-last images by Winograd's
// minimal filtering F(4x4, 3x3), with bias, optional ReLU, and an input that may be the channel
// concatenation of two tensors (read in place: Zero-DCE's layers 5-7 read cat(a, b)); the activation
// (none, ReLU, tanh) is applied as each result is written. For up to 4 input channels from one tensor
// it sums directly instead (run_direct below).
//
//   y[n, h, w, o] = act(bias[o] + sum_{c, i, j} x[n, h+i-1, w+j-1, c] weight[o, c, i, j])
//
// Each 4x4 block of outputs ("tile") reads a 6x6 patch d of every input channel. With the filter
// transformed once, U = G g G^T (6x6 per (c, o)), the tile is Y = A^T [sum_c (B^T d B) .* U] A
// (Lavin and Gray's matrices, interpolation points 0, +-1, +-2): the 9 multiply-adds per output and
// (input, output) channel pair of a direct convolution become 2.25 (36 per 16 outputs), done as 36
// matrix products (tiles x Cin) @ (Cin x Cout), one per position of the 6x6 transformed tile
// (gemm_rows: register-blocked, the same arithmetic for every tile). A task takes a run of tiles
// along one tile row; its transformed inputs V (36 x tiles x Cin) and products M (36 x tiles x Cout)
// are sized to stay in L2, so memory traffic is the input read 1.5 times (tile rows overlap by 2 of
// 6 image rows) and the output written once: bytes per output pixel ~ 6 Cin + 4 Cout.
//
// The transforms run in float32 (float64 for float64 tensors); F(4x4, 3x3)'s transforms scale values
// by up to 8 and back, so the result's rounding error is a few times a direct convolution's
// (tests/ops/test_conv3x3.py; on photographs: benchmarks/RESULTS.md).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/smooth_loss.h"
#include "cpu/alloc.h"
#include "cpu/dispatch.h"
#include "cpu/simd.h"

namespace lowlight_fast {
namespace {

using at::Tensor;

// Channels transformed at once (a stack array per patch value: 16 x kCB scalars).
constexpr int64_t kCB = 16;

constexpr int kTile = 4;           // outputs per tile side
constexpr int kPatch = kTile + 2;  // inputs per patch side
constexpr int kPos = kPatch * kPatch;

// G applied to one column of 3 filter taps: 6 values (G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6;
// 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]).
template <typename T>
void filter_1d(T g0, T g1, T g2, T* u) {
  u[0] = g0 / T(4);
  u[1] = -(g0 + g1 + g2) / T(6);
  u[2] = -(g0 - g1 + g2) / T(6);
  u[3] = g0 / T(24) + g1 / T(12) + g2 / T(6);
  u[4] = g0 / T(24) - g1 / T(12) + g2 / T(6);
  u[5] = g2;
}

// The filter transform U[k = 6 i + j][c][o] = (G g[o, c] G^T)[i, j].
template <typename T>
Tensor transform_weight(const Tensor& weight) {
  const int64_t cout = weight.size(0), cin = weight.size(1);
  Tensor w = weight.contiguous();
  Tensor u = at::empty({kPos, cin, cout}, weight.options());
  const T* g = w.data_ptr<T>();
  T* up = u.data_ptr<T>();
  for (int64_t o = 0; o < cout; ++o) {
    for (int64_t c = 0; c < cin; ++c) {
      const T* k = g + (o * cin + c) * 9;
      T t[3][kPatch];  // (G g^T)^T: for each filter row, G applied along its columns
      for (int r = 0; r < 3; ++r) filter_1d(k[3 * r], k[3 * r + 1], k[3 * r + 2], t[r]);
      for (int j = 0; j < kPatch; ++j) {
        T v[kPatch];
        filter_1d(t[0][j], t[1][j], t[2][j], v);
        for (int i = 0; i < kPatch; ++i) up[((i * kPatch + j) * cin + c) * cout + o] = v[i];
      }
    }
  }
  return u;
}

// One tile row's patch rows: pointers to image rows 4 ty - 1 .. 4 ty + 4 (nullptr outside the image).
template <typename T>
struct PatchRows {
  const T* row[kPatch];
};

// B^T applied to 6 values (B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0;
// 0 2 -1 -2 1 0; 0 4 0 -5 0 1]), as sums that share their terms.
#define LLF_BT(d0, d1, d2, d3, d4, d5, v0, v1, v2, v3, v4, v5) \
  do {                                                          \
    const T p_ = d4 - T(4) * d2, q_ = d3 - T(4) * d1;           \
    const T r_ = d4 - d2, s_ = T(2) * (d3 - d1);                \
    v0 = T(4) * d0 - T(5) * d2 + d4;                            \
    v1 = p_ + q_;                                               \
    v2 = p_ - q_;                                               \
    v3 = r_ + s_;                                               \
    v4 = r_ - s_;                                               \
    v5 = T(4) * d1 - T(5) * d3 + d5;                            \
  } while (0)

// V[k][t][c] for c in [0, nc), nc <= kCB, of tile t whose 6x6 patch has the pixels src[i][j] (each
// `nc` channel values; a zero buffer outside the image): B^T d B, the columns first (per patch row),
// then the rows. Full chunks (nc == kCB) compile to straight vector code; a shorter tail is the same
// loop with a variable trip count.
template <typename T, bool kFull>
LOWLIGHT_FAST_INLINE void input_transform(const T* const src[kPatch][kPatch], int64_t nc, T* vt,
                                          int64_t v_k_stride) {
  const int64_t n = kFull ? kCB : nc;
  T f[kPatch][kPatch][kCB];
  for (int i = 0; i < kPatch; ++i) {
    const T* const* r = src[i];
    LOWLIGHT_FAST_SIMD
    for (int64_t c = 0; c < n; ++c) {
      LLF_BT(r[0][c], r[1][c], r[2][c], r[3][c], r[4][c], r[5][c], f[i][0][c], f[i][1][c], f[i][2][c],
             f[i][3][c], f[i][4][c], f[i][5][c]);
    }
  }
  for (int j = 0; j < kPatch; ++j) {
    T* v[kPatch];
    for (int i = 0; i < kPatch; ++i) v[i] = vt + (i * kPatch + j) * v_k_stride;
    LOWLIGHT_FAST_SIMD
    for (int64_t c = 0; c < n; ++c) {
      LLF_BT(f[0][j][c], f[1][j][c], f[2][j][c], f[3][j][c], f[4][j][c], f[5][j][c], v[0][c], v[1][c], v[2][c],
             v[3][c], v[4][c], v[5][c]);
    }
  }
}
#undef LLF_BT

// All channels of one source (`channels` per pixel, rows as given) for tile t, into V at vt.
template <typename T>
LOWLIGHT_FAST_INLINE void input_tile(const PatchRows<T>& rows, const T* zeros, int64_t x0, int64_t width,
                                     int64_t channels, T* vt, int64_t v_k_stride) {
  const T* px[kPatch][kPatch];
  for (int i = 0; i < kPatch; ++i)
    for (int j = 0; j < kPatch; ++j) {
      const int64_t x = x0 + j;
      px[i][j] = rows.row[i] != nullptr && x >= 0 && x < width ? rows.row[i] + x * channels : zeros;
    }
  int64_t c0 = 0;
  for (; c0 + kCB <= channels; c0 += kCB) {
    const T* src[kPatch][kPatch];
    for (int i = 0; i < kPatch; ++i)
      for (int j = 0; j < kPatch; ++j) src[i][j] = px[i][j] + (px[i][j] == zeros ? 0 : c0);
    input_transform<T, true>(src, kCB, vt + c0, v_k_stride);
  }
  if (c0 < channels) {
    const T* src[kPatch][kPatch];
    for (int i = 0; i < kPatch; ++i)
      for (int j = 0; j < kPatch; ++j) src[i][j] = px[i][j] + (px[i][j] == zeros ? 0 : c0);
    input_transform<T, false>(src, channels - c0, vt + c0, v_k_stride);
  }
}

enum Activation : int { kNone = 0, kRelu = 1, kTanh = 2 };

// tanh(v) = sign(v) (1 - e) / (1 + e), e = exp(-2 |v|) <= 1: the same instructions for every element
// (torch.tanh's vector and scalar code differ by an ulp, and which elements take which depends on how
// its loop is split, so its results can change from call to call); within 1e-7 of tanh.
template <typename T>
LOWLIGHT_FAST_INLINE T tanh_of(T v) {
  const T e = smooth::exp_nonpositive(T(-2) * std::fabs(v));
  return std::copysign((T(1) - e) / (T(1) + e), v);
}

struct Geometry {
  int64_t height, width, c1, c2, cout, tiles_x, tiles_y, block, blocks_x;
  int activation;  // kNone, kRelu, kTanh
};

// All tiles of tasks [t0, t1) (a task: image n, tile row ty, run bx of `block` tiles).
template <typename T>
LOWLIGHT_FAST_INLINE void input_block(const Geometry* g, const T* x1, const T* x2, const T* zeros, int64_t n,
                                      int64_t ty, int64_t tx0, int64_t ntiles, T* v) {
  const int64_t cin = g->c1 + g->c2;
  const int64_t k_stride = g->block * cin;  // V[k] holds `block` tiles of cin values
  PatchRows<T> r1, r2;
  for (int i = 0; i < kPatch; ++i) {
    const int64_t y = kTile * ty - 1 + i;
    const bool in = y >= 0 && y < g->height;
    r1.row[i] = in ? x1 + ((n * g->height + y) * g->width) * g->c1 : nullptr;
    r2.row[i] = in && x2 != nullptr ? x2 + ((n * g->height + y) * g->width) * g->c2 : nullptr;
  }
  for (int64_t t = 0; t < ntiles; ++t) {
    const int64_t x0 = kTile * (tx0 + t) - 1;
    T* vt = v + t * cin;
    input_tile(r1, zeros, x0, g->width, g->c1, vt, k_stride);
    if (x2 != nullptr) input_tile(r2, zeros, x0, g->width, g->c2, vt + g->c1, k_stride);
  }
}

// A^T applied to 6 values (A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]).
#define LLF_AT(m0, m1, m2, m3, m4, m5, y0, y1, y2, y3) \
  do {                                                  \
    const T a_ = m1 + m2, b_ = m1 - m2;                 \
    const T c_ = m3 + m4, d_ = m3 - m4;                 \
    y0 = m0 + a_ + c_;                                  \
    y1 = b_ + T(2) * d_;                                \
    y2 = a_ + T(4) * c_;                                \
    y3 = b_ + T(8) * d_ + m5;                           \
  } while (0)

// dst[c] = act(o[c] + bias[c]), c < nc.
template <typename T, int kAct>
LOWLIGHT_FAST_INLINE void store_outputs(const T* o, const T* bias, int64_t nc, T* dst) {
  LOWLIGHT_FAST_SIMD
  for (int64_t c = 0; c < nc; ++c) {
    T v = o[c] + bias[c];
    if constexpr (kAct == kRelu) v = v > T(0) ? v : T(0);
    if constexpr (kAct == kTanh) v = tanh_of(v);
    dst[c] = v;
  }
}

// Y = act(A^T m A + bias) for the tiles of one run, into y (rows and columns past the image's end
// are not written).
template <typename T>
LOWLIGHT_FAST_INLINE void output_block(const Geometry* g, const T* m, const T* bias, int64_t n, int64_t ty,
                                       int64_t tx0, int64_t ntiles, T* y) {
  const int64_t co = g->cout;
  const int64_t k_stride = g->block * co;
  const int64_t y0 = kTile * ty;
  const int rows = int(std::min<int64_t>(kTile, g->height - y0));
  T* out = y + ((n * g->height + y0) * g->width) * co;
  const int act = g->activation;
  for (int64_t t = 0; t < ntiles; ++t) {
    const T* mt = m + t * co;
    const int64_t x = kTile * (tx0 + t);
    const int cols = int(std::min<int64_t>(kTile, g->width - x));
    for (int64_t c0 = 0; c0 < co; c0 += kCB) {
      const int64_t nc = std::min(kCB, co - c0);
      T s[kTile][kPatch][kCB];  // A^T m: 4 x 6
      for (int j = 0; j < kPatch; ++j) {
        const T* a[kPatch];
        for (int i = 0; i < kPatch; ++i) a[i] = mt + (i * kPatch + j) * k_stride + c0;
        LOWLIGHT_FAST_SIMD
        for (int64_t c = 0; c < nc; ++c) {
          LLF_AT(a[0][c], a[1][c], a[2][c], a[3][c], a[4][c], a[5][c], s[0][j][c], s[1][j][c], s[2][j][c],
                 s[3][j][c]);
        }
      }
      for (int r = 0; r < rows; ++r) {
        T* d = out + (r * g->width + x) * co + c0;
        T o[kTile][kCB];
        LOWLIGHT_FAST_SIMD
        for (int64_t c = 0; c < nc; ++c) {
          LLF_AT(s[r][0][c], s[r][1][c], s[r][2][c], s[r][3][c], s[r][4][c], s[r][5][c], o[0][c], o[1][c],
                 o[2][c], o[3][c]);
        }
        for (int q = 0; q < cols; ++q) {
          // one loop per activation: a tanh under a run-time test is a conditional division, which
          // the AVX2 copy (no masked arithmetic) left scalar
          if (act == kTanh)
            store_outputs<T, kTanh>(o[q], bias + c0, nc, d + q * co);
          else if (act == kRelu)
            store_outputs<T, kRelu>(o[q], bias + c0, nc, d + q * co);
          else
            store_outputs<T, kNone>(o[q], bias + c0, nc, d + q * co);
        }
      }
    }
  }
}
#undef LLF_AT

// M = V @ U for one of the 36 positions: (ntiles x cin) @ (cin x cout), rows of kRows tiles and
// kCB output channels held in registers. Every product is summed over c in increasing order with
// the same instructions whatever the row's place in the run or the run's length (a tail of rows is
// the same loop with fewer rows), so a pixel's value does not depend on how the image is split into
// runs or tiles (tiled enhancement gives the whole image's pixels: tests/cli/test_tiling.py).
// kW output channels per register block (16, 8, or the last few), R rows of tiles.
// kLanes: floats per vector register of the dispatch copy (16, 8; 0: the array loops only); a float
// block of one to three vectors per row sums in vector registers (block_sums, the same results).
template <typename T, int R, int kW, int kLanes = 0>
LOWLIGHT_FAST_INLINE void gemm_tile(const T* v, const T* u, T* m, int64_t cin, int64_t cout, int64_t o0, int64_t no) {
  if constexpr (std::is_same_v<T, float> && kHasFloatVectors && kLanes > 0 &&
                (kW == kLanes || kW == 2 * kLanes || kW == 3 * kLanes)) {
    return block_sums<R, kW, kLanes, false>(v, cin, 1, u + o0, cout, cin, m + o0, cout);
  }
  const int64_t n = kW > 0 ? kW : no;
  constexpr int64_t kA = kW > 0 ? kW : 8;
  T acc[R][kA];
  for (int r = 0; r < R; ++r) {
    LOWLIGHT_FAST_SIMD
    for (int64_t j = 0; j < kA; ++j) acc[r][j] = T(0);
  }
  for (int64_t c = 0; c < cin; ++c) {
    const T* ur = u + c * cout + o0;
    for (int r = 0; r < R; ++r) {
      const T a = v[r * cin + c];
      LOWLIGHT_FAST_SIMD
      for (int64_t j = 0; j < n; ++j) acc[r][j] += a * ur[j];
    }
  }
  for (int r = 0; r < R; ++r) {
    T* mr = m + r * cout + o0;
    LOWLIGHT_FAST_SIMD
    for (int64_t j = 0; j < n; ++j) mr[j] = acc[r][j];
  }
}

template <typename T, int R, int kLanes>
LOWLIGHT_FAST_INLINE void gemm_rows(const T* v, const T* u, T* m, int64_t cin, int64_t cout) {
  int64_t o0 = 0;
  for (; o0 + 16 <= cout; o0 += 16) gemm_tile<T, R, 16, kLanes>(v, u, m, cin, cout, o0, 16);
  for (; o0 + 8 <= cout; o0 += 8) gemm_tile<T, R, 8, kLanes == 16 ? 8 : kLanes>(v, u, m, cin, cout, o0, 8);
  if (o0 < cout) gemm_tile<T, R, 0>(v, u, m, cin, cout, o0, cout - o0);
}

// kRows: rows per register block; 12 x 16 floats fill 12 of AVX-512's 32 registers, 6 x 16 fill 12
// of AVX2's 16 (the copy for each path is chosen in gemm_dispatch).
template <typename T, int kRows, int kLanes>
LOWLIGHT_FAST_INLINE void gemm_block_run(const Geometry* g, const T* v, const T* u, int64_t ntiles, T* m) {
  const int64_t cin = g->c1 + g->c2, cout = g->cout;
  for (int k = 0; k < kPos; ++k) {
    const T* vk = v + k * g->block * cin;
    const T* uk = u + k * cin * cout;
    T* mk = m + k * g->block * cout;
    int64_t t = 0;
    if constexpr (std::is_same_v<T, float>) {
      if (cout == 24) {  // Zero-DCE's layer 7: the 24 channels in one block (a 16 + 8 split leaves the
                         // 8-wide pass with half the sums for the same broadcasts)
        constexpr int kR = kRows * 2 / 3;
        for (; t + kR <= ntiles; t += kR)
          gemm_tile<T, kR, 24, kLanes>(vk + t * cin, uk, mk + t * cout, cin, cout, 0, 24);
        for (; t < ntiles; ++t) gemm_tile<T, 1, 24, kLanes>(vk + t * cin, uk, mk + t * cout, cin, cout, 0, 24);
        continue;
      }
    }
    for (; t + kRows <= ntiles; t += kRows) gemm_rows<T, kRows, kLanes>(vk + t * cin, uk, mk + t * cout, cin, cout);
    for (; t < ntiles; ++t) gemm_rows<T, 1, kLanes>(vk + t * cin, uk, mk + t * cout, cin, cout);
  }
}

template <typename T>
LOWLIGHT_FAST_INLINE void input_block_run(const Geometry* g, const T* x1, const T* x2, const T* zeros, int64_t n,
                                          int64_t ty, int64_t tx0, int64_t ntiles, T* v) {
  input_block(g, x1, x2, zeros, n, ty, tx0, ntiles, v);
}
template <typename T>
LOWLIGHT_FAST_INLINE void output_block_run(const Geometry* g, const T* m, const T* bias, int64_t n, int64_t ty,
                                           int64_t tx0, int64_t ntiles, T* y) {
  output_block(g, m, bias, n, ty, tx0, ntiles, y);
}

LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", input_f32, input_block_run<float>)
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", output_f32, output_block_run<float>)
#define LLF_GEMM(T, R, L) gemm_block_run<T, R, L>
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", gemm12_f32, LLF_GEMM(float, 12, 16))
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", gemm6_f32, LLF_GEMM(float, 6, 8))
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", input_f64, input_block_run<double>)
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", gemm6_f64, LLF_GEMM(double, 6, 0))
#undef LLF_GEMM
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", output_f64, output_block_run<double>)

template <typename T>
void input_dispatch(const Geometry* g, const T* x1, const T* x2, const T* zeros, int64_t n, int64_t ty, int64_t tx0,
                    int64_t nt, T* v) {
  if constexpr (std::is_same_v<T, float>)
    input_f32(g, x1, x2, zeros, n, ty, tx0, nt, v);
  else
    input_f64(g, x1, x2, zeros, n, ty, tx0, nt, v);
}
template <typename T>
void gemm_dispatch(const Geometry* g, const T* v, const T* u, int64_t nt, T* m) {
  if constexpr (std::is_same_v<T, float>) {
    if (cpu::chosen_path() == cpu::Path::kAvx512)
      gemm12_f32(g, v, u, nt, m);
    else
      gemm6_f32(g, v, u, nt, m);
  } else {
    gemm6_f64(g, v, u, nt, m);
  }
}
template <typename T>
void output_dispatch(const Geometry* g, const T* m, const T* b, int64_t n, int64_t ty, int64_t tx0, int64_t nt, T* y) {
  if constexpr (std::is_same_v<T, float>)
    output_f32(g, m, b, n, ty, tx0, nt, y);
  else
    output_f64(g, m, b, n, ty, tx0, nt, y);
}

// Tiles per task: V and M together about 512 KiB (a private L2 holds them with room to spare).
int64_t block_tiles(int64_t cin, int64_t cout, int64_t element_size) {
  const int64_t per_tile = kPos * (cin + cout) * element_size;
  return std::clamp<int64_t>((int64_t(512) << 10) / per_tile, 8, 512);
}

void check_image(const Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, "conv3x3_nhwc: ", name, " must be (N, C, H, W), got ", x.dim(), " dimensions");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "conv3x3_nhwc: ", name, " must be float32 or float64, got ", x.scalar_type());
}

template <typename T>
void run(const Geometry& g, const Tensor& x1, const Tensor& x2, const Tensor& u, const Tensor& bias, Tensor& y,
         int64_t batch) {
  const int64_t cin = g.c1 + g.c2;
  const int64_t tasks = batch * g.tiles_y * g.blocks_x;
  const T* x1p = x1.data_ptr<T>();
  const T* x2p = x2.defined() ? x2.data_ptr<T>() : nullptr;
  const T* bp = bias.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    const auto opts = u.options();
    Tensor v = at::empty({kPos, g.block, cin}, opts);
    Tensor m = at::empty({kPos, g.block, g.cout}, opts);
    Tensor zeros = at::zeros({std::max(g.c1, g.c2)}, opts);  // the padding's pixels
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t bx = task % g.blocks_x;
      const int64_t ty = (task / g.blocks_x) % g.tiles_y;
      const int64_t n = task / (g.blocks_x * g.tiles_y);
      const int64_t tx0 = bx * g.block;
      const int64_t nt = std::min(g.block, g.tiles_x - tx0);
      input_dispatch<T>(&g, x1p, x2p, zeros.data_ptr<T>(), n, ty, tx0, nt, v.data_ptr<T>());
      gemm_dispatch<T>(&g, v.data_ptr<T>(), u.data_ptr<T>(), nt, m.data_ptr<T>());
      output_dispatch<T>(&g, m.data_ptr<T>(), bp, n, ty, tx0, nt, yp);
    }
  });
}

// ---- few input channels: a direct convolution ----------------------------------------------------
//
// With 3 input channels (the first layer of Zero-DCE and SCI's 3-channel layers) Winograd's products
// have a 3-long inner dimension and its transforms cost more than they save. Direct sums instead: an
// output pixel is bias + the 9 taps x Cin input values, each broadcast against a vector of weights
// along the output channels; kP pixels at a time (independent sums). The three input rows an output
// row reads are copied with a zero pixel either side (and zero rows above and below the image), so
// the sums have no bounds tests.

constexpr int64_t kSmallCin = 4;  // input channels up to which conv3x3_nhwc sums directly

// kLanes as in gemm_tile: for one or two float vectors of outputs the sums are vector registers.
template <typename T, int kP, int kO, int kAct, int kLanes = 0>
LOWLIGHT_FAST_INLINE void direct_tile(const T* pad, int64_t prow, int64_t cin, const T* wt, const T* bias,
                                      int64_t cout, int64_t o0, int64_t no, int64_t p, T* yrow) {
  if constexpr (std::is_same_v<T, float> && kHasFloatVectors && kLanes > 0 && (kO == kLanes || kO == 2 * kLanes)) {
    using V = typename FloatVec<kLanes>::type;
    constexpr int kV = kO / kLanes;
    V acc[kP][kV];
    for (int u = 0; u < kP; ++u)
      for (int q = 0; q < kV; ++q) acc[u][q] = V{};
    for (int i = 0; i < 3; ++i) {
      const T* r = pad + i * prow + p * cin;
      const T* wi = wt + i * 3 * cin * cout + o0;
      for (int64_t k = 0; k < 3 * cin; ++k) {
        V w[kV];
        for (int q = 0; q < kV; ++q) __builtin_memcpy(&w[q], wi + k * cout + q * kLanes, sizeof(V));
        for (int u = 0; u < kP; ++u) {
          const T a = r[u * cin + k];
          for (int q = 0; q < kV; ++q) acc[u][q] += a * w[q];
        }
      }
    }
    if constexpr (kAct == kTanh) {  // the scalar tanh of store_outputs
      for (int u = 0; u < kP; ++u) {
        T o[kO];
        for (int q = 0; q < kV; ++q) __builtin_memcpy(o + q * kLanes, &acc[u][q], sizeof(V));
        store_outputs<T, kAct>(o, bias + o0, kO, yrow + (p + u) * cout + o0);
      }
    } else {
      V b[kV];
      for (int q = 0; q < kV; ++q) __builtin_memcpy(&b[q], bias + o0 + q * kLanes, sizeof(V));
      for (int u = 0; u < kP; ++u)
        for (int q = 0; q < kV; ++q) {
          V o = acc[u][q] + b[q];
          if constexpr (kAct == kRelu) o = o > V{} ? o : V{};
          __builtin_memcpy(yrow + (p + u) * cout + o0 + q * kLanes, &o, sizeof(V));
        }
    }
    return;
  }
  constexpr int64_t kA = kO > 0 ? kO : 8;
  const int64_t n = kO > 0 ? kO : no;
  T acc[kP][kA];
  for (int u = 0; u < kP; ++u) {
    LOWLIGHT_FAST_SIMD
    for (int64_t j = 0; j < kA; ++j) acc[u][j] = T(0);
  }
  for (int i = 0; i < 3; ++i) {
    const T* r = pad + i * prow + p * cin;  // padded column p + j is image column p + j - 1
    for (int64_t k = 0; k < 3 * cin; ++k) {  // k = j * cin + c: consecutive in the padded row
      const T* wv = wt + (i * 3 * cin + k) * cout + o0;
      for (int u = 0; u < kP; ++u) {
        const T a = r[u * cin + k];
        LOWLIGHT_FAST_SIMD
        for (int64_t j = 0; j < n; ++j) acc[u][j] += a * wv[j];
      }
    }
  }
  for (int u = 0; u < kP; ++u) store_outputs<T, kAct>(acc[u], bias + o0, n, yrow + (p + u) * cout + o0);
}

// Output channels [base, base + span) of one row: blocks of kO; for kO >= 8 the rest in blocks of 8 and
// a last 1-7 channels whose count is fixed at compile time (a run-time count left the sums on the
// stack). cout: the row's channel count (the stride of y and wt).
template <typename T, int kP, int kO, int kAct, int kLanes>
LOWLIGHT_FAST_INLINE void direct_row_act(const T* pad, int64_t prow, int64_t cin, const T* wt, const T* bias,
                                         int64_t span, int64_t width, T* yrow, int64_t base, int64_t cout) {
  int64_t o0 = base;
  for (; o0 + kO <= base + span; o0 += kO) {
    int64_t p = 0;
    for (; p + kP <= width; p += kP)
      direct_tile<T, kP, kO, kAct, kLanes>(pad, prow, cin, wt, bias, cout, o0, kO, p, yrow);
    for (; p < width; ++p) direct_tile<T, 1, kO, kAct, kLanes>(pad, prow, cin, wt, bias, cout, o0, kO, p, yrow);
  }
  if constexpr (kO >= 8) {
    if constexpr (kO > 8) {
      const int64_t eights = (base + span - o0) / 8 * 8;
      if (eights > 0)
        direct_row_act<T, kP, 8, kAct, kLanes == 16 ? 8 : kLanes>(pad, prow, cin, wt, bias, eights, width, yrow, o0,
                                                                  cout);
      o0 += eights;
    }
    const int64_t rest = base + span - o0;
#define LLF_REST(R) \
  case R:           \
    return direct_row_act<T, kP, R, kAct, 0>(pad, prow, cin, wt, bias, R, width, yrow, o0, cout);
    switch (rest) {
      LLF_REST(1)
      LLF_REST(2)
      LLF_REST(3)
      LLF_REST(4)
      LLF_REST(5)
      LLF_REST(6)
      LLF_REST(7)
      default:
        return;
    }
#undef LLF_REST
  }
}

// Output row h of image n. pad: 3 x prow scratch values, prow = (width + 2) * cin.
template <typename T, int kP, int kO, int kLanes>
LOWLIGHT_FAST_INLINE void direct_row(const Geometry* g, const T* x, const T* wt, const T* bias, int64_t n, int64_t h,
                                     T* pad, T* y) {
  const int64_t width = g->width, cin = g->c1, cout = g->cout, prow = (width + 2) * cin;
  for (int i = 0; i < 3; ++i) {
    T* r = pad + i * prow;
    const int64_t hh = h + i - 1;
    for (int64_t c = 0; c < cin; ++c) r[c] = r[prow - cin + c] = T(0);
    if (hh < 0 || hh >= g->height) {
      for (int64_t k = cin; k < prow - cin; ++k) r[k] = T(0);
    } else {
      std::memcpy(r + cin, x + (n * g->height + hh) * width * cin, sizeof(T) * width * cin);
    }
  }
  T* yrow = y + (n * g->height + h) * width * cout;
  if (g->activation == kTanh)
    direct_row_act<T, kP, kO, kTanh, kLanes>(pad, prow, cin, wt, bias, cout, width, yrow, 0, cout);
  else if (g->activation == kRelu)
    direct_row_act<T, kP, kO, kRelu, kLanes>(pad, prow, cin, wt, bias, cout, width, yrow, 0, cout);
  else
    direct_row_act<T, kP, kO, kNone, kLanes>(pad, prow, cin, wt, bias, cout, width, yrow, 0, cout);
}

// (pixels, output channels per block, floats per vector register of the path that calls it)
#define LLF_DIRECT(T, P, O, L) direct_row<T, P, O, L>
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", direct32_f32, LLF_DIRECT(float, 6, 32, 16))
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", direct16w_f32, LLF_DIRECT(float, 12, 16, 16))
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", direct16_f32, LLF_DIRECT(float, 6, 16, 8))
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", direct8_f64, LLF_DIRECT(double, 6, 8, 0))
#undef LLF_DIRECT

template <typename T>
void run_direct(const Geometry& g, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& y,
                int64_t batch) {
  // weights as wt[(i * 3 + j) * cin + c][o]
  const Tensor wt = weight.permute({2, 3, 1, 0}).contiguous();
  const T* xp = x.data_ptr<T>();
  const T* wp = wt.data_ptr<T>();
  const T* bp = bias.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const bool avx512 = cpu::chosen_path() == cpu::Path::kAvx512, wide = g.cout >= 32 && avx512;
  at::parallel_for(0, batch * g.height, 1, [&](int64_t r0, int64_t r1) {
    std::vector<T> pad(3 * (g.width + 2) * g.c1);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.height, h = r % g.height;
      if constexpr (std::is_same_v<T, float>) {
        if (wide)
          direct32_f32(&g, xp, wp, bp, n, h, pad.data(), yp);
        else if (avx512)
          direct16w_f32(&g, xp, wp, bp, n, h, pad.data(), yp);
        else
          direct16_f32(&g, xp, wp, bp, n, h, pad.data(), yp);
      } else {
        direct8_f64(&g, xp, wp, bp, n, h, pad.data(), yp);
      }
    }
  });
}

// ---- the weight and bias gradients ---------------------------------------------------------------
//
//   dw[o, c, i, j] = sum_{n, h, w} g[n, h, w, o] x[n, h+i-1, w+j-1, c],   db[o] = sum g[n, h, w, o]
//
// for channels-last g and x (zero outside the image): for each of the 9 taps, a product
// (Cin x pixels) @ (pixels x Cout) whose pixel axis is a run of one image row shifted by the tap. A
// register block holds R input channels x kW output channels (the same kernel shape as the forward's
// products, gemm_tile: one x value broadcast against a vector of g) and sums over a segment of a row,
// short enough that its g and its three x rows stay in L1 while the 9 taps and all channel blocks
// read them. Rows are grouped into chunks of a fixed number of pixels, each summed into its own
// partial gradient (in parallel), and the partials are added in chunk order: the result depends on
// the shape only, not on the number of threads.

struct WGradGeometry {
  int64_t height, width, cout, c1, c2;  // x's channels, then x2's
  int64_t segment;                      // pixels per row segment
};

// part[(tap * cin + c) * cout + o] += sum over pixels p of xs[p * xstride + c] * gs[p * cout + o], for
// c in [c0, c0 + R), o in [o0, o0 + n) (kW > 0: n = kW).
// kLanes as in gemm_tile: one or two float vectors per row sum in vector registers (block_sums).
template <typename T, int R, int kW, int kLanes = 0>
LOWLIGHT_FAST_INLINE void wgrad_tile(const T* gs, const T* xs, int64_t xstride, int64_t np, int64_t cout,
                                     int64_t o0, int64_t no, T* part) {
  if constexpr (std::is_same_v<T, float> && kHasFloatVectors && kLanes > 0 && (kW == kLanes || kW == 2 * kLanes)) {
    return block_sums<R, kW, kLanes, true>(xs, 1, xstride, gs + o0, cout, np, part + o0, cout);
  }
  const int64_t n = kW > 0 ? kW : no;
  constexpr int64_t kA = kW > 0 ? kW : 8;
  T acc[R][kA];
  for (int r = 0; r < R; ++r) {
    LOWLIGHT_FAST_SIMD
    for (int64_t j = 0; j < kA; ++j) acc[r][j] = T(0);
  }
  for (int64_t p = 0; p < np; ++p) {
    const T* gp = gs + p * cout + o0;
    const T* xp = xs + p * xstride;
    for (int r = 0; r < R; ++r) {
      const T a = xp[r];
      LOWLIGHT_FAST_SIMD
      for (int64_t j = 0; j < n; ++j) acc[r][j] += a * gp[j];
    }
  }
  for (int r = 0; r < R; ++r) {
    T* d = part + r * cout + o0;
    LOWLIGHT_FAST_SIMD
    for (int64_t j = 0; j < n; ++j) d[j] += acc[r][j];
  }
}

template <typename T, int R, int kLanes>
LOWLIGHT_FAST_INLINE void wgrad_rows(const T* gs, const T* xs, int64_t xstride, int64_t np, int64_t cout, T* part) {
  int64_t o0 = 0;
  for (; o0 + 16 <= cout; o0 += 16) wgrad_tile<T, R, 16, kLanes>(gs, xs, xstride, np, cout, o0, 16, part);
  for (; o0 + 8 <= cout; o0 += 8)
    wgrad_tile<T, R, 8, kLanes == 16 ? 8 : kLanes>(gs, xs, xstride, np, cout, o0, 8, part);
  if (o0 < cout) wgrad_tile<T, R, 0>(gs, xs, xstride, np, cout, o0, cout - o0, part);
}

// One image row of g (image n, row h) into part (9 x cin x cout) and bias part (cout).
template <typename T, int kRows, int kLanes>
LOWLIGHT_FAST_INLINE void wgrad_row_run(const WGradGeometry* g, const T* grad, const T* x1, const T* x2, int64_t n,
                                        int64_t h, T* part, T* bpart) {
  const int64_t width = g->width, cout = g->cout, cin = g->c1 + g->c2;
  const T* grow = grad + (n * g->height + h) * width * cout;
  for (int64_t s0 = 0; s0 < width; s0 += g->segment) {
    const int64_t s1 = std::min(width, s0 + g->segment);
    for (int64_t p = s0; p < s1; ++p) {
      const T* gp = grow + p * cout;
      LOWLIGHT_FAST_SIMD
      for (int64_t o = 0; o < cout; ++o) bpart[o] += gp[o];
    }
    for (int i = 0; i < 3; ++i) {
      const int64_t hh = h + i - 1;
      if (hh < 0 || hh >= g->height) continue;
      for (int j = 0; j < 3; ++j) {
        // output pixels p in [p0, p1) read input column p + j - 1, inside the image
        const int64_t p0 = std::max<int64_t>(s0, 1 - j), p1 = std::min<int64_t>(s1, width + 1 - j);
        if (p0 >= p1) continue;
        T* tap = part + (i * 3 + j) * cin * cout;
        for (int part_k = 0; part_k < 2; ++part_k) {
          const int64_t cp = part_k == 0 ? g->c1 : g->c2;
          if (cp == 0) continue;
          const T* xb = part_k == 0 ? x1 : x2;
          const T* xs = xb + ((n * g->height + hh) * width + (p0 + j - 1)) * cp;
          T* tp = tap + (part_k == 0 ? 0 : g->c1) * cout;
          int64_t c = 0;
          for (; c + kRows <= cp; c += kRows)
            wgrad_rows<T, kRows, kLanes>(grow + p0 * cout, xs + c, cp, p1 - p0, cout, tp + c * cout);
          for (; c + 4 <= cp; c += 4)
            wgrad_rows<T, 4, kLanes>(grow + p0 * cout, xs + c, cp, p1 - p0, cout, tp + c * cout);
          for (; c < cp; ++c) wgrad_rows<T, 1, kLanes>(grow + p0 * cout, xs + c, cp, p1 - p0, cout, tp + c * cout);
        }
      }
    }
  }
}

// For a few output channels (Zero-DCE's and SCI's last layers: 3), vectors along g's channels would be
// mostly empty. There the vector runs along x instead: for output pixel p and filter row i, the taps
// j = 0..2 and all channels, x[n, h+i-1, p-1 .. p+1, :], are 3 Cin consecutive values of one image row
// (channels-last), the same run shifted by Cin for the next pixel; one g value per output channel is
// broadcast against it. acc[o][k] sums g[p, o] x-run[p][k0 + k] over a segment's inner pixels; the two
// border pixels (whose run leaves the image) are summed one tap at a time.
// kU pixels at a time into kU sets of sums (short runs: independent chains of multiply-adds).
template <typename T, int kO, int kV>
LOWLIGHT_FAST_INLINE void wgrad_small_chunk(const T* gs, const T* xs, int64_t cin, int64_t np, int64_t k0, int64_t nk,
                                            T* part, int64_t row, int64_t skip = 0) {
  constexpr int64_t kA = kV > 0 ? kV : 8;
  constexpr int kU = kA > 8 ? 1 : 4;
  const int64_t n = kV > 0 ? kV : nk;
  T acc[kU][kO][kA];
  for (int u = 0; u < kU; ++u)
    for (int o = 0; o < kO; ++o) {
      LOWLIGHT_FAST_SIMD
      for (int64_t k = 0; k < kA; ++k) acc[u][o][k] = T(0);
    }
  int64_t p = 0;
  for (; p + kU <= np; p += kU)
    for (int u = 0; u < kU; ++u) {
      const T* xp = xs + (p + u) * cin + k0;
      const T* gp = gs + (p + u) * kO;
      for (int o = 0; o < kO; ++o) {
        const T a = gp[o];
        LOWLIGHT_FAST_SIMD
        for (int64_t k = 0; k < n; ++k) acc[u][o][k] += a * xp[k];
      }
    }
  for (; p < np; ++p) {
    const T* xp = xs + p * cin + k0;
    const T* gp = gs + p * kO;
    for (int o = 0; o < kO; ++o) {
      const T a = gp[o];
      LOWLIGHT_FAST_SIMD
      for (int64_t k = 0; k < n; ++k) acc[0][o][k] += a * xp[k];
    }
  }
  // run index k0 + k = j * cin + c  ->  part[((row * 3 + j) * cin + c) * kO + o]
  for (int64_t k = skip; k < n; ++k) {
    T* d = part + (row * 3 * cin + k0 + k) * kO;
    for (int o = 0; o < kO; ++o) {
      T sum = acc[0][o][k];
      for (int u = 1; u < kU; ++u) sum += acc[u][o][k];
      d[o] += sum;
    }
  }
}

template <typename T, int kO, int kV>
LOWLIGHT_FAST_INLINE void wgrad_small_row(const WGradGeometry* g, const T* grad, const T* x, int64_t n, int64_t h,
                                          T* part, T* bpart) {
  const int64_t width = g->width, cin = g->c1, run = 3 * cin;
  const T* grow = grad + (n * g->height + h) * width * kO;
  for (int64_t s0 = 0; s0 < width; s0 += g->segment) {
    const int64_t s1 = std::min(width, s0 + g->segment);
    for (int64_t p = s0; p < s1; ++p)
      for (int o = 0; o < kO; ++o) bpart[o] += grow[p * kO + o];
    // inner pixels: p - 1 >= 0 and p + 1 < width
    const int64_t p0 = std::max<int64_t>(s0, 1), p1 = std::min<int64_t>(s1, width - 1);
    for (int i = 0; i < 3; ++i) {
      const int64_t hh = h + i - 1;
      if (hh < 0 || hh >= g->height) continue;
      const T* xrow = x + (n * g->height + hh) * width * cin;
      if (p0 < p1) {
        const T* xs = xrow + (p0 - 1) * cin;
        const T* gs = grow + p0 * kO;
        int64_t k0 = 0;
        if constexpr (kV > 16)
          for (; k0 + kV <= run; k0 += kV) wgrad_small_chunk<T, kO, kV>(gs, xs, cin, p1 - p0, k0, kV, part, i);
        if constexpr (kV > 8)
          for (; k0 + 16 <= run; k0 += 16) wgrad_small_chunk<T, kO, 16>(gs, xs, cin, p1 - p0, k0, 16, part, i);
        for (; k0 + 8 <= run; k0 += 8) wgrad_small_chunk<T, kO, 8>(gs, xs, cin, p1 - p0, k0, 8, part, i);
        if (k0 < run && run >= 8)  // the last 8 of the run, adding only the values past k0 (vectorised)
          wgrad_small_chunk<T, kO, 8>(gs, xs, cin, p1 - p0, run - 8, 8, part, i, k0 - (run - 8));
        else if (k0 < run)
          wgrad_small_chunk<T, kO, 0>(gs, xs, cin, p1 - p0, k0, run - k0, part, i);
      }
      for (int64_t p = s0; p < s1; ++p) {  // the border pixels, tap by tap
        if (p >= p0 && p < p1) continue;
        for (int j = 0; j < 3; ++j) {
          const int64_t col = p + j - 1;
          if (col < 0 || col >= width) continue;
          const T* xp = xrow + col * cin;
          T* d = part + (i * 3 + j) * cin * kO;
          for (int64_t c = 0; c < cin; ++c)
            for (int o = 0; o < kO; ++o) d[c * kO + o] += grow[p * kO + o] * xp[c];
        }
      }
    }
  }
}

template <typename T, int kV>
LOWLIGHT_FAST_INLINE void wgrad_small_run(const WGradGeometry* g, const T* grad, const T* x1, const T* /*x2*/,
                                          int64_t n, int64_t h, T* part, T* bpart) {
  switch (g->cout) {
    case 1:
      return wgrad_small_row<T, 1, kV>(g, grad, x1, n, h, part, bpart);
    case 2:
      return wgrad_small_row<T, 2, kV>(g, grad, x1, n, h, part, bpart);
    case 3:
      return wgrad_small_row<T, 3, kV>(g, grad, x1, n, h, part, bpart);
    default:
      return wgrad_small_row<T, 4, kV>(g, grad, x1, n, h, part, bpart);
  }
}

// Output channels up to which (with one input tensor) wgrad_small_run sums the weight gradient.
constexpr int64_t kSmallCout = 4;

#define LLF_WGRAD_SMALL(T, V) wgrad_small_run<T, V>
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", wgrad_small32_f32, LLF_WGRAD_SMALL(float, 32))
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", wgrad_small16_f32, LLF_WGRAD_SMALL(float, 16))
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", wgrad_small8_f64, LLF_WGRAD_SMALL(double, 8))
#undef LLF_WGRAD_SMALL

#define LLF_WGRAD(T, R, L) wgrad_row_run<T, R, L>
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", wgrad12_f32, LLF_WGRAD(float, 12, 16))
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", wgrad6_f32, LLF_WGRAD(float, 6, 8))
LOWLIGHT_FAST_CPU_DISPATCH("conv3x3_nhwc", wgrad6_f64, LLF_WGRAD(double, 6, 0))
#undef LLF_WGRAD

template <typename T>
void wgrad_dispatch(const WGradGeometry* g, const T* grad, const T* x1, const T* x2, int64_t n, int64_t h, T* part,
                    T* bpart) {
  if (g->cout <= kSmallCout && g->c2 == 0) {
    if constexpr (std::is_same_v<T, float>) {
      if (cpu::chosen_path() == cpu::Path::kAvx512)
        wgrad_small32_f32(g, grad, x1, x2, n, h, part, bpart);
      else
        wgrad_small16_f32(g, grad, x1, x2, n, h, part, bpart);
    } else {
      wgrad_small8_f64(g, grad, x1, x2, n, h, part, bpart);
    }
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (cpu::chosen_path() == cpu::Path::kAvx512)
      wgrad12_f32(g, grad, x1, x2, n, h, part, bpart);
    else
      wgrad6_f32(g, grad, x1, x2, n, h, part, bpart);
  } else {
    wgrad6_f64(g, grad, x1, x2, n, h, part, bpart);
  }
}

template <typename T>
std::tuple<Tensor, Tensor> wgrad_run(const WGradGeometry& g, const Tensor& grad, const Tensor& x1, const Tensor& x2,
                                     int64_t batch) {
  const int64_t cin = g.c1 + g.c2, cout = g.cout;
  const int64_t rows = batch * g.height;
  // rows per chunk: about 16384 pixels, and at most 256 chunks
  const int64_t per = std::max<int64_t>({1, (int64_t(1) << 14) / std::max<int64_t>(g.width, 1), (rows + 255) / 256});
  const int64_t chunks = (rows + per - 1) / per;
  const int64_t psize = 9 * cin * cout + cout;
  Tensor parts = at::zeros({chunks, psize}, grad.options());
  const T* gp = grad.data_ptr<T>();
  const T* x1p = x1.data_ptr<T>();
  const T* x2p = x2.defined() ? x2.data_ptr<T>() : nullptr;
  T* pp = parts.data_ptr<T>();
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      T* part = pp + k * psize;
      for (int64_t r = k * per; r < std::min(rows, (k + 1) * per); ++r)
        wgrad_dispatch<T>(&g, gp, x1p, x2p, r / g.height, r % g.height, part, part + 9 * cin * cout);
    }
  });
  // the chunks' sum in chunk order, then (tap, c, o) -> (o, c, tap)
  Tensor total = parts[0].clone();
  for (int64_t k = 1; k < chunks; ++k) total.add_(parts[k]);
  Tensor dw = total.narrow(0, 0, 9 * cin * cout).view({3, 3, cin, cout}).permute({3, 2, 0, 1}).contiguous();
  Tensor db = total.narrow(0, 9 * cin * cout, cout).clone();
  return {dw, db};
}

std::tuple<Tensor, Tensor> conv3x3_nhwc_weight_grad_cpu(const Tensor& grad, const Tensor& x,
                                                        const std::optional<Tensor>& x2_opt) {
  check_image(grad, "grad");
  check_image(x, "x");
  const Tensor x2 = x2_opt.has_value() ? *x2_opt : Tensor();
  if (x2.defined()) check_image(x2, "x2");
  for (const Tensor* t : {&x, &x2}) {
    if (!t->defined()) continue;
    TORCH_CHECK(t->scalar_type() == grad.scalar_type(), "conv3x3_nhwc_weight_grad: inputs must have grad's dtype ",
                grad.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->size(0) == grad.size(0) && t->size(2) == grad.size(2) && t->size(3) == grad.size(3),
                "conv3x3_nhwc_weight_grad: inputs must have grad's batch and size ", grad.sizes(),
                " apart from channels, got ", t->sizes());
  }
  const auto cl = at::MemoryFormat::ChannelsLast;
  WGradGeometry g;
  g.height = grad.size(2);
  g.width = grad.size(3);
  g.cout = grad.size(1);
  g.c1 = x.size(1);
  g.c2 = x2.defined() ? x2.size(1) : 0;
  const int64_t cin = g.c1 + g.c2;
  // a segment's g (cout values a pixel) and its 3 rows of x in about 16 KiB
  g.segment = std::clamp<int64_t>((int64_t(16) << 10) / ((3 * cin + g.cout) * grad.element_size()), 8, 256);
  if (grad.numel() == 0 || cin == 0)
    return {at::zeros({g.cout, cin, 3, 3}, grad.options()), at::zeros({g.cout}, grad.options())};
  Tensor gc = grad.contiguous(cl), x1c = x.contiguous(cl);
  Tensor x2c = x2.defined() ? x2.contiguous(cl) : Tensor();
  if (grad.scalar_type() == at::kFloat) return wgrad_run<float>(g, gc, x1c, x2c, grad.size(0));
  return wgrad_run<double>(g, gc, x1c, x2c, grad.size(0));
}

Tensor conv3x3_nhwc_cpu(const Tensor& x, const std::optional<Tensor>& x2_opt, const Tensor& weight,
                        const std::optional<Tensor>& bias_opt, int64_t activation) {
  check_image(x, "x");
  const Tensor x2 = x2_opt.has_value() ? *x2_opt : Tensor();
  if (x2.defined()) {
    check_image(x2, "x2");
    TORCH_CHECK(x2.scalar_type() == x.scalar_type(), "conv3x3_nhwc: x2 must have x's dtype ", x.scalar_type(),
                ", got ", x2.scalar_type());
    TORCH_CHECK(x2.size(0) == x.size(0) && x2.size(2) == x.size(2) && x2.size(3) == x.size(3),
                "conv3x3_nhwc: x2 must have x's batch and size ", x.sizes(), " apart from channels, got ", x2.sizes());
  }
  const int64_t c1 = x.size(1), c2 = x2.defined() ? x2.size(1) : 0;
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 && weight.size(1) == c1 + c2,
              "conv3x3_nhwc: weight must be (Cout, ", c1 + c2, ", 3, 3) for ", c1 + c2, " input channels, got ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "conv3x3_nhwc: weight must have x's dtype ",
              x.scalar_type(), ", got ", weight.scalar_type());
  const int64_t cout = weight.size(0);
  Tensor bias = bias_opt.has_value() ? bias_opt->contiguous() : Tensor();
  if (!bias.defined())
    bias = at::zeros({cout}, weight.options());  // one output loop for both (without a bias, the
                                                 // compiler left the AVX-512 copy's loop scalar)
  else
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == cout && bias.scalar_type() == x.scalar_type(),
                "conv3x3_nhwc: bias must be (", cout, ") of x's dtype, got ", bias.sizes(), " ", bias.scalar_type());
  TORCH_CHECK(cout > 0 && c1 > 0, "conv3x3_nhwc: channels must not be empty");
  const auto cl = at::MemoryFormat::ChannelsLast;
  const int64_t batch = x.size(0), height = x.size(2), width = x.size(3);
  // channels-last (N, C, H, W), written in full: from the output pool when big (cpu/alloc.h)
  Tensor y = empty_output({batch, height, width, cout}, x.options()).permute({0, 3, 1, 2});
  if (y.numel() == 0) return y;
  Tensor x1c = x.contiguous(cl);
  Tensor x2c = x2.defined() ? x2.contiguous(cl) : Tensor();
  Geometry g;
  g.height = height;
  g.width = width;
  g.c1 = c1;
  g.c2 = c2;
  g.cout = cout;
  g.tiles_x = (width + kTile - 1) / kTile;
  g.tiles_y = (height + kTile - 1) / kTile;
  g.block = std::min(g.tiles_x, block_tiles(c1 + c2, cout, x.element_size()));
  g.blocks_x = (g.tiles_x + g.block - 1) / g.block;
  TORCH_CHECK(activation >= kNone && activation <= kTanh,
              "conv3x3_nhwc: activation must be 0 (none), 1 (ReLU) or 2 (tanh), got ", activation);
  g.activation = int(activation);
  if (c2 == 0 && c1 <= kSmallCin) {  // direct sums (few input channels)
    if (x.scalar_type() == at::kFloat)
      run_direct<float>(g, x1c, weight, bias, y, batch);
    else
      run_direct<double>(g, x1c, weight, bias, y, batch);
    return y;
  }
  if (x.scalar_type() == at::kFloat) {
    run<float>(g, x1c, x2c, transform_weight<float>(weight), bias, y, batch);
  } else {
    run<double>(g, x1c, x2c, transform_weight<double>(weight), bias, y, batch);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(lowlight_fast, CPU, m) {
  m.impl("conv3x3_nhwc", &conv3x3_nhwc_cpu);
  m.impl("conv3x3_nhwc_weight_grad", &conv3x3_nhwc_weight_grad_cpu);
}

}  // namespace lowlight_fast
