#include "hookline/subscription.hpp"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "hookline/error.hpp"
#include "hookline/filter.hpp"

namespace {

using namespace hookline;
using nlohmann::json;

const std::string good_secret = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

subscription valid() {
  subscription s;
  s.id = "sub-1";
  s.url = "https://hooks.example.com/in";
  s.filter.path = "/Root/Content";
  s.filter.content_types = {{"File", {"Create", "Modify"}}};
  return s;
}

std::vector<std::string> fields(const std::vector<field_error>& errors) {
  std::vector<std::string> out;
  for (const auto& e : errors) out.push_back(e.field);
  return out;
}

using strings = std::vector<std::string>;

std::string reason_for(const std::vector<field_error>& errors, const std::string& field) {
  for (const auto& e : errors)
    if (e.field == field) return e.reason;
  return {};
}

// --- JSON in/out -----------------------------------------------------------------------------

TEST(subscription, parses_camel_case_json) {
  auto s = subscription_from_json(json::parse(R"({
    "id": "sub-1", "name": "docs", "url": "https://hooks.example.com/in", "httpMethod": "PATCH",
    "enabled": false, "headers": {"X-Api-Key": "k"}, "secret": ")" +
                                              good_secret + R"(",
    "filter": {"path": "/Root/Content", "triggersForAllEvents": true, "includeSubtypes": true,
               "contentTypes": [{"name": "File", "events": ["Create", "Modify"]},
                                {"name": "Folder", "events": ["All"]}]},
    "payload": {"user": "@@currentuser@@"}, "ordered": true, "rateLimit": 5,
    "clientCert": "/c.pem", "clientKey": "/k.pem"})"));
  EXPECT_TRUE(s.parse_errors.empty()) << describe(s.parse_errors);
  EXPECT_EQ(s.id, "sub-1");
  EXPECT_EQ(s.name, "docs");
  EXPECT_EQ(s.http_method, "PATCH");
  EXPECT_FALSE(s.enabled);
  ASSERT_EQ(s.headers.size(), 1u);
  EXPECT_EQ(s.headers[0], (std::pair<std::string, std::string>{"X-Api-Key", "k"}));
  EXPECT_EQ(s.secrets, strings{good_secret});
  EXPECT_EQ(s.filter.path, "/Root/Content");
  EXPECT_TRUE(s.filter.triggers_for_all_events);
  EXPECT_TRUE(s.filter.include_subtypes);
  ASSERT_EQ(s.filter.content_types.size(), 2u);
  EXPECT_EQ(s.filter.content_types[1], (content_type_filter{"Folder", {"All"}}));
  EXPECT_EQ(json::parse(s.payload), json({{"user", "@@currentuser@@"}}));
  EXPECT_TRUE(s.ordered);
  EXPECT_EQ(s.rate_limit, 5);
  EXPECT_EQ(s.client_cert, "/c.pem");
  EXPECT_TRUE(validate(s).empty()) << describe(validate(s));
}

TEST(subscription, parses_a_sensenet_export_with_json_held_in_strings) {
  auto s = subscription_from_json(json::parse(R"({
    "Id": 1187, "Name": "order-hook", "Type": "WebHookSubscription",
    "WebHookUrl": "https://hooks.example.com/orders", "WebHookHttpMethod": ["PUT"],
    "Enabled": true, "IsValid": true, "InvalidFields": "",
    "WebHookFilter": "{\"Path\":\"/Root/Content/Orders\",\"ContentTypes\":[{\"Name\":\"Folder\",\"Events\":[\"Create\"]},{\"Name\":\"File\",\"Events\":[\"Create\",\"Modify\",\"Approve\"]}],\"TriggersForAllEvents\":false}",
    "WebHookHeaders": "{\"X-Custom\":\"abc\",\"X-Other\":\"def\"}",
    "WebHookPayload": "{\"currentuser\": @@currentuser@@, \"filepath\": \"@@content.Path@@\"}"})"));
  EXPECT_TRUE(s.parse_errors.empty()) << describe(s.parse_errors);
  EXPECT_EQ(s.id, "1187");
  EXPECT_EQ(s.name, "order-hook");
  EXPECT_EQ(s.url, "https://hooks.example.com/orders");
  EXPECT_EQ(s.http_method, "PUT");
  EXPECT_EQ(s.filter.path, "/Root/Content/Orders");
  ASSERT_EQ(s.filter.content_types.size(), 2u);
  EXPECT_EQ(s.filter.content_types[1],
            (content_type_filter{"File", {"Create", "Modify", "Approve"}}));
  ASSERT_EQ(s.headers.size(), 2u);
  EXPECT_EQ(s.headers[1].second, "def");
  EXPECT_EQ(s.payload, R"({"currentuser": @@currentuser@@, "filepath": "@@content.Path@@"})");
  EXPECT_TRUE(validate(s).empty()) << describe(validate(s));
}

TEST(subscription, sensenet_name_serves_as_id_when_there_is_none) {
  auto s = subscription_from_json(json{{"Name", "hook-a"}, {"WebHookUrl", "https://h/"}});
  EXPECT_EQ(s.id, "hook-a");
  EXPECT_EQ(s.name, "hook-a");
}

TEST(subscription, filter_accepts_pascal_case_and_camel_case_keys) {
  filter a = json::parse(R"({"Path": "/Root/X", "TriggersForAllEvents": true,
                             "ContentTypes": [{"Name": "File", "Events": ["Create"]}]})");
  filter b = json::parse(R"({"path": "/Root/X", "triggersForAllEvents": true,
                             "contentTypes": [{"name": "File", "events": ["Create"]}]})");
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.path, "/Root/X");
  EXPECT_TRUE(a.triggers_for_all_events);
  filter empty = json::object();
  EXPECT_EQ(empty.path, "/Root");
  EXPECT_TRUE(empty.content_types.empty());
  EXPECT_THROW((void)json::parse(R"({"contentTypes": [{"events": "Create"}]})").get<filter>(),
               validation_error);
}

