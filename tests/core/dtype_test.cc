#include "djinn/core/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

namespace djinn {
namespace {

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kF16), 2u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kI32), 4u);
  EXPECT_EQ(dtype_size(DType::kI64), 8u);
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16, DType::kI32, DType::kI64})
    EXPECT_EQ(parse_dtype(dtype_name(d)), d);
  EXPECT_FALSE(parse_dtype("f64").has_value());
  EXPECT_TRUE(is_floating(DType::kBF16));
  EXPECT_FALSE(is_floating(DType::kI64));
}

TEST(DType, HalfExactValuesRoundTrip) {
  for (float v : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f /* min normal */, 5.960464477539063e-08f})
    EXPECT_EQ(half_to_float(float_to_half(v)), v) << v;
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half(-2.0f), 0xc000);
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);  // rounds to +inf
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(half_to_float(float_to_half(std::numeric_limits<float>::infinity()))));
}

TEST(DType, HalfRoundsToNearestEven) {
  // 1 + 2^-11 is exactly halfway between 1 and 1 + 2^-10: ties to even (1.0).
  EXPECT_EQ(float_to_half(1.0f + 0x1p-11f), 0x3c00);
  // 1 + 3 * 2^-11 is halfway between 1+2^-10 (odd) and 1+2^-9 (even): rounds up.
  EXPECT_EQ(float_to_half(1.0f + 3 * 0x1p-11f), 0x3c02);
}

TEST(DType, EveryHalfBitPatternRoundTrips) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float f = half_to_float(static_cast<uint16_t>(bits));
    if (std::isnan(f)) continue;
    EXPECT_EQ(float_to_half(f), bits) << std::hex << bits;
  }
}

TEST(DType, RandomFloatsRoundWithinHalfUlp) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1000.0f, 1000.0f);
  for (int i = 0; i < 10000; ++i) {
    const float v = dist(rng);
    EXPECT_LE(std::fabs(half_to_float(float_to_half(v)) - v), std::fabs(v) * 0x1p-11f * 1.0001f) << v;
    EXPECT_LE(std::fabs(bf16_to_float(float_to_bf16(v)) - v), std::fabs(v) * 0x1p-8f * 1.0001f) << v;
  }
}

TEST(DType, ConvertBuffers) {
  const float src[] = {1.0f, -0.5f, 3.25f};
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
    uint32_t storage[3] = {};
    float back[3] = {};
    convert_from_f32(src, 3, d, storage);
    convert_to_f32(storage, d, 3, back);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(back[i], src[i]) << dtype_name(d);
  }
}

}  // namespace
}  // namespace djinn
