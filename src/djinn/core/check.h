// Assertions and checks, the first two of djinn's three error tiers:
//
//  - DJINN_ASSERT(cond, fmt, args...): a bug in djinn itself. Prints file:line, the
//    condition and the message, then aborts. Always on (cheap conditions only).
//  - DJINN_CHECK(cond, fmt, args...): a caller broke an API contract (bad argument,
//    mismatched shapes). Throws djinn::CheckError with file:line and the message;
//    the CLI and the RPC front end catch it and turn it into one clear line / an
//    error reply.
//  - Status / Result<T> (status.h): conditions a caller must expect and handle.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace djinn {

class CheckError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] void assert_fail(const char* file, int line, const char* condition, const std::string& message);
[[noreturn]] void check_fail(const char* file, int line, const char* condition, const std::string& message);

inline std::string format_message() { return {}; }
template <typename... Args>
std::string format_message(fmt::format_string<Args...> format, Args&&... args) {
  return fmt::format(format, std::forward<Args>(args)...);
}
}  // namespace detail

}  // namespace djinn

#define DJINN_ASSERT(cond, ...)                                                                    \
  do {                                                                                             \
    if (!(cond)) [[unlikely]]                                                                      \
      ::djinn::detail::assert_fail(__FILE__, __LINE__, #cond, ::djinn::detail::format_message(__VA_ARGS__)); \
  } while (0)

#define DJINN_CHECK(cond, ...)                                                                    \
  do {                                                                                            \
    if (!(cond)) [[unlikely]]                                                                     \
      ::djinn::detail::check_fail(__FILE__, __LINE__, #cond, ::djinn::detail::format_message(__VA_ARGS__)); \
  } while (0)