TEST(subscription, round_trips_through_json) {
  auto s = valid();
  s.name = "docs";
  s.http_method = "PUT";
  s.enabled = false;
  s.headers = {{"X-Z", "last"}, {"X-A", "first"}, {"X-A", "again"}};  // order and repeats kept
  s.secrets = {good_secret, good_secret};
  s.filter.include_subtypes = true;
  s.filter.triggers_for_all_events = true;
  s.payload = R"({"user": @@currentuser@@})";
  s.ordered = true;
  s.rate_limit = 0.5;
  s.client_cert = "/c.pem";
  s.client_key = "/k.pem";
  const json j = subscription_to_json(s);
  EXPECT_EQ(subscription_from_json(j), s);
  EXPECT_EQ(subscription_from_json(json::parse(j.dump())), s);

  auto plain = valid();
  plain.headers = {{"A", "1"}, {"B", "2"}};
  plain.payload = R"({"a":1})";
  const json pj = subscription_to_json(plain);
  EXPECT_TRUE(pj["headers"].is_object());
  EXPECT_TRUE(pj["payload"].is_object());
  EXPECT_EQ(subscription_from_json(pj), plain);
}

TEST(subscription, a_broken_field_is_recorded_and_the_rest_still_parsed) {
  auto s = subscription_from_json(json::parse(R"({
    "id": "x", "url": "https://h/", "enabled": "yes", "headers": 5,
    "WebHookFilter": "{\"Path\": \"/Root\", ", "payload": [1], "rateLimit": "fast",
    "secrets": ["a", 7], "name": "kept"})"));
  EXPECT_EQ(fields(s.parse_errors),
            (strings{"enabled", "headers", "secrets[1]", "filter", "payload", "rateLimit"}));
  EXPECT_EQ(s.name, "kept");
  EXPECT_EQ(s.url, "https://h/");
  EXPECT_NE(reason_for(s.parse_errors, "filter").find("not valid JSON"), std::string::npos);
  // A string other than "true"/"false" is named, and the strings that work are too.
  EXPECT_EQ(reason_for(s.parse_errors, "enabled"),
            R"(must be true or false (or the string "true" or "false"), not "yes")");
  // validate() reports parse errors together with the semantic checks.
  auto errors = validate(s);
  EXPECT_EQ(reason_for(errors, "filter"), reason_for(s.parse_errors, "filter"));
  EXPECT_NE(reason_for(errors, "secrets[0]"), "");
}

