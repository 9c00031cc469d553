#include "hookline/signing.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "base64.hpp"
#include "hookline/error.hpp"
#include "signer.hpp"

namespace {

using namespace std::chrono_literals;
using hookline::check_secret;
using hookline::sign;
using hookline::signature_header;
using hookline::verify;

// The Standard Webhooks reference vector (shared/reference/peers.md).
const std::string vec_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const std::string vec_id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
constexpr std::int64_t vec_ts = 1614265330;
const std::string vec_ts_text = "1614265330";
const std::string vec_body = R"({"test": 2432232314})";
const std::string vec_sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

std::chrono::system_clock::time_point at(std::int64_t unix_seconds) {
  return std::chrono::system_clock::time_point{std::chrono::seconds{unix_seconds}};
}

std::string secret_of(std::size_t bytes, char fill = 'k') {
  return "whsec_" + hookline::detail::base64_encode(std::string(bytes, fill));
}

TEST(signing, signs_the_reference_vector) {
  EXPECT_EQ(sign(vec_secret, vec_id, vec_ts, vec_body), vec_sig);
  EXPECT_EQ(signature_header({vec_secret}, vec_id, vec_ts, vec_body), vec_sig);
}

TEST(signing, verifies_the_reference_vector) {
  const auto r = verify({vec_secret}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts));
  EXPECT_TRUE(r.ok) << r.reason;
  EXPECT_TRUE(static_cast<bool>(r));
  EXPECT_EQ(r.reason, "");
}

TEST(signing, rejects_the_reference_negative_cases) {
  const auto altered = verify({vec_secret}, vec_id, vec_ts_text, vec_body,
                              "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=", at(vec_ts));
  EXPECT_FALSE(altered);
  EXPECT_EQ(altered.reason, "no matching signature");

  const auto bare = verify({vec_secret}, vec_id, vec_ts_text, vec_body, "v1,", at(vec_ts));
  EXPECT_FALSE(bare);
  EXPECT_EQ(bare.reason, "no valid v1 signature in header");

  EXPECT_THROW(sign("whsec_", vec_id, vec_ts, vec_body), hookline::error);
  EXPECT_NE(check_secret("whsec_"), "");
  const auto empty_key = verify({"whsec_"}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts));
  EXPECT_FALSE(empty_key);
  EXPECT_NE(empty_key.reason.find("secret 1"), std::string::npos) << empty_key.reason;
}

// The dispatcher keys a signer once per subscription and signs every attempt with it: each
// signature must equal the one-shot one, whatever was signed before on the same contexts.
TEST(signing, reused_signer_matches_one_shot_signatures) {
  const auto second = secret_of(48, 's');
  hookline::detail::signer s({vec_secret, second});
  EXPECT_EQ(s.header(vec_id, vec_ts, vec_body),
            vec_sig + " " + sign(second, vec_id, vec_ts, vec_body));
  const std::vector<std::string> bodies = {"", "{}", std::string(5000, 'b'), vec_body};
  std::int64_t ts = vec_ts;
  for (const auto& body : bodies) {
    const std::string id = "msg_" + std::to_string(++ts);
    EXPECT_EQ(s.header(id, ts, body),
              sign(vec_secret, id, ts, body) + " " + sign(second, id, ts, body));
  }
  EXPECT_EQ(s.header(vec_id, vec_ts, vec_body),
            signature_header({vec_secret, second}, vec_id, vec_ts, vec_body));
}

TEST(signing, signer_names_the_malformed_secret_without_echoing_it) {
  try {
    hookline::detail::signer s({vec_secret, "whsec_not*base64"});
    FAIL() << "a malformed second secret was accepted";
  } catch (const hookline::error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("signing secret 2"), std::string::npos) << what;
    EXPECT_EQ(what.find("not*base64"), std::string::npos) << what;
  }
}

TEST(signing, header_carries_one_signature_per_secret_for_rotation) {
  const auto old_secret = secret_of(32, 'o');
  const auto new_secret = secret_of(32, 'n');
  const auto header = signature_header({old_secret, new_secret}, "msg_1", vec_ts, "{}");
  EXPECT_EQ(header, sign(old_secret, "msg_1", vec_ts, "{}") + " " +
                        sign(new_secret, "msg_1", vec_ts, "{}"));
  // A receiver holding either secret (before or after rotating) accepts the message.
  EXPECT_TRUE(verify({old_secret}, "msg_1", "1614265330", "{}", header, at(vec_ts)));
  EXPECT_TRUE(verify({new_secret}, "msg_1", "1614265330", "{}", header, at(vec_ts)));
  EXPECT_TRUE(
      verify({secret_of(32, 'x'), new_secret}, "msg_1", "1614265330", "{}", header, at(vec_ts)));
  EXPECT_FALSE(verify({secret_of(32, 'x')}, "msg_1", "1614265330", "{}", header, at(vec_ts)));
  EXPECT_EQ(signature_header({}, "msg_1", vec_ts, "{}"), "");
}

