#pragma once
// Building a delivery request and classifying its outcome. Thread safety: reentrant.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "hookline/hookline.hpp"
#include "transport/transport.hpp"

namespace hookline::detail {

class signer;

/// Makes `req` the HTTP request for one attempt of `m` to `sub`, signed with `timestamp` (unix
/// seconds) by `keys` (sub's secrets, keyed once; when null they are decoded for this request
/// alone). `req` may be a used request: its buffers are reused, every field but token and group
/// is set. Throws hookline::error when a secret is malformed (the text never holds the secret).
void build_request(http_request& req, const message& m, const subscription& sub,
                   std::int64_t timestamp, const delivery_options& d, signer* keys = nullptr);

struct outcome {
  enum class kind {
    success,    ///< 2xx
    retry,      ///< 408, 425, 429, 5xx, timeout, network and TLS errors
    permanent,  ///< 3xx, other 4xx, SSRF refusal, invalid request
    gone,       ///< 410: permanent, and the subscription is disabled
    cancelled   ///< the transport stopped first: no attempt happened
  };
  kind k = kind::success;
  std::string reason;  ///< empty on success
  /// Counts against the endpoint's circuit breaker (the endpoint looks unhealthy).
  bool unhealthy = false;
  std::optional<duration> retry_after;
};

/// DESIGN.md's outcome classification. A redirect's reason names its target (loggable_url).
outcome classify(const http_response& r, time_point now);

/// A URL as it may appear in a log line or a failure reason: no user info, query or fragment
/// (they may hold credentials).
std::string loggable_url(std::string_view url);

}  // namespace hookline::detail
