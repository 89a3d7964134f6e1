// LLF_HD marks the per-element math shared by the CPU and CUDA kernels (csrc/common/<op>.h):
// __host__ __device__ under nvcc/hipcc; on the host always inlined, since it sits inside the
// vectorised CPU loops.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LLF_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define LLF_HD inline __attribute__((always_inline))
#else
#define LLF_HD inline
#endif
