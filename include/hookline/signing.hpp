#pragma once
// Thread safety: reentrant free functions.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hookline {

/// Standard Webhooks signature of `id.timestamp.body` with one secret (`whsec_` + base64 key):
/// "v1,<base64 HMAC-SHA256>". Throws hookline::error for a malformed secret (never echoing it).
std::string sign(std::string_view secret, std::string_view msg_id, std::int64_t timestamp,
                 std::string_view body);

/// The `webhook-signature` header value: one signature per secret, space-separated.
std::string signature_header(const std::vector<std::string>& secrets, std::string_view msg_id,
                             std::int64_t timestamp, std::string_view body);

struct verify_result {
  bool ok = false;
  std::string reason;  ///< why it failed; empty when ok
  explicit operator bool() const noexcept { return ok; }
};

/// Verifies a `webhook-signature` header (any one of its space-separated `v1,` signatures,
/// against any of `secrets`, compared in constant time) and that `timestamp` is within
/// `tolerance` of `now`.
verify_result verify(const std::vector<std::string>& secrets, std::string_view msg_id,
                     std::string_view timestamp, std::string_view body,
                     std::string_view signature_header,
                     std::chrono::system_clock::time_point now = std::chrono::system_clock::now(),
                     std::chrono::seconds tolerance = std::chrono::minutes(5));

/// Empty when `secret` is `whsec_` + base64 of 24 to 64 bytes, else the reason.
std::string check_secret(std::string_view secret);

/// A new random secret (32 bytes from OpenSSL's RAND_bytes).
std::string generate_secret();

}  // namespace hookline