TEST(signing, ignores_other_versions_and_extra_spaces) {
  const std::string header = "v1a,AAAA v2," + vec_sig.substr(3) + "   " + vec_sig + " ";
  EXPECT_TRUE(verify({vec_secret}, vec_id, vec_ts_text, vec_body, header, at(vec_ts)));
  const auto only_v2 =
      verify({vec_secret}, vec_id, vec_ts_text, vec_body, "v2," + vec_sig.substr(3), at(vec_ts));
  EXPECT_FALSE(only_v2);
  EXPECT_EQ(only_v2.reason, "no valid v1 signature in header");
}

TEST(signing, rejects_a_changed_id_body_or_timestamp) {
  const auto now = at(vec_ts);
  EXPECT_FALSE(verify({vec_secret}, "msg_other", vec_ts_text, vec_body, vec_sig, now));
  EXPECT_FALSE(verify({vec_secret}, vec_id, vec_ts_text, R"({"test": 2432232315})", vec_sig, now));
  EXPECT_FALSE(verify({vec_secret}, vec_id, vec_ts_text, vec_body + " ", vec_sig, now));
  const auto ts = verify({vec_secret}, vec_id, "1614265331", vec_body, vec_sig, now);
  EXPECT_FALSE(ts);
  EXPECT_EQ(ts.reason, "no matching signature");
}

TEST(signing, rejects_stale_and_future_timestamps) {
  const auto old = verify({vec_secret}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts + 3600));
  EXPECT_FALSE(old);
  EXPECT_EQ(old.reason, "timestamp too old");
  const auto future =
      verify({vec_secret}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts - 3600));
  EXPECT_FALSE(future);
  EXPECT_EQ(future.reason, "timestamp too far in the future");
}

TEST(signing, tolerance_edge_is_inclusive) {
  // Default tolerance is 5 minutes in both directions; sub-second parts of `now` do not count.
  EXPECT_TRUE(verify({vec_secret}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts + 300)));
  EXPECT_TRUE(
      verify({vec_secret}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts + 300) + 999ms));
  EXPECT_TRUE(verify({vec_secret}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts - 300)));
  EXPECT_FALSE(verify({vec_secret}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts + 301)));
  EXPECT_FALSE(verify({vec_secret}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts - 301)));
  EXPECT_TRUE(verify({vec_secret}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts + 3600), 1h));
  EXPECT_FALSE(verify({vec_secret}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts + 11), 10s));
}

TEST(signing, rejects_malformed_timestamps) {
  for (const std::string ts :
       {"", "abc", "-1614265330", "+1614265330", "1614265330.0", " 1614265330", "1614265330 ",
        "0x60377d32", "99999999999999999999", "9223372036854775808"}) {
    const auto r = verify({vec_secret}, vec_id, ts, vec_body, vec_sig, at(vec_ts));
    EXPECT_FALSE(r) << ts;
    EXPECT_EQ(r.reason.rfind("malformed timestamp", 0), 0u) << ts << ": " << r.reason;
  }
}

TEST(signing, rejects_malformed_headers) {
  const auto check = [](const std::string& header, const std::string& reason) {
    const auto r = verify({vec_secret}, vec_id, vec_ts_text, vec_body, header, at(vec_ts));
    EXPECT_FALSE(r) << header;
    EXPECT_EQ(r.reason, reason) << header;
  };
  check("", "no signatures in header");
  check("    ", "no signatures in header");
  check("v1", "no valid v1 signature in header");
  check("g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", "no valid v1 signature in header");
  check("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE", "no valid v1 signature in header");
  check("v1,g0hM9SsE-OTPJTGt_tmIKtSyZlE3uFJELVlNIOLJ1OE=", "no valid v1 signature in header");
  check("v1,AAAA", "no valid v1 signature in header");
  check("V1," + vec_sig.substr(3), "no valid v1 signature in header");
  check("v1," + vec_sig, "no valid v1 signature in header");
}

TEST(signing, verify_needs_a_secret) {
  const auto r = verify({}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts));
  EXPECT_FALSE(r);
  EXPECT_EQ(r.reason, "no secrets to verify against");
}

TEST(signing, a_malformed_secret_does_not_hide_a_good_one) {
  EXPECT_TRUE(
      verify({"not-a-secret", vec_secret}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts)));
  const auto r =
      verify({"whsec_bad!", secret_of(32)}, vec_id, vec_ts_text, vec_body, vec_sig, at(vec_ts));
  EXPECT_FALSE(r);
  EXPECT_EQ(r.reason.rfind("no matching signature (secret 1 ", 0), 0u) << r.reason;
  EXPECT_EQ(r.reason.find("bad!"), std::string::npos);
}