TEST(subscription, conflicting_spellings_of_one_field_are_reported) {
  auto s = subscription_from_json(
      json{{"id", "x"}, {"url", "https://a/"}, {"WebHookUrl", "https://b/"}});
  EXPECT_EQ(fields(s.parse_errors), strings{"url"});
  EXPECT_EQ(s.url, "https://a/");
  auto same = subscription_from_json(
      json{{"id", "x"}, {"url", "https://a/"}, {"WebHookUrl", "https://a/"}});
  EXPECT_TRUE(same.parse_errors.empty());
}

TEST(subscription, secret_may_be_one_string_or_an_array) {
  auto one = subscription_from_json(json{{"id", "x"}, {"secret", good_secret}});
  EXPECT_EQ(one.secrets, strings{good_secret});
  auto many = subscription_from_json(json{{"id", "x"}, {"secrets", {good_secret, "whsec_b"}}});
  EXPECT_EQ(many.secrets.size(), 2u);
}

TEST(subscription, from_json_refuses_a_non_object) {
  EXPECT_THROW(subscription_from_json(json::array()), error);
  EXPECT_THROW(subscription_from_json(json("x")), error);
}

// --- validation ------------------------------------------------------------------------------

TEST(subscription, a_valid_subscription_has_no_errors) {
  auto s = valid();
  s.secrets = {good_secret};
  s.headers = {{"X-Api-Key", "k\tv"}, {"Authorization", "Bearer t"}};
  s.payload = R"({"user": @@currentuser@@, "p": "@@content.Path@@"})";
  EXPECT_TRUE(validate(s).empty()) << describe(validate(s));
}

TEST(subscription, id_is_required) {
  auto s = valid();
  s.id.clear();
  EXPECT_EQ(validate(s), (std::vector<field_error>{{"id", "is required"}}));
}

TEST(subscription, url_must_be_http_or_https_with_a_host) {
  const std::vector<std::string> bad = {
      "", "https://", "ftp://files.example.com/", "hooks.example.com/in", "http:///path",
      "http://:8080/", "http://exa mple.com/", "http://example.com/a b", "http://example.com/\n",
      "http://h:0/", "http://h:65536/", "http://h:8x/", "http://h:/", "http://a..b/", "http://a,b/",
      "http://[::1/", "http://[zz::1]/",
      // libcurl would take "ssw0rd!@hooks..." as the host
      "https://svc:P@ssw0rd!@hooks.example.com/in"};
  for (const auto& url : bad) {
    auto s = valid();
    s.url = url;
    auto errors = validate(s);
    EXPECT_EQ(fields(errors), strings{"url"}) << "accepted: '" << url << "'";
  }
  const std::vector<std::string> good = {"http://localhost",
                                         "HTTPS://Hooks.Example.com:8443/in?x=1#f",
                                         "http://10.0.0.1:65535",
                                         "http://[::1]:8080/p",
                                         "https://user:pw@example.com/",
                                         "https://svc:P%40ssw0rd!@hooks.example.com/in",
                                         "http://example.com./"};
  for (const auto& url : good) {
    auto s = valid();
    s.url = url;
    EXPECT_TRUE(validate(s).empty()) << url << ": " << describe(validate(s));
  }
  auto s = valid();
  s.url = "ftp://x";
  EXPECT_NE(reason_for(validate(s), "url").find("http or https"), std::string::npos);
  s.url = "http://h:70000";
  EXPECT_NE(reason_for(validate(s), "url").find("65535"), std::string::npos);
}

