#include "djinn/backend/cpu/stream_copy.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace djinn::cpu {

void stream_copy(void* dst, const void* src, size_t bytes) {
#if defined(__x86_64__)
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
  // Whole 64-byte destination lines go by streaming stores (SSE2, every x86-64): the
  // head up to the first line boundary and the tail after the last by memcpy.
  const size_t head = std::min(bytes, (64 - reinterpret_cast<uintptr_t>(d) % 64) % 64);
  std::memcpy(d, s, head);
  d += head, s += head, bytes -= head;
  const size_t lines = bytes / 64;
  for (size_t i = 0; i < lines; ++i, d += 64, s += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 32));
    const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(d), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 48), e);
  }
  std::memcpy(d, s, bytes % 64);
  _mm_sfence();  // streaming stores are weakly ordered: done before anyone is told
#else
  std::memcpy(dst, src, bytes);
#endif
}

namespace {

// The last-level cache one core shares, bytes, as the kernel describes it (sysfs:
// "32768K"); 0 when unknown. (sysconf's figure can be the whole socket's, or a VM's
// invention: 384 MiB on a 2-core VM whose sysfs says 32 MiB.)
size_t last_level_cache_bytes() {
  std::ifstream size_file("/sys/devices/system/cpu/cpu0/cache/index3/size");
  size_t value = 0;
  char unit = 0;
  if (!(size_file >> value)) return 0;
  size_file >> unit;
  return unit == 'K' ? value << 10 : unit == 'M' ? value << 20 : value;
}

}  // namespace

size_t stream_copy_min_bytes() {
  static const size_t min_bytes = [] {
    if (const char* env = std::getenv("DJINN_CPU_STREAM_COPY_MIN_MB"); env != nullptr) {
      char* end = nullptr;
      const unsigned long long mb = std::strtoull(env, &end, 10);
      if (end != env && *end == '\0') return static_cast<size_t>(mb) << 20;  // else: not a number, ignored
    }
    const size_t llc = last_level_cache_bytes();
    return llc > 0 ? llc / 2 : size_t{16} << 20;
  }();
  return min_bytes;
}

}  // namespace djinn::cpu
