// Run-time choice of a CPU kernel's instruction-set path: one mechanism for every CPU kernel.
//
//   LOWLIGHT_FAST_CPU_DISPATCH("le_curve", forward_f32, forward_run<float>)
//
// defines `forward_f32(args...)`, which calls `forward_run<float>(args...)` compiled three times: for
// AVX-512 (the x86-64-v4 instruction sets), for AVX2 (x86-64-v3) and for baseline x86-64. The first call
// picks one copy through a function pointer, once: the highest path that torch's own choice allows
// (at::get_cpu_capability(), which ATEN_CPU_CAPABILITY=default|avx2|avx512 lowers, as it does for
// torch's kernels) and that this CPU supports. The kernel name ("le_curve") goes into a registry that
// `lowlight_fast._C.cpu_paths()` and `lowlight-fast info` report: kernel -> "avx512" | "avx2" | "default".
//
// To apply it to one function:
//   1. Move the body into a function marked LOWLIGHT_FAST_INLINE (always inlined: each copy then compiles
//      it, and the loops it inlines, for its instruction set). What it calls in its hot loops must be
//      inline too (LLF_HD, LOWLIGHT_FAST_INLINE, or small templates the compiler inlines anyway).
//   2. At namespace scope in the .cpp: LOWLIGHT_FAST_CPU_DISPATCH("kernel name", name, body_function).
//   3. Call name(...) where the body was called. Arguments are passed by value (pointers, sizes, small
//      structs; pass a big struct by pointer).
// Several functions may share one kernel name (one op's forward and backward, say); the path is the
// same for all of them. Non-x86-64 or non-GCC/Clang builds have one copy, reported as "default".
#pragma once

#include <map>
#include <string>

#include "cpu/simd.h"

namespace lowlight_fast {
namespace cpu {

enum class Path : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// "default", "avx2", "avx512"
const char* path_name(Path path);

// The path of every dispatched function in this process (chosen on the first call, then fixed).
Path chosen_path();

// Registers a kernel name for cpu_paths(); returns true (for a static initialiser).
bool register_kernel(const char* kernel);

// kernel name -> path_name(chosen_path()), for every registered kernel.
std::map<std::string, std::string> cpu_paths();

// The copy for chosen_path() among those compiled.
template <typename F>
F pick(F avx512, F avx2, F fallback) {
  switch (chosen_path()) {
    case Path::kAvx512:
      return avx512;
    case Path::kAvx2:
      return avx2;
    default:
      return fallback;
  }
}

}  // namespace cpu
}  // namespace lowlight_fast

#if defined(__GNUC__) && defined(__x86_64__)
#define LOWLIGHT_FAST_HAS_DISPATCH 1
// Instruction-set lists rather than arch=...: the copies keep the baseline's -march/-mtune, so GCC inlines
// ordinary helpers (std::min, ATen's inline functions) into them.
#define LOWLIGHT_FAST_TARGET_AVX512                                                                        \
  __attribute__((target("avx512f,avx512bw,avx512cd,avx512dq,avx512vl,avx2,avx,fma,bmi,bmi2,lzcnt,movbe,f16c," \
                        "popcnt")))
#define LOWLIGHT_FAST_TARGET_AVX2 __attribute__((target("avx2,avx,fma,bmi,bmi2,lzcnt,movbe,f16c,popcnt")))

#define LOWLIGHT_FAST_CPU_DISPATCH(kernel, name, impl)                                                  \
  template <typename... A>                                                                              \
  LOWLIGHT_FAST_TARGET_AVX512 decltype(auto) name##_avx512(A... a) {                                    \
    return impl(a...);                                                                                  \
  }                                                                                                     \
  template <typename... A>                                                                              \
  LOWLIGHT_FAST_TARGET_AVX2 decltype(auto) name##_avx2(A... a) {                                        \
    return impl(a...);                                                                                  \
  }                                                                                                     \
  template <typename... A>                                                                              \
  decltype(auto) name##_default(A... a) {                                                               \
    return impl(a...);                                                                                  \
  }                                                                                                     \
  [[maybe_unused]] static const bool name##_registered = ::lowlight_fast::cpu::register_kernel(kernel); \
  template <typename... A>                                                                              \
  decltype(auto) name(A... a) {                                                                         \
    using Fn = decltype(&name##_default<A...>);                                                         \
    static const Fn fn = ::lowlight_fast::cpu::pick<Fn>(&name##_avx512<A...>, &name##_avx2<A...>,       \
                                                        &name##_default<A...>);                         \
    return fn(a...);                                                                                    \
  }
#else
#define LOWLIGHT_FAST_HAS_DISPATCH 0
#define LOWLIGHT_FAST_CPU_DISPATCH(kernel, name, impl)                                                  \
  [[maybe_unused]] static const bool name##_registered = ::lowlight_fast::cpu::register_kernel(kernel); \
  template <typename... A>                                                                              \
  decltype(auto) name(A... a) {                                                                         \
    return impl(a...);                                                                                  \
  }
#endif
