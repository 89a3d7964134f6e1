// quantize_hwc and its inverse dequantize_hwc (below), the ends of the image and video paths.
// quantize_hwc: float samples in [0, 1] -> 8- or 16-bit integers, interleaved (B, H, W, C), for writing
// images and video frames. q = floor(clamp(x, 0, 1) * peak + 0.5) in float32 (float64 input is cast to
// float32 first), peak = 255 or 65535: the arithmetic of lowlight_fast.io.quantize (and torchvision's
// save_image), pixel for pixel. NaN -> 0. Bytes moved per sample: 4 (or 2) read, 1 (or 2) written.
//
// Single-threaded on purpose: it runs in the image and video writer threads beside the model, whose
// intra-op threads hold the cores. Planar rows (x.stride(3) == 1) are quantized per channel into a
// row buffer and interleaved; channels-last input is one flat loop per row. This file is compiled for
// the baseline instruction set only (no FMA): x * peak + 0.5 must round twice, as the reference does.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/checks.h"

namespace lowlight_fast {
namespace quantize {
namespace {

template <typename Q>
inline Q level(float v, float peak) {
  v = v > 0.0f ? v : 0.0f;  // NaN -> 0
  v = v < 1.0f ? v : 1.0f;
  const float scaled = v * peak;
  return static_cast<Q>(static_cast<int32_t>(scaled + 0.5f));  // >= 0.5: truncation is floor
}

template <typename S, typename Q>
void run_row(const S* __restrict src, Q* __restrict dst, int64_t n, float peak) {
  int64_t i = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<S, float>) {  // the common case, 16 samples at a time (SSE2 is x86-64's base)
    const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.0f), scale = _mm_set1_ps(peak),
                 half = _mm_set1_ps(0.5f);
    const auto levels = [&](const float* p) {  // max(v, 0) is 0 for NaN: the second operand wins
      const __m128 v = _mm_min_ps(_mm_max_ps(_mm_loadu_ps(p), zero), one);
      return _mm_cvttps_epi32(_mm_add_ps(_mm_mul_ps(v, scale), half));
    };
    for (; i + 16 <= n; i += 16) {
      const __m128i a = levels(src + i), b = levels(src + i + 4), c = levels(src + i + 8), d = levels(src + i + 12);
      if constexpr (std::is_same_v<Q, uint8_t>) {
        const __m128i lo = _mm_packs_epi32(a, b), hi = _mm_packs_epi32(c, d);  // 0..255 fit int16
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm_packus_epi16(lo, hi));
      } else {  // 0..65535: shift into int16's range, pack with signed saturation, shift back
        const __m128i bias = _mm_set1_epi32(32768), flip = _mm_set1_epi16(static_cast<int16_t>(0x8000));
        const __m128i lo = _mm_packs_epi32(_mm_sub_epi32(a, bias), _mm_sub_epi32(b, bias));
        const __m128i hi = _mm_packs_epi32(_mm_sub_epi32(c, bias), _mm_sub_epi32(d, bias));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm_xor_si128(lo, flip));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i + 8), _mm_xor_si128(hi, flip));
      }
    }
  }
#endif
  for (; i < n; ++i) dst[i] = level<Q>(static_cast<float>(src[i]), peak);
}

template <typename S, typename Q>
void quantize_into(const at::Tensor& x, at::Tensor& out, float peak) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  const S* xp = x.const_data_ptr<S>();
  Q* op = out.mutable_data_ptr<Q>();
  if (sc == 1 && sw == C) {  // channels-last rows: the row is already interleaved
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t y = 0; y < H; ++y) {
        const S* src = xp + b * sb + y * sh;
        Q* dst = op + (b * H + y) * W * C;
        run_row(src, dst, W * C, peak);
      }
    }
    return;
  }
  // sw == 1 here (the caller made the rows contiguous otherwise)
  std::vector<Q> row(static_cast<size_t>(C * W));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t y = 0; y < H; ++y) {
      for (int64_t c = 0; c < C; ++c) run_row(xp + b * sb + c * sc + y * sh, row.data() + c * W, W, peak);
      Q* dst = op + (b * H + y) * W * C;
      if (C == 3) {
        const Q* r0 = row.data();
        const Q* r1 = r0 + W;
        const Q* r2 = r1 + W;
        for (int64_t i = 0; i < W; ++i) {
          dst[3 * i] = r0[i];
          dst[3 * i + 1] = r1[i];
          dst[3 * i + 2] = r2[i];
        }
      } else {
        for (int64_t i = 0; i < W; ++i) {
          for (int64_t c = 0; c < C; ++c) dst[i * C + c] = row[c * W + i];
        }
      }
    }
  }
}

