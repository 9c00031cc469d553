#pragma once
// JSON forms of the store's records (camelCase names, times in ISO 8601 UTC), as the `hookline`
// tool and the examples print them: `nlohmann::json j = attempt;`. Pure functions; thread safe.
// The texts inside (an error, the start of a receiver's answer) are not checked to be UTF-8: dump
// with nlohmann::json::error_handler_t::replace when they come from outside. For nlohmann::json
// (not ordered_json), like the other to_json functions of the library.

#include <nlohmann/json.hpp>

#include "hookline/store.hpp"

namespace hookline {

/// A message without its body: id, subscriptionId, eventId, eventName, url, httpMethod, status,
/// attempts, createdAt, updatedAt, nextAttemptAt (null unless pending), lastStatus, lastError,
/// ordered, sequence, bodyLength.
void to_json(nlohmann::json& j, const message& m);

/// messageId, subscriptionId, eventId, eventName, url, httpMethod, attempt, startedAt,
/// durationMs, statusCode (0 without a response), success, error, requestLength,
/// responseLength, responseHead.
void to_json(nlohmann::json& j, const attempt_record& a);

/// calls, status1xx ... status5xx, failures, errors, successRate (0 to 1; null without calls),
/// requestBytes, responseBytes.
void to_json(nlohmann::json& j, const subscription_stats& s);

/// Why nlohmann rejected some JSON, without its id prefix, its position and the text it last
/// read, which may be part of a secret or a header value (`invalid string: control character
/// U+0009 (HT) must be escaped...; expected ...`). Give the position yourself (parse_error::byte).
std::string json_error_reason(const nlohmann::json::exception& e);

}  // namespace hookline
