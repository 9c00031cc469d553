#include "hookline/signing.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <limits>
#include <optional>

#include "base64.hpp"
#include "hookline/error.hpp"
#include "signer.hpp"

namespace hookline {
namespace {

constexpr std::string_view secret_prefix = "whsec_";
constexpr std::size_t min_key_bytes = 24;
constexpr std::size_t max_key_bytes = 64;
constexpr std::size_t mac_bytes = 32;  // SHA-256

using mac = std::array<unsigned char, mac_bytes>;

// Wipes the decoded key when it goes out of scope, so key bytes do not linger on the heap.
struct key_bytes {
  std::string bytes;
  key_bytes() = default;
  key_bytes(const key_bytes&) = delete;
  key_bytes& operator=(const key_bytes&) = delete;
  ~key_bytes() {
    if (!bytes.empty()) OPENSSL_cleanse(bytes.data(), bytes.size());
  }
};

// The reason a secret is malformed, or empty; fills `key` when valid. Never mentions the secret.
std::string decode_secret(std::string_view secret, key_bytes& key) {
  if (secret.substr(0, secret_prefix.size()) != secret_prefix) {
    return "must start with \"whsec_\"";
  }
  const auto encoded = secret.substr(secret_prefix.size());
  if (encoded.empty()) return "has no key after \"whsec_\"";
  auto decoded = detail::base64_decode(encoded);
  if (!decoded) {
    return "key after \"whsec_\" is not valid base64 (standard alphabet, padded to a multiple of "
           "4)";
  }
  key.bytes = std::move(*decoded);
  if (key.bytes.size() < min_key_bytes || key.bytes.size() > max_key_bytes) {
    auto reason = "key is " + std::to_string(key.bytes.size()) + " bytes; must be 24 to 64";
    OPENSSL_cleanse(key.bytes.data(), key.bytes.size());
    key.bytes.clear();
    return reason;
  }
  return {};
}

mac compute(const key_bytes& key, std::string_view msg_id, std::string_view timestamp,
            std::string_view body) {
  std::string message;
  message.reserve(msg_id.size() + timestamp.size() + body.size() + 2);
  message.append(msg_id).append(1, '.').append(timestamp).append(1, '.').append(body);
  mac out{};
  unsigned int len = 0;
  const auto* ok = HMAC(EVP_sha256(), key.bytes.data(), static_cast<int>(key.bytes.size()),
                        reinterpret_cast<const unsigned char*>(message.data()), message.size(),
                        out.data(), &len);
  if (ok == nullptr || len != mac_bytes) throw error("signing: HMAC-SHA256 failed in OpenSSL");
  return out;
}

std::optional<std::int64_t> parse_timestamp(std::string_view text) {
  if (text.empty() || text.size() > 19) return std::nullopt;
  std::int64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;  // no sign, no spaces, no fraction
  }
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

}  // namespace

std::string sign(std::string_view secret, std::string_view msg_id, std::int64_t timestamp,
                 std::string_view body) {
  key_bytes key;
  if (auto reason = decode_secret(secret, key); !reason.empty()) {
    throw error("signing secret " + reason);
  }
  const auto m = compute(key, msg_id, std::to_string(timestamp), body);
  return "v1," +
         detail::base64_encode(std::string_view(reinterpret_cast<const char*>(m.data()), m.size()));
}

std::string signature_header(const std::vector<std::string>& secrets, std::string_view msg_id,
                             std::int64_t timestamp, std::string_view body) {
  return detail::signer(secrets).header(msg_id, timestamp, body);
}

namespace detail {

// An HMAC-SHA256 context keyed once; EVP_MAC_init without a key restarts it from the stored
// inner and outer pads.
struct signer::keyed {
  EVP_MAC_CTX* ctx = nullptr;
  keyed() = default;
  keyed(const keyed&) = delete;
  keyed& operator=(const keyed&) = delete;
  ~keyed() { EVP_MAC_CTX_free(ctx); }
};

namespace {

EVP_MAC* hmac_algorithm() {
  // Fetched once for the process (OpenSSL keeps it alive until exit).
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (mac == nullptr) throw error("signing: OpenSSL has no HMAC");
  return mac;
}

}  // namespace

signer::signer(const std::vector<std::string>& secrets) {
  for (std::size_t i = 0; i < secrets.size(); ++i) {
    key_bytes key;
    if (auto reason = decode_secret(secrets[i], key); !reason.empty()) {
      throw error("signing secret " + std::to_string(i + 1) + " " + reason);
    }
    auto k = std::make_unique<keyed>();
    k->ctx = EVP_MAC_CTX_new(hmac_algorithm());
    char digest[] = "SHA256";
    const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                                 OSSL_PARAM_END};
    if (k->ctx == nullptr ||
        EVP_MAC_init(k->ctx, reinterpret_cast<const unsigned char*>(key.bytes.data()),
                     key.bytes.size(), params) != 1) {
      throw error("signing: HMAC-SHA256 setup failed in OpenSSL");
    }
    keys_.push_back(std::move(k));
  }
}

signer::~signer() = default;

std::string signer::header(std::string_view msg_id, std::int64_t timestamp, std::string_view body) {
  std::string out;
  append_header(out, msg_id, timestamp, body);
  return out;
}

void signer::append_header(std::string& out, std::string_view msg_id, std::int64_t timestamp,
                           std::string_view body) {
  char ts[24];
  const auto [end, ec] = std::to_chars(std::begin(ts), std::end(ts), timestamp);
  const std::string_view ts_text(ts, static_cast<std::size_t>(end - ts));
  const auto feed = [](EVP_MAC_CTX* c, std::string_view part) {
    return EVP_MAC_update(c, reinterpret_cast<const unsigned char*>(part.data()), part.size());
  };
  const std::size_t start = out.size();
  out.reserve(start + keys_.size() * 48);
  for (const auto& k : keys_) {
    mac m{};
    std::size_t len = 0;
    if (EVP_MAC_init(k->ctx, nullptr, 0, nullptr) != 1 || feed(k->ctx, msg_id) != 1 ||
        feed(k->ctx, ".") != 1 || feed(k->ctx, ts_text) != 1 || feed(k->ctx, ".") != 1 ||
        feed(k->ctx, body) != 1 || EVP_MAC_final(k->ctx, m.data(), &len, m.size()) != 1 ||
        len != mac_bytes) {
      throw error("signing: HMAC-SHA256 failed in OpenSSL");
    }
    if (out.size() > start) out += ' ';
    out += "v1,";
    base64_append(out, std::string_view(reinterpret_cast<const char*>(m.data()), m.size()));
  }
}

}  // namespace detail

