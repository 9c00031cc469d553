// The JSON forms of messages, attempts and statistics (hookline/json.hpp) that the command line
// tool and the content server print.
#include "hookline/json.hpp"

#include <gtest/gtest.h>

#include <chrono>

#include "store_test_util.hpp"

namespace hookline {
namespace {

using namespace std::chrono_literals;

const time_point t0 = time_point{} + std::chrono::seconds(1795781541) + 250ms;

TEST(json, a_message_carries_its_metadata_and_body_length_but_not_the_body) {
  auto m = test::make_message("msg_1", "crm", t0);
  m.sequence = 7;
  m.last_status = 503;
  m.last_error = "HTTP 503";
  nlohmann::json j = m;
  EXPECT_EQ(j["id"], "msg_1");
  EXPECT_EQ(j["subscriptionId"], "crm");
  EXPECT_EQ(j["status"], "pending");
  EXPECT_EQ(j["nextAttemptAt"], "2026-11-27T12:12:21.250Z");
  EXPECT_EQ(j["createdAt"], "2026-11-27T12:12:21.250Z");
  EXPECT_EQ(j["lastStatus"], 503);
  EXPECT_EQ(j["lastError"], "HTTP 503");
  EXPECT_EQ(j["sequence"], 7);
  EXPECT_EQ(j["bodyLength"], m.body.size());
  EXPECT_FALSE(j.contains("body"));
  m.status = message_status::delivered;
  j = m;
  EXPECT_EQ(j["status"], "delivered");
  EXPECT_TRUE(j["nextAttemptAt"].is_null()) << "only a pending message has a next attempt";
}

TEST(json, an_attempt_carries_its_outcome_and_the_receivers_answer) {
  const auto m = test::make_message("msg_1", "crm", t0);
  auto a = test::make_attempt(m, 2, 0, t0, false);
  a.duration = std::chrono::microseconds(1500);
  a.response_head = "busy";
  const nlohmann::json j = a;
  EXPECT_EQ(j["messageId"], "msg_1");
  EXPECT_EQ(j["subscriptionId"], "crm");
  EXPECT_EQ(j["attempt"], 2);
  EXPECT_EQ(j["statusCode"], 0);
  EXPECT_EQ(j["success"], false);
  EXPECT_EQ(j["error"], "connection refused");
  EXPECT_DOUBLE_EQ(j["durationMs"].get<double>(), 1.5);
  EXPECT_EQ(j["startedAt"], "2026-11-27T12:12:21.250Z");
  EXPECT_EQ(j["responseHead"], "busy");
  // A receiver's answer need not be UTF-8: dumped with `replace`, it still goes out.
  a.response_head = "caf\xC3";
  const nlohmann::json bad = a;
  EXPECT_NE(
      bad.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).find("caf\xEF\xBF\xBD"),
      std::string::npos);
}

TEST(json, statistics_have_no_success_rate_without_calls) {
  subscription_stats s;
  nlohmann::json j = s;
  EXPECT_EQ(j["calls"], 0);
  EXPECT_TRUE(j["successRate"].is_null());
  s.calls = 4;
  s.status_2xx = 3;
  s.status_5xx = 1;
  s.failures = 1;
  j = s;
  EXPECT_DOUBLE_EQ(j["successRate"].get<double>(), 0.75);
  EXPECT_EQ(j["status5xx"], 1);
  EXPECT_EQ(j["failures"], 1);
}

// nlohmann ends a syntax error with the text it last read, which may be a secret pasted with a
// stray character; the reason keeps what it expected only when that is one of its token names.
TEST(json, error_reasons_never_repeat_the_text_the_parser_read) {
  const auto reason = [](const std::string& text) {
    try {
      const auto parsed = nlohmann::json::parse(text);
      ADD_FAILURE() << "parsed: " << parsed.dump();
      return std::string();
    } catch (const nlohmann::json::exception& e) {
      return json_error_reason(e);
    }
  };
  auto r = reason("{\"secret\": \"whsec_MfKQ9r8GKYqr\t\"}");
  EXPECT_EQ(r.find("MfKQ9r8"), std::string::npos) << r;
  EXPECT_NE(r.find("control character U+0009"), std::string::npos) << r;
  EXPECT_EQ(r.find("[json.exception"), std::string::npos) << r;
  // A token that imitates the "; expected ..." tail is cut too.
  r = reason("{\"x\": \"a'; expected SECRETTAIL\t\"}");
  EXPECT_EQ(r.find("SECRETTAIL"), std::string::npos) << r;
  // What nlohmann expected, when it says, stays.
  r = reason("{\"a\": 1 x}");
  EXPECT_NE(r.find("expected '}'"), std::string::npos) << r;
}

}  // namespace
}  // namespace hookline
