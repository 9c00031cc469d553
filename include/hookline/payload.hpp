#pragma once
// Thread safety: reentrant free functions.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "hookline/event.hpp"
#include "hookline/subscription.hpp"

namespace hookline {

struct render_context {
  std::chrono::system_clock::time_point now = std::chrono::system_clock::now();
  std::string repository;  ///< sensenet's `repository`: the hub's `repository` option
};

/// sensenet's default body: nodeId, versionId, version, previousVersion,
/// versionModificationDate, modifiedBy, path, name, displayName, eventName, subscriptionId,
/// sentTime (ISO 8601 UTC), repository, changedFields.
nlohmann::json default_payload(const event& e, std::string_view subscription_id,
                               const render_context& ctx);

/// Expands @@templates@@ in a custom payload text and parses it into a JSON object. Templates,
/// as sensenet's: currentuser (the event's user; a whole number becomes a JSON number),
/// currentdate, currentday and today (today's midnight UTC), currenttime (now), all four in
/// .NET's round-trip form (2024-01-31T00:00:00.0000000Z); content (node id) and
/// content.Field.Chain (from the event's fields and data), eventname, repository. Date arithmetic:
/// `+N[unit]` / `-N[unit]` or `.AddDays(N)`-style methods (Add, Plus, Minus, Subtract, Substract),
/// units s/sec/secs/second(s), m/mins/minute(s), h/hour(s), d/day(s), workdays, w/week(s),
/// month(s), y/year(s); no unit means days (minutes for currenttime); months and years clamp the
/// day to the month's end. Names match case-insensitively. Inside a JSON string the value is
/// escaped (missing -> empty); outside one it becomes a complete JSON value (missing -> null).
/// Values are never re-scanned, so a value that looks like a template stays literal. Unknown
/// templates are left as written (outside a string, as a JSON string holding the template text).
/// Blank text gives an empty object. Throws hookline::error if the result is not valid JSON or
/// not an object.
nlohmann::json expand_payload(std::string_view payload_text, const event& e,
                              const render_context& ctx);

/// The request body: the default payload with the subscription's custom payload merged over it
/// as sensenet does (Json.NET's Merge: same-name keys replaced, but a null keeps the default
/// value and an array is appended to an array), serialised.
std::string render_body(const event& e, const subscription& s, const render_context& ctx);

/// Checks that a payload text is a JSON object once templates are expanded (used by validate()).
/// Returns an empty string when valid, else the reason.
std::string check_payload(std::string_view payload_text);

/// ISO 8601 UTC with milliseconds, e.g. 2026-11-27T08:21:13.123Z.
std::string format_iso8601(std::chrono::system_clock::time_point t);
/// Parses ISO 8601 / RFC 3339: a date (midnight UTC) or a date-time `YYYY-MM-DDTHH:MM[:SS[.f]]`
/// with `Z`, `+hh:mm`, `+hhmm`, `+hh` or no offset (read as UTC); nullopt if invalid.
std::optional<std::chrono::system_clock::time_point> parse_iso8601(std::string_view s);

}  // namespace hookline
