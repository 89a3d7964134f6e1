// Portable vectorisation for the CPU kernels (never -march=native: the build may be copied elsewhere).
// A function marked LOWLIGHT_FAST_CLONES is compiled for AVX-512 (x86-64-v4), AVX2 (x86-64-v3) and
// baseline x86-64, and the copy for the running CPU is chosen at load time (GCC target_clones). The loops
// it calls must be LOWLIGHT_FAST_INLINE so that each copy compiles them for its instruction set.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__linux__)
#define LOWLIGHT_FAST_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LOWLIGHT_FAST_CLONES
#endif

#if defined(__GNUC__)
#define LOWLIGHT_FAST_INLINE inline __attribute__((always_inline))
#else
#define LOWLIGHT_FAST_INLINE inline
#endif

#define LOWLIGHT_FAST_SIMD _Pragma("omp simd")
