// Host emulation of the CUDA kernels of smooth_loss (csrc/cuda/smooth_loss_kernels.cuh), for machines
// without a GPU: the same kernel bodies and the same launch sequence, with grid and block loops in
// place of a launch. Built by tests/ops/test_smooth_loss_cuda_emulation.py as a standalone program
// (with AddressSanitizer/UBSan where available, so an out-of-bounds index in a kernel fails the test).
//
//   smooth_loss_emulate DTYPE B H W SIGMA FAITHFUL WITH_GRAD ORDER SCALE IN_FILE OUT_FILE RESULT_PREFIX
//     DTYPE f32 | f64 | f16 | bf16;  ORDER 0 = blocks/threads in order, 1 = reversed;
//     SCALE "none" or a number (the incoming gradient); files are raw little-endian arrays.
//   Writes RESULT_PREFIX.loss (acc_t) and, with gradients, RESULT_PREFIX.gin / .gout (DTYPE). The
//   gradient buffers start as NaN, so an element no thread writes is visible.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

#include "cuda/smooth_loss_kernels.cuh"

namespace {

using namespace lowlight_fast::smooth::cuda_kernels;

// Runs every (block, thread) of a launch one after another, in order or reversed: kernels that do not
// depend on the order of their threads give the same bits either way.
struct EmulatedLaunch {
  bool reverse;
  template <typename Kernel, typename... Args>
  void operator()(dim3 grid, dim3 block, Kernel kernel, Args... args) const {
    gridDim = grid;
    blockDim = block;
    const int64_t nb = int64_t(grid.x) * grid.y * grid.z, nt = int64_t(block.x) * block.y * block.z;
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t bi = reverse ? nb - 1 - i : i;
      blockIdx = uint3{unsigned(bi % grid.x), unsigned((bi / grid.x) % grid.y), unsigned(bi / (int64_t(grid.x) * grid.y))};
      for (int64_t j = 0; j < nt; ++j) {
        const int64_t tj = reverse ? nt - 1 - j : j;
        threadIdx = uint3{unsigned(tj % block.x), unsigned((tj / block.x) % block.y),
                          unsigned(tj / (int64_t(block.x) * block.y))};
        kernel(args...);
      }
    }
  }
};

template <typename T>
std::vector<T> read_array(const char* path, int64_t n) {
  std::vector<T> v(n);
  FILE* f = std::fopen(path, "rb");
  if (!f || std::fread(v.data(), sizeof(T), n, f) != size_t(n)) {
    std::fprintf(stderr, "cannot read %lld values from %s\n", (long long)n, path);
    std::exit(2);
  }
  std::fclose(f);
  return v;
}

template <typename T>
void write_array(const std::string& path, const T* data, int64_t n) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(data, sizeof(T), n, f) != size_t(n)) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::exit(2);
  }
  std::fclose(f);
}

template <typename scalar_t, typename acc_t>
int run(char** argv) {
  const int64_t batch = std::atoll(argv[2]), height = std::atoll(argv[3]), width = std::atoll(argv[4]);
  const double sigma = std::atof(argv[5]);
  const bool faithful = std::atoi(argv[6]) != 0, with_grad = std::atoi(argv[7]) != 0;
  const EmulatedLaunch launch{std::atoi(argv[8]) != 0};
  const bool scaled = std::strcmp(argv[9], "none") != 0;
  const std::vector<acc_t> scale_buf(1, scaled ? static_cast<acc_t>(std::atof(argv[9])) : acc_t(0));
  const int64_t numel = batch * 3 * height * width;
  const std::vector<scalar_t> in = read_array<scalar_t>(argv[10], numel);
  const std::vector<scalar_t> out = read_array<scalar_t>(argv[11], numel);
  const std::string prefix = argv[12];

  const WorkspaceSizes ws = workspace_sizes(batch, height, width, with_grad);
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  std::vector<acc_t> y(ws.y, nan), gy(ws.gy, nan), loss_px(ws.loss_px, nan), partials(ws.partials, nan), loss(1, nan);
  std::vector<scalar_t> gin(with_grad ? numel : 0, static_cast<scalar_t>(nan));
  std::vector<scalar_t> gout(with_grad ? numel : 0, static_cast<scalar_t>(nan));

  run_smooth_loss<scalar_t, acc_t>(launch, in.data(), out.data(), batch, height, width, sigma, faithful, with_grad,
                                   y.data(), with_grad ? gy.data() : nullptr, loss_px.data(), partials.data(),
                                   loss.data(), with_grad ? gin.data() : nullptr, with_grad ? gout.data() : nullptr,
                                   scaled ? scale_buf.data() : nullptr);

  write_array(prefix + ".loss", loss.data(), 1);
  if (with_grad) {
    write_array(prefix + ".gin", gin.data(), numel);
    write_array(prefix + ".gout", gout.data(), numel);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 13) {
    std::fprintf(stderr,
                 "usage: %s DTYPE B H W SIGMA FAITHFUL WITH_GRAD ORDER SCALE IN_FILE OUT_FILE RESULT_PREFIX\n",
                 argv[0]);
    return 2;
  }
  const std::string dtype = argv[1];
  if (dtype == "f32") return run<float, float>(argv);
  if (dtype == "f64") return run<double, double>(argv);
  if (dtype == "f16") return run<c10::Half, float>(argv);
  if (dtype == "bf16") return run<c10::BFloat16, float>(argv);
  std::fprintf(stderr, "unknown dtype %s\n", dtype.c_str());
  return 2;
}
