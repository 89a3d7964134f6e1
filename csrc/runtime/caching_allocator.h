// A caching CPU allocator for PyTorch (opt-in, process-wide): see caching_allocator.cpp. Used by the
// lowlight_fast._runtime module only (csrc/runtime/module.cpp); the kernels do not depend on it.
#pragma once

#include <cstdint>

namespace lowlight_fast {
namespace cpu_cache {

struct Stats {
  int64_t cached_bytes;     // freed blocks held for reuse
  int64_t cached_blocks;
  int64_t live_bytes;       // blocks of at least kMinBytes handed out and not yet freed
  int64_t hits;             // requests served from the cache
  int64_t misses;           // requests of at least kMinBytes that needed new memory
  int64_t limit_bytes;
  bool enabled;
};

// Installs the allocator (the first time) and turns caching on with this limit on the cached bytes.
// Returns false if the current CPU allocator cannot be wrapped (it has no raw interface).
bool enable(int64_t limit_bytes);
// Turns caching off and frees every cached block (allocations still pass through, uncached).
void disable();
// Frees every cached block.
void empty();
Stats stats();

}  // namespace cpu_cache
}  // namespace lowlight_fast
