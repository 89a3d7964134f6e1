// lowlight_fast._runtime: process-wide facilities that are not ops, today the caching CPU allocator
// (lowlight_fast.memory is the Python side). A module of its own, apart from the kernels of _C, so that
// one allocator serves the whole process whichever kernels are built, and it needs only pybind11 and c10.
#include <pybind11/pybind11.h>

#include "runtime/caching_allocator.h"

namespace {

pybind11::dict cache_stats() {
  const auto s = lowlight_fast::cpu_cache::stats();
  pybind11::dict d;
  d["enabled"] = s.enabled;
  d["cached_bytes"] = s.cached_bytes;
  d["cached_blocks"] = s.cached_blocks;
  d["live_bytes"] = s.live_bytes;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["limit_bytes"] = s.limit_bytes;
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lowlight_fast process-wide runtime: the caching CPU allocator (see lowlight_fast.memory)";
  m.def("cache_enable", &lowlight_fast::cpu_cache::enable, pybind11::arg("limit_bytes"),
        "Install / turn on the caching CPU allocator; False if the CPU allocator cannot be wrapped");
  m.def("cache_disable", &lowlight_fast::cpu_cache::disable, "Turn caching off and free the cached blocks");
  m.def("cache_empty", &lowlight_fast::cpu_cache::empty, "Free the cached blocks");
  m.def("cache_stats", &cache_stats, "The caching CPU allocator's counters");
}