verify_result verify(const std::vector<std::string>& secrets, std::string_view msg_id,
                     std::string_view timestamp, std::string_view body,
                     std::string_view signature_header, std::chrono::system_clock::time_point now,
                     std::chrono::seconds tolerance) {
  const auto fail = [](std::string reason) { return verify_result{false, std::move(reason)}; };
  if (secrets.empty()) return fail("no secrets to verify against");

  const auto ts = parse_timestamp(timestamp);
  if (!ts) return fail("malformed timestamp (must be whole seconds since the Unix epoch)");
  const auto now_s = std::chrono::floor<std::chrono::seconds>(now.time_since_epoch()).count();
  const auto tol = tolerance.count();
  if (*ts < now_s && now_s - *ts > tol) return fail("timestamp too old");
  if (*ts > now_s && *ts - now_s > tol) return fail("timestamp too far in the future");

  // Collect the v1 signatures first: an unusable header is reported as such, not as a mismatch.
  std::vector<std::string> candidates;
  bool any_entry = false;
  std::size_t pos = 0;
  while (pos < signature_header.size()) {
    const auto end = std::min(signature_header.find(' ', pos), signature_header.size());
    const auto entry = signature_header.substr(pos, end - pos);
    pos = end + 1;
    if (entry.empty()) continue;
    any_entry = true;
    const auto comma = entry.find(',');
    if (comma == std::string_view::npos || entry.substr(0, comma) != "v1") continue;
    auto decoded = detail::base64_decode(entry.substr(comma + 1));
    if (decoded && decoded->size() == mac_bytes) candidates.push_back(std::move(*decoded));
  }
  if (!any_entry) return fail("no signatures in header");
  if (candidates.empty()) return fail("no valid v1 signature in header");

  std::string bad_secrets;
  bool matched = false;
  for (std::size_t i = 0; i < secrets.size(); ++i) {
    key_bytes key;
    if (auto reason = decode_secret(secrets[i], key); !reason.empty()) {
      if (!bad_secrets.empty()) bad_secrets += "; ";
      bad_secrets += "secret " + std::to_string(i + 1) + " " + reason;
      continue;
    }
    const auto expected = compute(key, msg_id, timestamp, body);
    // Check every candidate without an early exit, so timing does not reveal which one matched.
    for (const auto& c : candidates) {
      if (CRYPTO_memcmp(expected.data(), c.data(), mac_bytes) == 0) matched = true;
    }
  }
  if (matched) return verify_result{true, {}};
  if (!bad_secrets.empty()) return fail("no matching signature (" + bad_secrets + ")");
  return fail("no matching signature");
}

std::string check_secret(std::string_view secret) {
  key_bytes key;
  return decode_secret(secret, key);
}

std::string generate_secret() {
  std::array<unsigned char, 32> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) {
    throw error("generate_secret: OpenSSL RAND_bytes failed");
  }
  std::string out(secret_prefix);
  out += detail::base64_encode(
      std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  OPENSSL_cleanse(bytes.data(), bytes.size());
  return out;
}

}  // namespace hookline
