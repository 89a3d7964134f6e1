// The path choice and the registry behind LOWLIGHT_FAST_CPU_DISPATCH (cpu/dispatch.h).
#include "cpu/dispatch.h"

#include <ATen/Version.h>  // at::get_cpu_capability()

#include <mutex>
#include <set>

namespace lowlight_fast {
namespace cpu {
namespace {

Path choose() {
#if LOWLIGHT_FAST_HAS_DISPATCH
  // torch's own choice ("AVX512", "AVX2", "DEFAULT"), already lowered by ATEN_CPU_CAPABILITY; the CPU
  // check stays in case torch was built to allow more than this CPU has.
  const std::string cap = at::get_cpu_capability();
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
                    __builtin_cpu_supports("popcnt");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vl");
  if (cap.find("AVX512") != std::string::npos && avx512) return Path::kAvx512;
  if ((cap.find("AVX512") != std::string::npos || cap.find("AVX2") != std::string::npos) && avx2) return Path::kAvx2;
#endif
  return Path::kDefault;
}

struct Registry {
  std::mutex mutex;
  std::set<std::string> kernels;
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: static initialisers of other files use it
  return *r;
}

}  // namespace

const char* path_name(Path path) {
  switch (path) {
    case Path::kAvx512:
      return "avx512";
    case Path::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

Path chosen_path() {
  static const Path path = choose();
  return path;
}

bool register_kernel(const char* kernel) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.kernels.insert(kernel);
  return true;
}

std::map<std::string, std::string> cpu_paths() {
  const char* name = path_name(chosen_path());
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::map<std::string, std::string> out;
  for (const std::string& k : r.kernels) out[k] = name;
  return out;
}

}  // namespace cpu
}  // namespace lowlight_fast
