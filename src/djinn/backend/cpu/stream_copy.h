// Bulk copies that bypass the cache, for swaps on the CPU backend.
//
// A swap moves a session's KV cache between its arena and the host pool: far more bytes
// than the caches hold, none of them read again soon by the thread that copies them.
// memcpy writes through the cache (each destination line is first read, then evicted),
// and glibc switches to non-temporal stores only for single copies larger than its
// threshold (three quarters of its idea of the shared cache: hundreds of MiB on some
// VMs), which a session's slots, copied one by one, never are. stream_copy writes with
// non-temporal stores whatever the size of each piece.
#pragma once

#include <cstddef>

namespace djinn::cpu {

// Copies `bytes` from src to dst (not overlapping) with non-temporal stores, then
// fences them (they are visible to other threads on return). Any alignment.
void stream_copy(void* dst, const void* src, size_t bytes);

// The total size from which a batch of swap copies goes by stream_copy: half the
// last-level cache one core shares (sysfs), 16 MiB when unknown;
// DJINN_CPU_STREAM_COPY_MIN_MB overrides it (0: always). Smaller copies stay in the
// cache, where memcpy is faster.
size_t stream_copy_min_bytes();

}  // namespace djinn::cpu
