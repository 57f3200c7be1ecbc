#include "djinn/backend/cpu/stream_copy.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "djinn/backend/cpu/cpu_backend.h"

namespace djinn {
namespace {

// Every byte arrives, none around the destination changes: sizes across the 64-byte
// line (head, whole lines, tail) at every source and destination offset in a line.
TEST(StreamCopy, CopiesEveryByteAtEveryAlignmentAndTouchesNothingElse) {
  std::mt19937 rng(5);
  std::vector<std::byte> src(70000), dst(70000);
  for (std::byte& b : src) b = static_cast<std::byte>(rng());
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{15}, size_t{63}, size_t{64}, size_t{65}, size_t{127}, size_t{4097},
                       size_t{65536 + 13}}) {
    for (size_t src_offset : {0, 1, 16, 33, 63}) {
      for (size_t dst_offset : {0, 5, 32, 48, 63}) {
        SCOPED_TRACE(::testing::Message() << bytes << " bytes, src +" << src_offset << ", dst +" << dst_offset);
        std::fill(dst.begin(), dst.end(), std::byte{0xA5});
        cpu::stream_copy(dst.data() + dst_offset, src.data() + src_offset, bytes);
        ASSERT_EQ(std::memcmp(dst.data() + dst_offset, src.data() + src_offset, bytes), 0);
        for (size_t i = 0; i < dst_offset; ++i) ASSERT_EQ(dst[i], std::byte{0xA5}) << "before, at " << i;
        for (size_t i = dst_offset + bytes; i < dst.size(); ++i) ASSERT_EQ(dst[i], std::byte{0xA5}) << "after, at " << i;
      }
    }
  }
}

// A swap larger than the streaming threshold (stream_copy) and one below it (memcpy)
// move the same bytes through CpuBackend::copy; so does the compute queue.
TEST(StreamCopy, BackendSwapCopiesAboveAndBelowTheThresholdMoveEveryByte) {
  CpuBackend backend;
  // (At least 64 KiB either way: the threshold may be set to 0 by the environment.)
  const size_t threshold = std::max<size_t>(cpu::stream_copy_min_bytes(), size_t{64} << 10);
  for (size_t total : {threshold / 2 + 1, threshold + 4096 + 7}) {
    std::vector<std::byte> src(total), dst(total, std::byte{0});
    std::mt19937 rng(static_cast<uint32_t>(total));
    for (std::byte& b : src) b = static_cast<std::byte>(rng());
    // Three uneven regions, as a session's slots into one slice.
    const size_t a = total / 3 + 1, b = total / 3 - 5;
    const CopyRegion regions[] = {{dst.data(), src.data(), a},
                                  {dst.data() + a, src.data() + a, b},
                                  {dst.data() + a + b, src.data() + a + b, total - a - b}};
    for (CopyQueue queue : {CopyQueue::kSwapOut, CopyQueue::kSwapIn, CopyQueue::kCompute}) {
      std::fill(dst.begin(), dst.end(), std::byte{0});
      ASSERT_TRUE(backend.copy(regions, queue).ok());
      ASSERT_EQ(std::memcmp(dst.data(), src.data(), total), 0) << total << " bytes";
    }
  }
}

}  // namespace
}  // namespace djinn