TEST(subscription, method_must_be_an_http_token) {
  for (std::string m : {"POST", "GET", "PURGE", "M-SEARCH"}) {
    auto s = valid();
    s.http_method = m;
    EXPECT_TRUE(validate(s).empty()) << m;
  }
  for (std::string m : {"", "PO ST", "GET\r\n", "P(ST", "POST/1"}) {
    auto s = valid();
    s.http_method = m;
    EXPECT_EQ(fields(validate(s)), strings{"httpMethod"}) << m;
  }
}

TEST(subscription, header_names_and_values_may_not_hold_cr_lf_or_nul) {
  auto s = valid();
  s.headers = {{"X-Ok", "fine"},
               {"X-Split", "a\r\nX-Evil: 1"},
               {"X-Nul", std::string("a\0b", 3)},
               {"X-Bad\nName", "v"},
               {"X-Lf", "a\nb"}};
  auto errors = validate(s);
  EXPECT_EQ(fields(errors),
            (strings{"headers.X-Split", "headers.X-Nul", "headers[3]", "headers.X-Lf"}));
  EXPECT_NE(errors[0].reason.find("CR, LF or NUL"), std::string::npos);
}

TEST(subscription, header_names_must_be_tokens) {
  auto s = valid();
  s.headers = {{"", "v"}, {"X Space", "v"}, {"X:Colon", "v"}, {"X-Good_1", "v"}};
  EXPECT_EQ(fields(validate(s)), (strings{"headers[0]", "headers.X Space", "headers.X:Colon"}));
}

TEST(subscription, reserved_headers_are_refused_in_any_case) {
  auto s = valid();
  s.headers = {{"Host", "x"},
               {"content-length", "1"},
               {"Transfer-Encoding", "chunked"},
               {"CONNECTION", "close"},
               {"Webhook-Signature", "v1,x"},
               {"webhook-id", "1"},
               {"X-Webhook-Id", "fine"},
               {"WEBHOOK-TIMESTAMP", "1"},
               {"webhook_signature", "v1,x"},
               {"Transfer_Encoding", "chunked"},
               {"Webhook-Token", "fine"}};
  // Underscores count as hyphens: CGI-style receivers (PHP, WSGI) read both as one name.
  EXPECT_EQ(fields(validate(s)),
            (strings{"headers.Host", "headers.content-length", "headers.Transfer-Encoding",
                     "headers.CONNECTION", "headers.Webhook-Signature", "headers.webhook-id",
                     "headers.WEBHOOK-TIMESTAMP", "headers.webhook_signature",
                     "headers.Transfer_Encoding"}));
}

// nlohmann's message ends with the text it last read: here a token.
TEST(subscription, json_errors_never_repeat_the_text_they_read) {
  const auto s = subscription_from_json(json::parse(
      R"({"id": "a", "url": "https://h/",
          "WebHookHeaders": "{\"Authorization\": \"Bearer sk_live_VERYSECRET123\\q\"}"})"));
  const auto reason = reason_for(s.parse_errors, "headers");
  EXPECT_NE(reason.find("not valid JSON"), std::string::npos) << reason;
  EXPECT_EQ(reason.find("VERYSECRET"), std::string::npos) << reason;
}

