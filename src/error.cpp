#include "hookline/error.hpp"

namespace hookline {

std::string describe(const std::vector<field_error>& errors) {
  std::string out;
  for (const auto& e : errors) {
    if (!out.empty()) out += "; ";
    out += e.field;
    out += ": ";
    out += e.reason;
  }
  return out;
}

validation_error::validation_error(std::string subject, std::vector<field_error> errors)
    : error(subject + " is invalid: " + describe(errors)),
      subject_(std::move(subject)),
      errors_(std::move(errors)) {}

}  // namespace hookline
