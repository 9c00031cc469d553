#include "hookline/json.hpp"

#include "hookline/payload.hpp"

namespace hookline {

std::string json_error_reason(const nlohmann::json::exception& e) {
  std::string_view what = e.what();
  if (what.starts_with("[json.exception.")) {
    if (const auto p = what.find("] "); p != std::string_view::npos) what.remove_prefix(p + 2);
  }
  // "parse error at line 1, column 9: ", "parse error at 12: " or "parse error: "
  if (what.starts_with("parse error")) {
    if (const auto p = what.find(": "); p != std::string_view::npos) what.remove_prefix(p + 2);
  }
  std::string out(what);
  constexpr std::string_view last_read = "; last read: '";
  if (const auto p = out.find(last_read); p != std::string::npos) {
    // The token may hold anything, "'; expected " included: keep what nlohmann expected only
    // when the message ends with one of its own token names.
    static constexpr std::string_view tokens[] = {"<uninitialized>",
                                                  "true literal",
                                                  "false literal",
                                                  "null literal",
                                                  "string literal",
                                                  "number literal",
                                                  "'['",
                                                  "'{'",
                                                  "']'",
                                                  "'}'",
                                                  "':'",
                                                  "','",
                                                  "<parse error>",
                                                  "end of input",
                                                  "'[', '{', or a literal",
                                                  "unknown token"};
    std::string kept;
    for (const auto t : tokens) {
      const std::string tail = "'; expected " + std::string(t);
      if (out.size() >= p + last_read.size() + tail.size() - 1 && out.ends_with(tail)) {
        kept = tail.substr(1);
        break;
      }
    }
    out.erase(p);
    out += kept;
  }
  return out;
}

void to_json(nlohmann::json& j, const message& m) {
  j = {{"id", m.id},
       {"subscriptionId", m.subscription_id},
       {"eventId", m.event_id},
       {"eventName", m.event_name},
       {"url", m.url},
       {"httpMethod", m.http_method},
       {"status", std::string(to_string(m.status))},
       {"attempts", m.attempts},
       {"createdAt", format_iso8601(m.created_at)},
       {"updatedAt", format_iso8601(m.updated_at)},
       {"lastStatus", m.last_status},
       {"lastError", m.last_error},
       {"ordered", m.ordered},
       {"sequence", m.sequence},
       {"bodyLength", m.body.size()}};
  j["nextAttemptAt"] = m.status == message_status::pending
                           ? nlohmann::json(format_iso8601(m.next_attempt_at))
                           : nlohmann::json(nullptr);
}

void to_json(nlohmann::json& j, const attempt_record& a) {
  j = {{"messageId", a.message_id},
       {"subscriptionId", a.subscription_id},
       {"eventId", a.event_id},
       {"eventName", a.event_name},
       {"url", a.url},
       {"httpMethod", a.http_method},
       {"attempt", a.attempt},
       {"startedAt", format_iso8601(a.started_at)},
       {"durationMs", static_cast<double>(a.duration.count()) / 1000.0},
       {"statusCode", a.status_code},
       {"success", a.success},
       {"error", a.error},
       {"requestLength", a.request_length},
       {"responseLength", a.response_length},
       {"responseHead", a.response_head}};
}

void to_json(nlohmann::json& j, const subscription_stats& s) {
  j = {{"calls", s.calls},
       {"status1xx", s.status_1xx},
       {"status2xx", s.status_2xx},
       {"status3xx", s.status_3xx},
       {"status4xx", s.status_4xx},
       {"status5xx", s.status_5xx},
       {"failures", s.failures},
       {"errors", s.errors},
       // No calls is no rate, rather than a rate of 0.
       {"successRate", s.calls ? nlohmann::json(s.success_rate()) : nlohmann::json(nullptr)},
       {"requestBytes", s.request_bytes},
       {"responseBytes", s.response_bytes}};
}

}  // namespace hookline
