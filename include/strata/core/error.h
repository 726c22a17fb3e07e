// strata::Error: the one error type. It carries a message meant for the user
// ("op add: shapes [2, 3] and [4] are not broadcastable") and a context chain
// that callers extend as the error travels up ("while loading recipe x.yaml: ...").
// The source location is kept apart and printed only when STRATA_DEBUG is set.
#pragma once

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace strata {

class Error : public std::runtime_error {
 public:
  explicit Error(std::string message, std::string where = {})
      : std::runtime_error(message), message_(std::move(message)), where_(std::move(where)) {}

  // Prepends "while <context>: " and returns the same error, for rethrowing.
  Error& add_context(const std::string& context) {
    message_ = "while " + context + ": " + message_;
    return *this;
  }
  const char* what() const noexcept override { return message_.c_str(); }
  const std::string& message() const { return message_; }
  const std::string& where() const { return where_; }

 private:
  std::string message_;
  std::string where_;
};

namespace detail {
[[noreturn]] void throw_error(const char* file, int line, std::string message);
}  // namespace detail

// Runs body(); a strata::Error escaping it gets "while <context>: " prepended.
template <class Body>
decltype(auto) with_context(const std::string& context, Body&& body) {
  try {
    return std::forward<Body>(body)();
  } catch (Error& error) {
    error.add_context(context);
    throw;
  }
}

}  // namespace strata

#define STRATA_FAIL(...) ::strata::detail::throw_error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))
#define STRATA_CHECK(cond, ...)    \
  do {                             \
    if (!(cond)) [[unlikely]] {    \
      STRATA_FAIL(__VA_ARGS__);    \
    }                              \
  } while (0)
