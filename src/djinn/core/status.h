// Status and Result<T>: conditions a caller must handle (bad input files, out of
// memory, unknown model, ...). Bugs are assertions and bad arguments are checks
// (see check.h); neither is a Status.
//
// A Status is cheap when ok (one enum); an error carries a code and a message that
// names what failed and with which values. Result<T> holds either a T or an error
// Status. Use DJINN_RETURN_IF_ERROR / DJINN_ASSIGN_OR_RETURN to propagate.
#pragma once

#include <string>
#include <utility>
#include <variant>

#include "djinn/core/check.h"

namespace djinn {

enum class StatusCode {
  kOk,
  kInvalidArgument,  // the caller passed something malformed
  kNotFound,         // a file, tensor, model or session that does not exist
  kOutOfRange,       // an index or size outside what is allowed
  kDataLoss,         // a file that is truncated or corrupt
  kOutOfMemory,      // an allocator could not satisfy a request
  kPermissionDenied, // a caller without the right credentials (a session token)
  kUnavailable,      // not now: e.g. the session's KV cache is swapped out
  kUnimplemented,    // valid, but not supported by this build
  kInternal,         // a broken invariant detected at run time
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return {}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "<code>: <message>", or "ok".
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status out_of_range(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
inline Status data_loss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status out_of_memory(std::string m) { return {StatusCode::kOutOfMemory, std::move(m)}; }
inline Status permission_denied(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
inline Status unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status unimplemented(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : storage_(std::move(value)) {}  // NOLINT(implicit)
  Result(Status status) : storage_(std::move(status)) {  // NOLINT(implicit)
    DJINN_ASSERT(!std::get<Status>(storage_).ok(), "a Result built from a Status must hold an error");
  }

  bool ok() const { return std::holds_alternative<T>(storage_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(storage_);
  }
  T& value() & {
    DJINN_ASSERT(ok(), "value() on an error Result: {}", status().to_string());
    return std::get<T>(storage_);
  }
  const T& value() const& {
    DJINN_ASSERT(ok(), "value() on an error Result: {}", status().to_string());
    return std::get<T>(storage_);
  }
  T&& value() && {
    DJINN_ASSERT(ok(), "value() on an error Result: {}", status().to_string());
    return std::get<T>(std::move(storage_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  std::variant<T, Status> storage_;
};

namespace detail {
inline const Status& as_status(const Status& s) { return s; }
template <typename T>
const Status& as_status(const Result<T>& r) { return r.status(); }
}  // namespace detail

}  // namespace djinn

#define DJINN_CONCAT_INNER(a, b) a##b
#define DJINN_CONCAT(a, b) DJINN_CONCAT_INNER(a, b)

#define DJINN_RETURN_IF_ERROR(expr)                                   \
  do {                                                                \
    const ::djinn::Status djinn_status_ = ::djinn::detail::as_status(expr); \
    if (!djinn_status_.ok()) return djinn_status_;                     \
  } while (0)

#define DJINN_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()

#define DJINN_ASSIGN_OR_RETURN(lhs, expr) \
  DJINN_ASSIGN_OR_RETURN_IMPL(DJINN_CONCAT(djinn_result_, __LINE__), lhs, expr)