// sensenet's HttpWebHookClient upper-cases the method; a migrated "post" must not go out as is.
TEST(subscription, the_http_method_is_read_in_upper_case) {
  auto s = hookline::subscription_from_json(
      nlohmann::json::parse(R"({"id": "a", "url": "http://h/", "WebHookHttpMethod": ["patch"]})"));
  EXPECT_EQ(s.http_method, "PATCH");
  s = hookline::subscription_from_json(
      nlohmann::json::parse(R"({"id": "a", "url": "http://h/", "httpMethod": "m-search"})"));
  EXPECT_EQ(s.http_method, "M-SEARCH");
}

TEST(subscription, filter_path_must_be_root_or_under_it_by_segment) {
  for (std::string p : {"", "/Root", "/root", "/Root/", "/Root/Content", "/ROOT/a/b/"}) {
    auto s = valid();
    s.filter.path = p;
    EXPECT_TRUE(validate(s).empty()) << p << ": " << describe(validate(s));
  }
  for (std::string p :
       {"/Rooted", "/Other/Root", "Root/Content", "/", "/Root//Content", "/Root/a\nb"}) {
    auto s = valid();
    s.filter.path = p;
    EXPECT_EQ(fields(validate(s)), strings{"filter.path"}) << p;
  }
}

TEST(subscription, unknown_event_names_are_reported_with_their_position) {
  auto s = valid();
  s.filter.content_types = {{"File", {"Create", "Explode"}}, {"Folder", {"checkout", ""}}};
  auto errors = validate(s);
  EXPECT_EQ(fields(errors),
            (strings{"filter.contentTypes[0].events[1]", "filter.contentTypes[1].events[1]"}));
  EXPECT_NE(errors[0].reason.find("Explode"), std::string::npos);
}

TEST(subscription, host_registered_event_names_are_accepted) {
  auto s = valid();
  s.filter.content_types = {{"File", {"Archive"}}};
  EXPECT_EQ(fields(validate(s)), strings{"filter.contentTypes[0].events[0]"});
  event_catalog catalog;
  catalog.add("Archive");
  EXPECT_TRUE(validate(s, catalog).empty());
}

TEST(subscription, content_type_name_must_not_be_empty) {
  auto s = valid();
  s.filter.content_types = {{"File", {"Create"}}, {"", {"Create"}}};
  EXPECT_EQ(validate(s),
            (std::vector<field_error>{{"filter.contentTypes[1].name", "must not be empty"}}));
}

TEST(subscription, secrets_must_be_whsec_base64_of_24_to_64_bytes) {
  auto s = valid();
  s.secrets = {good_secret, "plain", "whsec_c2hvcnQ=", "whsec_!!!"};
  EXPECT_EQ(fields(validate(s)), (strings{"secrets[1]", "secrets[2]", "secrets[3]"}));
  for (const auto& e : validate(s)) EXPECT_EQ(e.reason.find("plain"), std::string::npos);
}

TEST(subscription, payload_must_be_a_json_object) {
  auto s = valid();
  s.payload = R"({"user": @@currentuser@@, "when": "@@currentdate+3days@@"})";
  EXPECT_TRUE(validate(s).empty()) << describe(validate(s));
  for (std::string p : {"[1, 2]", "\"text\"", "{\"a\": }"}) {
    s.payload = p;
    EXPECT_EQ(fields(validate(s)), strings{"payload"}) << p;
  }
}

TEST(subscription, rate_limit_must_be_finite_and_not_negative) {
  for (double r :
       {-1.0, std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
    auto s = valid();
    s.rate_limit = r;
    EXPECT_EQ(fields(validate(s)), strings{"rateLimit"}) << r;
  }
  auto s = valid();
  s.rate_limit = 0.25;
  EXPECT_TRUE(validate(s).empty());
}

TEST(subscription, client_cert_and_key_come_together) {
  auto s = valid();
  s.client_cert = "/c.pem";
  EXPECT_EQ(fields(validate(s)), strings{"clientKey"});
  s.client_cert.clear();
  s.client_key = "/k.pem";
  EXPECT_EQ(fields(validate(s)), strings{"clientCert"});
  s.client_cert = "/c.pem";
  EXPECT_TRUE(validate(s).empty());
}

TEST(subscription, every_invalid_field_is_reported_at_once) {
  subscription s;
  s.url = "gopher://x";
  s.http_method = "BAD METHOD";
  s.headers = {{"Host", "x"}, {"X-A", "a\r\n"}};
  s.secrets = {"nope"};
  s.filter.path = "/Elsewhere";
  s.filter.content_types = {{"", {"Create", "Boom"}}};
  s.payload = "[]";
  s.rate_limit = -2;
  s.client_key = "/k.pem";
  EXPECT_EQ(fields(validate(s)),
            (strings{"id", "url", "httpMethod", "headers.Host", "headers.X-A", "secrets[0]",
                     "filter.path", "filter.contentTypes[0].name",
                     "filter.contentTypes[0].events[1]", "payload", "rateLimit", "clientCert"}));
  for (const auto& e : validate(s)) EXPECT_FALSE(e.reason.empty()) << e.field;
}

}  // namespace
