#pragma once
// Thread safety: value types; safe to copy and read from any thread.

#include <stdexcept>
#include <string>
#include <vector>

namespace hookline {

/// One invalid field: `field` names it as it appears in the JSON (camelCase, with a path such as
/// `filter.contentTypes[1].events[0]` or `headers.X-Api-Key`), `reason` says what is wrong.
struct field_error {
  std::string field;
  std::string reason;
  bool operator==(const field_error&) const = default;
};

/// The one exception type for misuse and invalid input.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Thrown when a value (a subscription, an event) fails validation; lists every invalid field.
class validation_error : public error {
 public:
  validation_error(std::string subject, std::vector<field_error> errors);
  const std::string& subject() const noexcept { return subject_; }
  const std::vector<field_error>& errors() const noexcept { return errors_; }

 private:
  std::string subject_;
  std::vector<field_error> errors_;
};

/// "url: must be http or https; secret: too short" — every error on one line.
std::string describe(const std::vector<field_error>& errors);

}  // namespace hookline