TEST(signing, check_secret_accepts_24_to_64_bytes) {
  EXPECT_EQ(check_secret(vec_secret), "");
  EXPECT_EQ(check_secret(secret_of(24)), "");
  EXPECT_EQ(check_secret(secret_of(32)), "");
  EXPECT_EQ(check_secret(secret_of(64)), "");
  EXPECT_EQ(check_secret(secret_of(23)), "key is 23 bytes; must be 24 to 64");
  EXPECT_EQ(check_secret(secret_of(65)), "key is 65 bytes; must be 24 to 64");
  EXPECT_EQ(check_secret(""), "must start with \"whsec_\"");
}

TEST(signing, check_secret_rejects_bad_encodings_without_echoing_them) {
  const auto body = hookline::detail::base64_encode(std::string(32, 's'));
  for (const std::string& bad : std::vector<std::string>{
           body, "WHSEC_" + body, "whsec" + body, " whsec_" + body, "whsec_" + body + " ",
           "whsec_" + body.substr(0, body.size() - 1),
           "whsec_" + body + "====", "whsec_" + std::string(body).replace(3, 1, "-"),
           "whsec_" + std::string(body).replace(3, 1, "_"),
           "whsec_" + std::string(body).replace(5, 1, "\n"),
           std::string("whsec_SECRETSECRET%SECRETSECRETSECRETSECRETSE=")}) {
    const auto reason = check_secret(bad);
    EXPECT_NE(reason, "") << bad;
    EXPECT_EQ(reason.find(body.substr(0, 8)), std::string::npos) << reason;
    EXPECT_EQ(reason.find("SECRET"), std::string::npos) << reason;
    try {
      sign(bad, "m", 1, "b");
      ADD_FAILURE() << "sign accepted " << bad;
    } catch (const hookline::error& e) {
      EXPECT_EQ(std::string(e.what()).find(body.substr(0, 8)), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find("SECRET"), std::string::npos) << e.what();
    }
  }
}

TEST(signing, generated_secrets_are_valid_and_distinct) {
  std::set<std::string> seen;
  for (int i = 0; i < 20; ++i) {
    const auto s = hookline::generate_secret();
    EXPECT_EQ(check_secret(s), "");
    const auto key = hookline::detail::base64_decode(s.substr(6));
    ASSERT_TRUE(key.has_value());
    EXPECT_EQ(key->size(), 32u);
    seen.insert(s);
  }
  EXPECT_EQ(seen.size(), 20u);
  const auto s = hookline::generate_secret();
  const auto sig = sign(s, "msg_x", vec_ts, "body");
  EXPECT_TRUE(verify({s}, "msg_x", vec_ts_text, "body", sig, at(vec_ts)));
}

TEST(base64, round_trips_every_length_and_byte) {
  std::string bytes;
  for (int i = 0; i < 300; ++i) {
    bytes += static_cast<char>(i * 37 % 256);
    const auto encoded = hookline::detail::base64_encode(bytes);
    EXPECT_EQ(encoded.size() % 4, 0u);
    const auto decoded = hookline::detail::base64_decode(encoded);
    ASSERT_TRUE(decoded.has_value()) << encoded;
    EXPECT_EQ(*decoded, bytes);
  }
  EXPECT_EQ(hookline::detail::base64_encode(""), "");
  EXPECT_EQ(hookline::detail::base64_encode("f"), "Zg==");
  EXPECT_EQ(hookline::detail::base64_encode("fo"), "Zm8=");
  EXPECT_EQ(hookline::detail::base64_encode("foo"), "Zm9v");
  EXPECT_EQ(hookline::detail::base64_encode("foobar"), "Zm9vYmFy");
}

TEST(base64, decoding_is_strict) {
  using hookline::detail::base64_decode;
  EXPECT_EQ(base64_decode(""), std::string());
  EXPECT_EQ(base64_decode("Zm8="), "fo");
  for (const char* bad :
       {"Zg", "Zg=", "Zg===", "Z===", "====", "Zm9", "Zm9v=", "Zm=v", "=m9v", "Zm9v Zm9v", "Zm9v\n",
        "Zm-v", "Zm_v", "Zm9v!AAA", "Zh==", "Zm9=", "Zg==Zg=="}) {
    EXPECT_FALSE(base64_decode(bad).has_value()) << bad;
  }
  std::string with_nul = "Zm9v";
  with_nul[2] = '\0';
  EXPECT_FALSE(base64_decode(with_nul).has_value());
  std::string high = "Zm9v";
  high[1] = static_cast<char>(0xC3);
  EXPECT_FALSE(base64_decode(high).has_value());
}

}  // namespace
