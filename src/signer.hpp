#pragma once
// Signing many messages with the same secrets. Thread safety: one signer per thread (it keeps
// one HMAC context per secret and reuses it).

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace hookline::detail {

/// The secrets of one subscription, decoded and keyed once: each signature then costs the HMAC
/// alone instead of a base64 decode, a digest lookup and a key schedule.
class signer {
 public:
  /// Throws hookline::error naming the position and the problem of a malformed secret (never
  /// its text), like hookline::signature_header.
  explicit signer(const std::vector<std::string>& secrets);
  ~signer();
  signer(const signer&) = delete;
  signer& operator=(const signer&) = delete;

  /// The `webhook-signature` value, the same as hookline::signature_header(secrets, ...).
  std::string header(std::string_view msg_id, std::int64_t timestamp, std::string_view body);
  /// Appends the same value to `out` (which may already hold other text).
  void append_header(std::string& out, std::string_view msg_id, std::int64_t timestamp,
                     std::string_view body);

 private:
  struct keyed;
  std::vector<std::unique_ptr<keyed>> keys_;
};

}  // namespace hookline::detail
