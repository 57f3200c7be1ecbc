#include "djinn/backend/cpu/stream_copy.h"

#include <unistd.h>

#include <algorithm>

#include <cstdint>
#include <cstdlib>
#include <cstring>

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

size_t stream_copy_min_bytes() {
  static const size_t min_bytes = [] {
    if (const char* env = std::getenv("DJINN_CPU_STREAM_COPY_MIN_MB"); env != nullptr)
      return static_cast<size_t>(std::strtoull(env, nullptr, 10)) << 20;
    const long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return llc > 0 ? static_cast<size_t>(llc) / 2 : size_t{16} << 20;
  }();
  return min_bytes;
}

}  // namespace djinn::cpu
