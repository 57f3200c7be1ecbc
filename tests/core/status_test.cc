#include "djinn/core/status.h"

#include <gtest/gtest.h>

namespace djinn {
namespace {

Result<int> half_of(int x) {
  if (x % 2 != 0) return invalid_argument(fmt::format("{} is odd", x));
  return x / 2;
}

Result<int> quarter_of(int x) {
  DJINN_ASSIGN_OR_RETURN(int half, half_of(x));
  DJINN_ASSIGN_OR_RETURN(int quarter, half_of(half));
  return quarter;
}

Status check_positive(int x) {
  if (x <= 0) return out_of_range("not positive");
  return {};
}

Status both_positive(int a, int b) {
  DJINN_RETURN_IF_ERROR(check_positive(a));
  DJINN_RETURN_IF_ERROR(check_positive(b));
  return {};
}

TEST(Status, OkAndErrors) {
  EXPECT_TRUE(Status().ok());
  const Status s = out_of_memory("session 3 asked for 12 bytes");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOutOfMemory);
  EXPECT_EQ(s.to_string(), "out of memory: session 3 asked for 12 bytes");
}

TEST(Result, PropagatesValuesAndErrors) {
  EXPECT_EQ(*quarter_of(12), 3);
  const Result<int> odd = quarter_of(6);
  ASSERT_FALSE(odd.ok());
  EXPECT_EQ(odd.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(odd.status().message(), "3 is odd");
  EXPECT_TRUE(both_positive(1, 2).ok());
  EXPECT_EQ(both_positive(1, -2).code(), StatusCode::kOutOfRange);
}

TEST(Check, ThrowsWithLocationAndMessage) {
  try {
    DJINN_CHECK(1 + 1 == 3, "arithmetic says {}", 2);
    FAIL() << "DJINN_CHECK did not throw";
  } catch (const CheckError& e) {
    EXPECT_NE(std::string(e.what()).find("arithmetic says 2"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("status_test.cc"), std::string::npos);
  }
}

TEST(AssertDeathTest, AbortsWithFileAndLine) {
  EXPECT_DEATH(DJINN_ASSERT(false, "broken invariant {}", 7), "status_test.cc:.*broken invariant 7");
}

}  // namespace
}  // namespace djinn
