// as_pitched_copy: which lists of copy regions are one 2D copy (backend.h).
#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <vector>

#include "djinn/backend/backend.h"

namespace djinn {
namespace {

// `height` rows of `width` bytes: sources every `src_pitch` bytes of `src`,
// destinations every `dst_pitch` bytes of `dst`.
std::vector<CopyRegion> rows(std::byte* dst, size_t dst_pitch, const std::byte* src, size_t src_pitch, size_t width,
                             size_t height) {
  std::vector<CopyRegion> out;
  for (size_t i = 0; i < height; ++i) out.push_back({dst + i * dst_pitch, src + i * src_pitch, width});
  return out;
}

TEST(PitchedCopy, KvSlotsIntoOneSliceAreOneCopy) {
  std::vector<std::byte> arena(24 * 1000), slice(24 * 640);
  // A swap-out: 24 slots of which 640 bytes are used, packed into the slice.
  const std::vector<CopyRegion> out = rows(slice.data(), 640, arena.data(), 1000, 640, 24);
  const std::optional<PitchedCopy> p = as_pitched_copy(out);
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->dst, slice.data());
  EXPECT_EQ(p->src, arena.data());
  EXPECT_EQ(p->dst_pitch, 640u);
  EXPECT_EQ(p->src_pitch, 1000u);
  EXPECT_EQ(p->width, 640u);
  EXPECT_EQ(p->height, 24u);
  // And the swap-in the other way round.
  const std::optional<PitchedCopy> back = as_pitched_copy(rows(arena.data(), 1000, slice.data(), 640, 640, 24));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->src_pitch, 640u);
  EXPECT_EQ(back->dst_pitch, 1000u);
}

TEST(PitchedCopy, AnythingElseIsNot) {
  std::vector<std::byte> a(64 * 100), b(64 * 100);
  EXPECT_FALSE(as_pitched_copy({}).has_value());
  const std::vector<CopyRegion> one = rows(b.data(), 64, a.data(), 100, 64, 1);
  EXPECT_FALSE(as_pitched_copy(one).has_value());  // one region: a plain copy
  std::vector<CopyRegion> r = rows(b.data(), 64, a.data(), 100, 64, 8);
  ASSERT_TRUE(as_pitched_copy(r).has_value());
  auto changed = [&](auto edit) {
    std::vector<CopyRegion> c = r;
    edit(c);
    return as_pitched_copy(c).has_value();
  };
  EXPECT_FALSE(changed([](auto& c) { c[5].bytes = 32; }));                   // unequal sizes
  EXPECT_FALSE(changed([](auto& c) { c[7].src = static_cast<const std::byte*>(c[7].src) + 4; }));  // src stride breaks
  EXPECT_FALSE(changed([](auto& c) { c[3].dst = static_cast<std::byte*>(c[3].dst) + 64; }));       // dst stride breaks
  EXPECT_FALSE(changed([](auto& c) { std::swap(c[0], c[1]); }));             // rows out of order
  for (auto& c : r) c.bytes = 0;
  EXPECT_FALSE(as_pitched_copy(r).has_value());  // empty rows
  // Rows closer than their width overlap the next one: not a 2D copy.
  EXPECT_FALSE(as_pitched_copy(rows(b.data(), 64, a.data(), 32, 64, 4)).has_value());
  EXPECT_FALSE(as_pitched_copy(rows(b.data(), 32, a.data(), 100, 64, 4)).has_value());
}

}  // namespace
}  // namespace djinn
