// Argument checks of the ops' entry points, shared by the CPU (csrc/cpu) and CUDA (csrc/cuda) kernels,
// so that one mistake reads the same in every op and on every device. Each message names the op and the
// argument and says what was expected and what came; TORCH_CHECK raises it (RuntimeError in Python).
// Host code only (the entry points, not the kernels). Relations that belong to one op alone (le_curve's
// map sizes, the exposure patch) stay as TORCH_CHECK beside that op.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace lowlight_fast {
namespace check {

constexpr int64_t kAnyChannels = -1;

namespace detail {
// Message pieces, built only when a check fails (TORCH_CHECK evaluates its message arguments then).
inline std::string channels_text(int64_t channels) {
  return channels == kAnyChannels ? std::string("C") : std::to_string(channels);
}
inline std::string because(const char* why) { return why == nullptr ? std::string() : std::string(" (") + why + ")"; }
}  // namespace detail

// The dtypes every kernel dispatches over (float16/bfloat16 are computed in float32).
inline void floating(const char* op, const at::Tensor& t, const char* name) {
  const at::ScalarType st = t.scalar_type();
  TORCH_CHECK(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble, op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", st);
}

// An image batch (B, channels, H, W) (kAnyChannels: any channel count) of a kernel dtype, not empty, of
// at least min_h x min_w pixels; `why` (may be null) says what in the op needs that size.
inline void image(const char* op, const at::Tensor& t, const char* name, int64_t channels, int64_t min_h = 1,
                  int64_t min_w = 1, const char* why = nullptr) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be a 4-D tensor (B, ", detail::channels_text(channels),
              ", H, W), got ", t.dim(), "-D with shape ", t.sizes());
  TORCH_CHECK(channels == kAnyChannels || t.size(1) == channels, op, ": ", name, " must have ", channels,
              " channels, got shape ", t.sizes());
  floating(op, t, name);
  TORCH_CHECK(t.numel() > 0, op, ": ", name, " is empty (shape ", t.sizes(), ")");
  TORCH_CHECK(t.size(2) >= min_h && t.size(3) >= min_w, op, ": ", name, " must be at least ", min_h, "x", min_w,
              " pixels", detail::because(why), ", got ", t.size(2), "x", t.size(3));
}

inline void same_dtype(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
              ref_name, " has ", ref.scalar_type());
}

inline void same_shape(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have the shape of ", ref_name, " ", ref.sizes(),
              ", got ", t.sizes());
}

inline void shape(const char* op, const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", expected, ", got ", t.sizes());
}

// The incoming gradient of a scalar loss.
inline void one_value(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.numel() == 1, op, ": ", name, " must hold one value (the loss is a scalar), got shape ",
              t.sizes());
}

// A kernel registered for one device type gets every tensor there (the dispatcher picks it by the
// first device; a tensor on another one would be misread).
inline void device(const char* op, const at::Tensor& t, const char* name, at::DeviceType type) {
  TORCH_CHECK(t.device().type() == type, op, ": ", name, " must be a ", c10::DeviceTypeName(type, true),
              " tensor here, got one on ", t.device());
}

inline void same_device(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref,
                        const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
}

}  // namespace check
}  // namespace lowlight_fast
