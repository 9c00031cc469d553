#pragma once
// Thread safety: value types; the free functions are reentrant.

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "hookline/error.hpp"
#include "hookline/event.hpp"
#include "hookline/filter.hpp"

namespace hookline {

/// A webhook subscription (sensenet's WebHookSubscription plus what a production sender needs).
struct subscription {
  std::string id;  ///< unique; required
  std::string name;
  std::string url;                   ///< http or https with a host
  std::string http_method = "POST";  ///< any HTTP token, sent upper-cased; GET carries no body
  bool enabled = true;
  /// Extra request headers in order. Names/values may not hold CR, LF or NUL; reserved names
  /// (Host, Content-Length, Transfer-Encoding, Connection, webhook-id, webhook-timestamp,
  /// webhook-signature; any case, `_` read as `-`) are refused.
  std::vector<std::pair<std::string, std::string>> headers;
  /// Signing secrets, `whsec_` + base64 of 24..64 bytes. Several at once during rotation: each
  /// produces one signature. Empty = unsigned (sensenet behaviour).
  std::vector<std::string> secrets;
  hookline::filter filter;
  /// Custom payload: JSON object text merged over the default body. May hold @@templates@@,
  /// inside strings or bare (sensenet style `{"user": @@currentuser@@}`). Empty = none.
  std::string payload;
  /// Deliver this subscription's messages one at a time in publish order.
  bool ordered = false;
  /// Per-endpoint rate limit in messages per second (0 = unlimited).
  double rate_limit = 0;
  /// mTLS: PEM client certificate and key files (both or neither).
  std::string client_cert;
  std::string client_key;
  /// Problems found while parsing JSON (e.g. a filter string that is not JSON). validate()
  /// reports them together with the semantic checks. Not serialised.
  std::vector<field_error> parse_errors;

  bool operator==(const subscription&) const = default;
};

/// Parses a subscription. Keys in camelCase (id, name, url, httpMethod, enabled, headers, secret
/// or secrets, filter, payload, ordered, rateLimit, clientCert, clientKey) or sensenet's names
/// (Id, Name, WebHookUrl, WebHookHttpMethod, WebHookFilter, WebHookHeaders, WebHookPayload,
/// Enabled). filter/headers/payload may be JSON or a string holding JSON. Problems with a field
/// are recorded in parse_errors (the rest is still parsed); throws hookline::error only when `j`
/// is not a JSON object.
subscription subscription_from_json(const nlohmann::json& j);

/// camelCase JSON; round-trips through subscription_from_json.
nlohmann::json subscription_to_json(const subscription& s);

/// Every invalid field with a reason (empty = valid): parse errors, id, url, httpMethod,
/// headers, secrets, filter (path, content types, event names against `catalog`), payload,
/// rateLimit, clientCert/clientKey.
std::vector<field_error> validate(const subscription& s, const event_catalog& catalog = {});

}  // namespace hookline
