#include "djinn/core/status.h"

#include <cstdio>
#include <cstdlib>

namespace djinn {

const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kInvalidArgument: return "invalid argument";
    case StatusCode::kNotFound: return "not found";
    case StatusCode::kOutOfRange: return "out of range";
    case StatusCode::kDataLoss: return "data loss";
    case StatusCode::kOutOfMemory: return "out of memory";
    case StatusCode::kPermissionDenied: return "permission denied";
    case StatusCode::kUnavailable: return "unavailable";
    case StatusCode::kUnimplemented: return "unimplemented";
    case StatusCode::kInternal: return "internal";
  }
  return "unknown";
}

std::string Status::to_string() const {
  if (ok()) return "ok";
  return fmt::format("{}: {}", status_code_name(code_), message_);
}

namespace detail {

void assert_fail(const char* file, int line, const char* condition, const std::string& message) {
  std::fprintf(stderr, "djinn: assertion failed at %s:%d: %s%s%s\n", file, line, condition,
               message.empty() ? "" : ": ", message.c_str());
  std::fflush(stderr);
  std::abort();
}

void check_fail(const char* file, int line, const char* condition, const std::string& message) {
  (void)condition;
  const char* base = file;
  for (const char* p = file; *p; ++p)
    if (*p == '/') base = p + 1;
  throw CheckError(fmt::format("{} ({}:{})", message.empty() ? condition : message, base, line));
}

}  // namespace detail
}  // namespace djinn
