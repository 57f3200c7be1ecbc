// Element types and the conversions between them.
//
// Compute is f32 everywhere on the CPU backend; f16 and bf16 are storage types
// (weights, KV cache) that kernels widen to f32 as they read. i32/i64 carry token
// ids and positions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace djinn {

enum class DType : uint8_t { kF32, kF16, kBF16, kI32, kI64 };

// Bytes per element.
size_t dtype_size(DType dtype);
// Lower-case name as used on the command line: "f32", "f16", "bf16", "i32", "i64".
std::string_view dtype_name(DType dtype);
std::optional<DType> parse_dtype(std::string_view name);
bool is_floating(DType dtype);

// IEEE-754 binary16 and bfloat16 <-> float, round to nearest even, NaN preserved.
uint16_t float_to_half(float value);
float half_to_float(uint16_t bits);
inline uint16_t float_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}
inline float bf16_to_float(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof value);
  return value;
}

// Widens `count` floating elements of `dtype` at `src` to f32 at `dst`.
void convert_to_f32(const void* src, DType dtype, size_t count, float* dst);
// Narrows `count` f32 elements at `src` into `dtype` at `dst`.
void convert_from_f32(const float* src, size_t count, DType dtype, void* dst);

}  // namespace djinn
