#include "hookline/store.hpp"

#include <algorithm>
#include <cctype>
#include <string>

namespace hookline {

std::string_view to_string(message_status s) {
  switch (s) {
    case message_status::pending:
      return "pending";
    case message_status::delivered:
      return "delivered";
    case message_status::dead:
      return "dead";
  }
  return "unknown";
}

void delivery_store::record_results(std::vector<attempt_result>& results) {
  for (const auto& r : results) {
    if (r.retry_at) {
      reschedule(r.message_id, *r.retry_at, r.attempt);
    } else {
      complete(r.message_id, r.attempt);
    }
  }
}

std::optional<message_status> parse_message_status(std::string_view s) {
  std::string lower(s);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  if (lower == "pending") return message_status::pending;
  if (lower == "delivered") return message_status::delivered;
  if (lower == "dead") return message_status::dead;
  return std::nullopt;
}

}  // namespace hookline