at::Tensor quantize_hwc_cpu(const at::Tensor& x_in, int64_t bits) {
  const char* op = "quantize_hwc";
  TORCH_CHECK(x_in.dim() == 4, op, ": x must be a 4-D tensor (B, C, H, W), got ", x_in.dim(), "-D with shape ",
              x_in.sizes());
  check::floating(op, x_in, "x");
  check::device(op, x_in, "x", at::kCPU);
  TORCH_CHECK(bits == 8 || bits == 16, op, ": bits must be 8 or 16, got ", bits);
  const bool channels_last_rows = x_in.stride(1) == 1 && x_in.stride(3) == x_in.size(1);
  const at::Tensor x = (channels_last_rows || x_in.stride(3) == 1 || x_in.size(3) == 1) ? x_in : x_in.contiguous();
  const auto qtype = bits == 8 ? at::kByte : at::kUInt16;
  at::Tensor out = at::empty({x.size(0), x.size(2), x.size(3), x.size(1)}, x.options().dtype(qtype));
  if (out.numel() == 0) return out;
  const float peak = bits == 8 ? 255.0f : 65535.0f;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantize_hwc_cpu", [&] {
    if (bits == 8) {
      quantize_into<scalar_t, uint8_t>(x, out, peak);
    } else {
      quantize_into<scalar_t, uint16_t>(x, out, peak);
    }
  });
  return out;
}

// dequantize_hwc: (B, H, W, C) uint8 / uint16 -> (B, C, H, W) float32, q / peak (one IEEE division, as
// numpy's `q.astype(np.float32) / 255.0`). Rows of any stride; samples of one pixel adjacent.
template <typename Q>
void dequantize_into(const at::Tensor& q, at::Tensor& out, float peak) {
  const int64_t B = q.size(0), H = q.size(1), W = q.size(2), C = q.size(3);
  const int64_t sb = q.stride(0), sh = q.stride(1), sw = q.stride(2);
  const Q* qp = q.const_data_ptr<Q>();
  float* op = out.mutable_data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t y = 0; y < H; ++y) {
      const Q* src = qp + b * sb + y * sh;
      for (int64_t c = 0; c < C; ++c) {
        float* dst = op + ((b * C + c) * H + y) * W;
        const Q* s = src + c;
        for (int64_t i = 0; i < W; ++i) dst[i] = static_cast<float>(s[i * sw]) / peak;
      }
    }
  }
}

at::Tensor dequantize_hwc_cpu(const at::Tensor& q_in) {
  const char* op = "dequantize_hwc";
  TORCH_CHECK(q_in.dim() == 4, op, ": q must be a 4-D tensor (B, H, W, C), got ", q_in.dim(), "-D with shape ",
              q_in.sizes());
  TORCH_CHECK(q_in.scalar_type() == at::kByte || q_in.scalar_type() == at::kUInt16, op,
              ": q must be uint8 or uint16, got ", q_in.scalar_type());
  check::device(op, q_in, "q", at::kCPU);
  const at::Tensor q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  at::Tensor out = at::empty({q.size(0), q.size(3), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  if (q.scalar_type() == at::kByte) {
    dequantize_into<uint8_t>(q, out, 255.0f);
  } else {
    dequantize_into<uint16_t>(q, out, 65535.0f);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lowlight_fast, CPU, m) {
  m.impl("quantize_hwc", &quantize_hwc_cpu);
  m.impl("dequantize_hwc", &dequantize_hwc_cpu);
}

}  // namespace quantize
}  // namespace lowlight_fast
