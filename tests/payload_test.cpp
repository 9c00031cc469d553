#include "hookline/payload.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "hookline/error.hpp"

namespace {

using namespace std::chrono;
using namespace std::chrono_literals;
using nlohmann::json;

// 2024-01-31T10:20:30.456Z: a leap year's January 31st, so month arithmetic has to clamp.
const system_clock::time_point fixed_now =
    sys_days{2024y / January / 31} + 10h + 20min + 30s + 456ms;

hookline::render_context ctx() {
  hookline::render_context c;
  c.now = fixed_now;
  c.repository = "repo.example.com";
  return c;
}

hookline::event sample_event() {
  hookline::event e;
  e.id = "evt-1";
  e.event_name = "Create";
  e.path = "/Root/Content/Docs/a.txt";
  e.content_type = "File";
  e.node_id = 42;
  e.name = "a.txt";
  e.display_name = "A";
  e.version_id = 7;
  e.version = "1.0.A";
  e.version_modification_date = "2024-01-30T08:00:00Z";
  e.modified_by = 1;
  e.current_user = "admin";
  e.changed_fields = {"Name", "DisplayName"};
  e.data = {{"Manager", {{"DisplayName", "Boss"}, {"Id", 9}, {"Address", {{"City", "Oslo"}}}}},
            {"Tags", {"x", "y"}},
            {"Size", 1234},
            {"Approved", true},
            {"Nothing", nullptr}};
  return e;
}

json expand(const std::string& text, const hookline::event& e = sample_event()) {
  return hookline::expand_payload(text, e, ctx());
}

// The value a single template gives inside a string and bare.
json in_string(const std::string& tmpl, const hookline::event& e = sample_event()) {
  return expand(R"({"v": "@@)" + tmpl + R"(@@"})", e).at("v");
}
json bare(const std::string& tmpl, const hookline::event& e = sample_event()) {
  return expand(R"({"v": @@)" + tmpl + "@@}", e).at("v");
}

TEST(payload, default_payload_has_the_14_sensenet_fields_with_their_types) {
  const auto j = hookline::default_payload(sample_event(), "sub-1", ctx());
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j.size(), 14u);
  EXPECT_EQ(j.at("nodeId"), 42);
  EXPECT_TRUE(j.at("nodeId").is_number_integer());
  EXPECT_EQ(j.at("versionId"), 7);
  EXPECT_EQ(j.at("version"), "1.0.A");
  EXPECT_TRUE(j.at("previousVersion").is_null());
  EXPECT_EQ(j.at("versionModificationDate"), "2024-01-30T08:00:00Z");
  EXPECT_EQ(j.at("modifiedBy"), 1);
  EXPECT_TRUE(j.at("modifiedBy").is_number_integer());
  EXPECT_EQ(j.at("path"), "/Root/Content/Docs/a.txt");
  EXPECT_EQ(j.at("name"), "a.txt");
  EXPECT_EQ(j.at("displayName"), "A");
  EXPECT_EQ(j.at("eventName"), "Create");
  EXPECT_EQ(j.at("subscriptionId"), "sub-1");
  EXPECT_EQ(j.at("sentTime"), "2024-01-31T10:20:30.456Z");
  EXPECT_EQ(j.at("repository"), "repo.example.com");
  EXPECT_EQ(j.at("changedFields"), json::array({"Name", "DisplayName"}));

  auto e = sample_event();
  e.previous_version = "0.1.D";
  e.version_modification_date.clear();
  e.changed_fields.clear();
  const auto k = hookline::default_payload(e, "sub-2", ctx());
  EXPECT_EQ(k.at("previousVersion"), "0.1.D");
  EXPECT_TRUE(k.at("versionModificationDate").is_null());
  EXPECT_EQ(k.at("changedFields"), json::array());
}

TEST(payload, render_body_without_custom_payload_is_the_default_in_sensenet_order) {
  hookline::subscription s;
  s.id = "sub-1";
  const auto body = hookline::render_body(sample_event(), s, ctx());
  EXPECT_EQ(
      body,
      R"({"nodeId":42,"versionId":7,"version":"1.0.A","previousVersion":null,)"
      R"("versionModificationDate":"2024-01-30T08:00:00Z","modifiedBy":1,)"
      R"("path":"/Root/Content/Docs/a.txt","name":"a.txt","displayName":"A",)"
      R"("eventName":"Create","subscriptionId":"sub-1","sentTime":"2024-01-31T10:20:30.456Z",)"
      R"("repository":"repo.example.com","changedFields":["Name","DisplayName"]})");
  s.payload = "  \n ";
  EXPECT_EQ(hookline::render_body(sample_event(), s, ctx()), body);
}

// The default body is written directly, not through nlohmann; it must be the same bytes as
// nlohmann's ordered serialization, for every kind of string: escapes, control characters,
// multi-byte UTF-8, and malformed UTF-8 (which nlohmann replaces with U+FFFD).
TEST(payload, default_body_is_byte_for_byte_what_nlohmann_writes) {
  const std::string awkward[] = {
      "",
      "plain",
      "quote \" backslash \\ slash /",
      std::string("nul \0 bell \a del \x7f", 18),
      "\b\f\n\r\t\x01\x1f",
      "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",  // é, €, an emoji
      "\xc0\x80",                                         // overlong NUL
      "\xe0\x9f\xbf",                                     // overlong 3-byte
      "\xed\xa0\x80",                                     // a surrogate
      "\xf4\x90\x80\x80",                                 // above U+10FFFF
      "\xe2\x82",                                         // truncated
      "\xf0\x9f\x98",                                     // truncated 4-byte
      "\x80 lone continuation",
      "\xf5\x80\x80\x80",
  };
  for (const auto& text : awkward) {
    auto e = sample_event();
    e.path = "/Root/" + text;
    e.name = text;
    e.display_name = text;
    e.version = text;
    e.previous_version = text;
    e.changed_fields = {text, "Name"};
    e.node_id = -9223372036854775807 - 1;
    e.modified_by = 9223372036854775807;
    hookline::subscription s;
    s.id = "sub-" + text;
    auto c = ctx();
    c.repository = text;
    nlohmann::ordered_json expected = nlohmann::ordered_json::object();
    expected["nodeId"] = e.node_id;
    expected["versionId"] = e.version_id;
    expected["version"] = e.version;
    expected["previousVersion"] = *e.previous_version;
    expected["versionModificationDate"] = e.version_modification_date;
    expected["modifiedBy"] = e.modified_by;
    expected["path"] = e.path;
    expected["name"] = e.name;
    expected["displayName"] = e.display_name;
    expected["eventName"] = e.event_name;
    expected["subscriptionId"] = s.id;
    expected["sentTime"] = "2024-01-31T10:20:30.456Z";
    expected["repository"] = c.repository;
    expected["changedFields"] = e.changed_fields;
    EXPECT_EQ(hookline::render_body(e, s, c),
              expected.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace))
        << "for the string " << json(text).dump(-1, ' ', true, json::error_handler_t::replace);
  }
}

TEST(payload, render_body_merges_custom_payload_over_the_default) {
  hookline::subscription s;
  s.id = "sub-1";
  s.payload = R"({"path": "@@content.Name@@", "versionId": 8, "user": @@currentuser@@,
                 "extra": {"nested": [1, 2]}})";
  const auto body = hookline::render_body(sample_event(), s, ctx());
  const auto j = json::parse(body);
  EXPECT_EQ(j.size(), 16u);
  EXPECT_EQ(j.at("path"), "a.txt");  // same-name key replaced
  EXPECT_EQ(j.at("user"), "admin");
  EXPECT_EQ(j.at("extra"), json::parse(R"({"nested": [1, 2]})"));
  EXPECT_EQ(j.at("subscriptionId"), "sub-1");                     // untouched defaults stay
  EXPECT_EQ(body.find('\n'), std::string::npos);                  // compact
  EXPECT_EQ(body.rfind(R"({"nodeId":42,"versionId":8)", 0), 0u);  // replaced in place
}

// sensenet merges with Json.NET's JObject.Merge defaults, and a migrated payload must give the
// same body: null never replaces a value, an array is appended to an array.
TEST(payload, render_body_merges_like_json_net) {
  hookline::subscription s;
  s.id = "sub-1";
  s.payload = R"({"nodeId": null, "name": null, "brandNew": null, "changedFields": ["Owner"],
                 "outer": {"a": 1}, "version": {"major": 2}})";
  auto e = sample_event();
  const auto j = json::parse(hookline::render_body(e, s, ctx()));
  EXPECT_EQ(j.at("nodeId"), 42);
  EXPECT_EQ(j.at("name"), "a.txt");
  ASSERT_TRUE(j.contains("brandNew"));  // a new key is added, even as null
  EXPECT_TRUE(j.at("brandNew").is_null());
  EXPECT_EQ(j.at("changedFields"), json::parse(R"(["Name", "DisplayName", "Owner"])"));
  EXPECT_EQ(j.at("outer"), json::parse(R"({"a": 1})"));
  EXPECT_EQ(j.at("version"), json::parse(R"({"major": 2})"));  // anything else replaces
}

TEST(payload, every_template_inside_strings) {
  EXPECT_EQ(in_string("currentuser"), "admin");
  // As sensenet: the three day templates are today's midnight, currenttime is now, and both in
  // .NET's round-trip format.
  EXPECT_EQ(in_string("currentdate"), "2024-01-31T00:00:00.0000000Z");
  EXPECT_EQ(in_string("currentday"), "2024-01-31T00:00:00.0000000Z");
  EXPECT_EQ(in_string("today"), "2024-01-31T00:00:00.0000000Z");
  EXPECT_EQ(in_string("currenttime"), "2024-01-31T10:20:30.4560000Z");
  EXPECT_EQ(in_string("content"), "42");
  EXPECT_EQ(in_string("content.Path"), "/Root/Content/Docs/a.txt");
  EXPECT_EQ(in_string("content.Name"), "a.txt");
  EXPECT_EQ(in_string("content.DisplayName"), "A");
  EXPECT_EQ(in_string("content.Id"), "42");
  EXPECT_EQ(in_string("content.NodeId"), "42");
  EXPECT_EQ(in_string("content.VersionId"), "7");
  EXPECT_EQ(in_string("content.Version"), "1.0.A");
  EXPECT_EQ(in_string("content.ContentType"), "File");
  EXPECT_EQ(in_string("content.Type"), "File");
  EXPECT_EQ(in_string("content.ModifiedBy"), "1");
  EXPECT_EQ(in_string("eventname"), "Create");
  EXPECT_EQ(in_string("repository"), "repo.example.com");
  // Names match case-insensitively, and a template can sit among other text and in keys.
  EXPECT_EQ(in_string("CurrentUser"), "admin");
  EXPECT_EQ(in_string("content.path"), "/Root/Content/Docs/a.txt");
  const auto j =
      expand(R"({"@@eventname@@-@@content@@": "at @@content.Path@@ by @@currentuser@@"})");
  EXPECT_EQ(j, json::parse(R"({"Create-42": "at /Root/Content/Docs/a.txt by admin"})"));
}

TEST(payload, every_template_bare_becomes_a_json_value) {
  EXPECT_EQ(bare("currentuser"), "admin");
  EXPECT_EQ(bare("currentdate"), "2024-01-31T00:00:00.0000000Z");
  EXPECT_EQ(bare("today"), "2024-01-31T00:00:00.0000000Z");
  EXPECT_EQ(bare("currentday"), "2024-01-31T00:00:00.0000000Z");
  EXPECT_EQ(bare("currenttime"), "2024-01-31T10:20:30.4560000Z");
  EXPECT_EQ(bare("content"), 42);
  EXPECT_TRUE(bare("content").is_number_integer());
  EXPECT_EQ(bare("content.ModifiedBy"), 1);
  EXPECT_EQ(bare("content.Path"), "/Root/Content/Docs/a.txt");
  EXPECT_EQ(bare("eventname"), "Create");
  EXPECT_EQ(bare("repository"), "repo.example.com");
  EXPECT_TRUE(bare("content.PreviousVersion").is_null());
  // The sensenet documentation's own example.
  const auto j = expand(R"({"currentuser": @@currentuser@@, "filepath": "@@content.Path@@"})");
  EXPECT_EQ(j, json::parse(R"({"currentuser": "admin", "filepath": "/Root/Content/Docs/a.txt"})"));

  auto anonymous = sample_event();
  anonymous.current_user.clear();
  EXPECT_TRUE(bare("currentuser", anonymous).is_null());
  EXPECT_EQ(in_string("currentuser", anonymous), "");

  // sensenet's currentuser is the user's id: a user written as a whole number is a number.
  auto by_id = sample_event();
  by_id.current_user = "1";
  EXPECT_EQ(bare("currentuser", by_id), 1);
  EXPECT_TRUE(bare("currentuser", by_id).is_number_integer());
  EXPECT_EQ(in_string("currentuser", by_id), "1");
  for (const std::string not_a_number : {"01", "1.5", "1e3", "-", "12345678901234567890", " 1"}) {
    by_id.current_user = not_a_number;
    EXPECT_EQ(bare("currentuser", by_id), not_a_number);
  }
}

TEST(payload, date_arithmetic_on_every_unit) {
  const std::string midnight = "T00:00:00.0000000Z";
  EXPECT_EQ(in_string("currentdate+3days"), "2024-02-03" + midnight);
  EXPECT_EQ(in_string("currentdate-1hour"), "2024-01-30T23:00:00.0000000Z");
  EXPECT_EQ(in_string("currentdate+1Day"), "2024-02-01" + midnight);
  EXPECT_EQ(in_string("CurrentDate-1year"), "2023-01-31" + midnight);
  EXPECT_EQ(in_string("currenttime+90minutes"), "2024-01-31T11:50:30.4560000Z");
  EXPECT_EQ(in_string("currenttime+45seconds"), "2024-01-31T10:21:15.4560000Z");
  EXPECT_EQ(in_string("currenttime+1second"), "2024-01-31T10:20:31.4560000Z");
  EXPECT_EQ(in_string("currenttime+14hours"), "2024-02-01T00:20:30.4560000Z");
  EXPECT_EQ(in_string("today+1week"), "2024-02-07" + midnight);
  EXPECT_EQ(in_string("today+2weeks"), "2024-02-14" + midnight);
  EXPECT_EQ(in_string("today+1month"), "2024-02-29" + midnight);  // the leap February's end
  EXPECT_EQ(in_string("today+13months"), "2025-02-28" + midnight);
  EXPECT_EQ(in_string("currentday-1months"), "2023-12-31" + midnight);
  EXPECT_EQ(in_string("currentday-2months"), "2023-11-30" + midnight);
  EXPECT_EQ(in_string("currentday+1year"), "2025-01-31" + midnight);
  EXPECT_EQ(in_string("currentday-14minutes"), "2024-01-30T23:46:00.0000000Z");
  EXPECT_EQ(in_string("currentday-11hours"), "2024-01-30T13:00:00.0000000Z");
  EXPECT_EQ(bare("currentdate+0days"), "2024-01-31" + midnight);

  hookline::render_context leap = ctx();
  leap.now = sys_days{2024y / February / 29} + 12h;
  EXPECT_EQ(hookline::expand_payload(R"({"d": "@@today+1year@@"})", sample_event(), leap).at("d"),
            "2025-02-28" + midnight);
}

// The spellings sensenet's TemplateReplacerBase accepts, so a migrated payload renders the same.
TEST(payload, date_arithmetic_in_every_sensenet_spelling) {
  const std::string midnight = "T00:00:00.0000000Z";
  // No unit: days for the day templates, minutes for currenttime.
  EXPECT_EQ(in_string("currentdate+3"), "2024-02-03" + midnight);
  EXPECT_EQ(in_string("today-1"), "2024-01-30" + midnight);
  EXPECT_EQ(in_string("currenttime+30"), "2024-01-31T10:50:30.4560000Z");
  // Short units.
  EXPECT_EQ(in_string("currenttime+5s"), "2024-01-31T10:20:35.4560000Z");
  EXPECT_EQ(in_string("currenttime+5sec"), "2024-01-31T10:20:35.4560000Z");
  EXPECT_EQ(in_string("currenttime+5secs"), "2024-01-31T10:20:35.4560000Z");
  EXPECT_EQ(in_string("currenttime+2m"), "2024-01-31T10:22:30.4560000Z");
  EXPECT_EQ(in_string("currenttime+2mins"), "2024-01-31T10:22:30.4560000Z");
  EXPECT_EQ(in_string("currenttime+1h"), "2024-01-31T11:20:30.4560000Z");
  EXPECT_EQ(in_string("currentdate+1d"), "2024-02-01" + midnight);
  EXPECT_EQ(in_string("currentdate+2w"), "2024-02-14" + midnight);
  EXPECT_EQ(in_string("currentdate+1y"), "2025-01-31" + midnight);
  // Workdays skip Saturdays and Sundays (2024-01-31 is a Wednesday).
  EXPECT_EQ(in_string("currentdate+1workdays"), "2024-02-01" + midnight);
  EXPECT_EQ(in_string("currentdate+3workdays"), "2024-02-05" + midnight);
  EXPECT_EQ(in_string("currentdate+5workdays"), "2024-02-07" + midnight);
  EXPECT_EQ(in_string("currentdate-3workdays"), "2024-01-26" + midnight);
  // The method form, any case, the unit in the name or the template's default.
  EXPECT_EQ(in_string("currentdate.AddDays(1)"), "2024-02-01" + midnight);
  EXPECT_EQ(in_string("currentdate.addmonths(1)"), "2024-02-29" + midnight);
  EXPECT_EQ(in_string("currentdate.AddDays(-1)"), "2024-01-30" + midnight);
  EXPECT_EQ(in_string("currentdate.MinusDays(2)"), "2024-01-29" + midnight);
  EXPECT_EQ(in_string("currentdate.PlusWeeks(1)"), "2024-02-07" + midnight);
  EXPECT_EQ(in_string("currentdate.Substract(1)"), "2024-01-30" + midnight);
  EXPECT_EQ(in_string("currenttime.Subtract(30)"), "2024-01-31T09:50:30.4560000Z");
  EXPECT_EQ(in_string("currenttime.AddHours(+2)"), "2024-01-31T12:20:30.4560000Z");
  EXPECT_EQ(bare("today.AddYears(1)"), "2025-01-31" + midnight);
}

TEST(payload, malformed_arithmetic_and_unknown_templates_are_left_as_written) {
  for (const std::string t :
       {"currentdate+3fortnights", "currentdate+", "currentdate+3x4", "today+days",
        "currentdate.AddDays(1", "currentdate.AddDays()", "currentdate.Multiply(2)",
        "currentdate.AddDays(1)x", "currentdate.AddFortnights(1)",
        "currentdate.AddDays(1234567890)", "today+9999999999days", "today+99999years",
        "currentuser+1day", "content+1day", "content.", "eventname.x", "nosuchthing", "user"}) {
    EXPECT_EQ(in_string(t), "@@" + t + "@@") << t;
    EXPECT_EQ(bare(t), "@@" + t + "@@") << t;
    EXPECT_EQ(hookline::check_payload(R"({"v": @@)" + t + "@@}"), "") << t;
  }
  // Text that only resembles a template stays untouched.
  EXPECT_EQ(in_string("@"), "@@@@@");
  EXPECT_EQ(expand(R"({"a": "@@", "b": "@@ currentuser@@", "c": "me@@@currentuser@@"})"),
            json::parse(R"({"a": "@@", "b": "@@ currentuser@@", "c": "me@admin"})"));
}

TEST(payload, content_chains_read_nested_data) {
  EXPECT_EQ(in_string("content.Manager.DisplayName"), "Boss");
  EXPECT_EQ(in_string("content.manager.displayname"), "Boss");
  EXPECT_EQ(bare("content.Manager.Id"), 9);
  EXPECT_EQ(bare("content.Manager.Address.City"), "Oslo");
  EXPECT_EQ(bare("content.Size"), 1234);
  EXPECT_EQ(in_string("content.Size"), "1234");
  EXPECT_EQ(bare("content.Approved"), true);
  EXPECT_EQ(in_string("content.Approved"), "true");
  EXPECT_EQ(bare("content.Tags"), json::array({"x", "y"}));
  EXPECT_EQ(bare("content.Tags.1"), "y");
  EXPECT_EQ(bare("content.Manager"), json::parse(R"({"DisplayName":"Boss","Id":9,
                                                     "Address":{"City":"Oslo"}})"));
  // Inside a string an object becomes its JSON text.
  EXPECT_EQ(json::parse(in_string("content.Manager.Address").get<std::string>()),
            json::parse(R"({"City":"Oslo"})"));
  // Missing: empty inside a string, null outside.
  for (const std::string t :
       {"content.Missing", "content.Manager.Missing", "content.Tags.2", "content.Size.Deeper",
        "content.Nothing", "content.Path.Deeper", "content.Manager..Id"}) {
    EXPECT_EQ(in_string(t), "") << t;
    EXPECT_TRUE(bare(t).is_null()) << t;
  }
}

TEST(payload, exact_key_wins_over_a_case_insensitive_match) {
  auto e = sample_event();
  e.data = {{"code", "lower"}, {"CODE", "upper"}, {"Path", "from-data"}};
  EXPECT_EQ(in_string("content.CODE", e), "upper");
  EXPECT_EQ(in_string("content.code", e), "lower");
  EXPECT_EQ(in_string("content.Path", e), "/Root/Content/Docs/a.txt");  // event field first
}

const std::string hostile =
    "q\"uote \\back\\\\slash \\\" new\nline\r\t tab \x01\x1f ctl \x7f del "
    "\xc3\xa9t\xc3\xa9 \xe2\x80\xa8 \xf0\x9f\x98\x80 @@currentuser@@ </script> \"}, \"x\": 1";

TEST(payload, hostile_values_stay_exact_inside_strings) {
  auto e = sample_event();
  e.current_user = hostile;
  e.path = hostile;
  e.data = {{"Note", hostile}, {"Deep", {{"Er", hostile}}}};
  const auto j = expand(R"({"u": "@@currentuser@@", "p": "<@@content.Path@@>",
                           "n": "@@content.Note@@", "d": "@@content.Deep.Er@@",
                           "@@currentuser@@": 1})",
                        e);
  EXPECT_EQ(j.size(), 5u);
  EXPECT_EQ(j.at("u"), hostile);
  EXPECT_EQ(j.at("p"), "<" + hostile + ">");
  EXPECT_EQ(j.at("n"), hostile);
  EXPECT_EQ(j.at("d"), hostile);
  EXPECT_EQ(j.at(hostile), 1);
}

TEST(payload, hostile_values_stay_exact_bare) {
  auto e = sample_event();
  e.current_user = hostile;
  e.display_name = hostile;
  e.data = {{"Note", hostile}};
  const auto j =
      expand(R"({"u": @@currentuser@@, "a": [@@content.DisplayName@@, @@content.Note@@]})", e);
  EXPECT_EQ(j.size(), 2u);
  EXPECT_EQ(j.at("u"), hostile);
  EXPECT_EQ(j.at("a"), json::array({hostile, hostile}));
}

TEST(payload, hostile_event_fields_give_a_valid_body) {
  auto e = sample_event();
  e.path = hostile;
  e.name = hostile;
  e.event_name = hostile;
  e.changed_fields = {hostile};
  hookline::subscription s;
  s.id = hostile;
  s.payload = R"({"who": "@@currentuser@@ on @@content.Name@@"})";
  e.current_user = hostile;
  const auto j = json::parse(hookline::render_body(e, s, ctx()));
  EXPECT_EQ(j.at("path"), hostile);
  EXPECT_EQ(j.at("subscriptionId"), hostile);
  EXPECT_EQ(j.at("changedFields"), json::array({hostile}));
  EXPECT_EQ(j.at("who"), hostile + " on " + hostile);
}

TEST(payload, invalid_utf8_in_values_is_replaced_not_fatal) {
  auto e = sample_event();
  e.current_user = "bad\xff\xfe byte";
  e.name = "x\xc3";
  EXPECT_EQ(in_string("currentuser", e), "bad\xef\xbf\xbd\xef\xbf\xbd byte");
  EXPECT_EQ(bare("currentuser", e), "bad\xef\xbf\xbd\xef\xbf\xbd byte");
  hookline::subscription s;
  s.id = "sub-1";
  EXPECT_EQ(json::parse(hookline::render_body(e, s, ctx())).at("name"), "x\xef\xbf\xbd");
}

TEST(payload, string_tracking_respects_escapes) {
  // The escaped quote keeps the scanner inside the string; the escaped backslash ends it
  // properly, so the bare template after it is a JSON value.
  const auto j =
      expand(R"({"a": "x\"@@currentuser@@\\", "b": @@currentuser@@, "c": "\\\"@@content@@"})");
  EXPECT_EQ(j, json::parse(R"({"a": "x\"admin\\", "b": "admin", "c": "\\\"42"})"));
}

TEST(payload, invalid_payload_text_is_reported) {
  const auto throws_with = [](const std::string& text, const std::string& expected) {
    try {
      expand(text);
      ADD_FAILURE() << "accepted " << text;
    } catch (const hookline::error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  };
  throws_with(R"({"a": 1)", "custom payload is not valid JSON after template expansion");
  throws_with(R"({"a": @@content@@ @@content@@})", "not valid JSON");
  throws_with(R"([1, 2])", "custom payload must be a JSON object, not array");
  throws_with(R"("@@currentuser@@")", "must be a JSON object, not string");
  throws_with("@@content@@", "must be a JSON object, not number");
  throws_with(R"({"a": "unterminated @@currentuser@@})", "not valid JSON");
  EXPECT_EQ(expand(""), json::object());

  hookline::subscription s;
  s.id = "sub-1";
  s.payload = "[]";
  EXPECT_THROW(hookline::render_body(sample_event(), s, ctx()), hookline::error);
}

TEST(payload, check_payload_accepts_templates_and_reports_reasons) {
  EXPECT_EQ(hookline::check_payload(""), "");
  EXPECT_EQ(hookline::check_payload(" \n"), "");
  EXPECT_EQ(hookline::check_payload(R"({"a": 1})"), "");
  EXPECT_EQ(hookline::check_payload(
                R"({"u": @@currentuser@@, "p": "@@content.Path@@", "d": @@today+3days@@})"),
            "");
  EXPECT_EQ(hookline::check_payload(R"([1])"), "must be a JSON object, not array");
  EXPECT_EQ(hookline::check_payload(R"(@@currentuser@@)"), "must be a JSON object, not null");
  const auto reason = hookline::check_payload(R"({"u": @@currentuser@@, "x": })");
  EXPECT_EQ(reason.rfind("not valid JSON: ", 0), 0u) << reason;
  // Column numbers refer to the text as written, templates included.
  EXPECT_NE(reason.find("column 29"), std::string::npos) << reason;
  EXPECT_NE(hookline::check_payload(R"({"a": "x)"), "");
  EXPECT_NE(hookline::check_payload("{\"a\": 1} trailing"), "");
}

TEST(payload, check_payload_agrees_with_expand) {
  for (const std::string text :
       {R"({"a": @@currentuser@@})", R"({"a": "@@currentuser@@"})", R"({"a": @@nosuch@@})",
        R"([@@content@@])", R"({"a": @@content@@ @@content@@})", R"({"a": "\"@@content@@"})",
        R"({"a": "\\"@@content@@"})", R"({"k": @@content.Manager@@})"}) {
    const bool checked = hookline::check_payload(text).empty();
    bool expanded = true;
    try {
      expand(text);
    } catch (const hookline::error&) {
      expanded = false;
    }
    EXPECT_EQ(checked, expanded) << text;
  }
}

TEST(iso8601, formats_utc_with_milliseconds) {
  EXPECT_EQ(hookline::format_iso8601(fixed_now), "2024-01-31T10:20:30.456Z");
  EXPECT_EQ(hookline::format_iso8601(system_clock::time_point{}), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(hookline::format_iso8601(system_clock::time_point{} - 1ms), "1969-12-31T23:59:59.999Z");
  EXPECT_EQ(
      hookline::format_iso8601(sys_days{2100y / December / 31} + 23h + 59min + 59s + 999999us),
      "2100-12-31T23:59:59.999Z");
  EXPECT_EQ(hookline::format_iso8601(sys_days{1900y / March / 1} + 1s), "1900-03-01T00:00:01.000Z");
}

TEST(iso8601, parses_dates_date_times_offsets_and_fractions) {
  const auto p = [](std::string_view s) { return hookline::parse_iso8601(s); };
  EXPECT_EQ(p("2024-01-31T10:20:30.456Z"), fixed_now);
  EXPECT_EQ(p("2024-01-31T10:20:30.456000001Z"), fixed_now + 1ns);
  EXPECT_EQ(p("2024-01-31T10:20:30.4560000019Z"), fixed_now + 1ns);  // extra digits dropped
  EXPECT_EQ(p("2024-01-31t10:20:30,456z"), fixed_now);
  EXPECT_EQ(p("2024-01-31T12:20:30.456+02:00"), fixed_now);
  EXPECT_EQ(p("2024-01-31T05:50:30.456-0430"), fixed_now);
  EXPECT_EQ(p("2024-01-31T13:20:30.456+03"), fixed_now);
  EXPECT_EQ(p("2024-01-31T10:20:30.456"), fixed_now);  // no offset: UTC
  EXPECT_EQ(p("2024-01-31"), sys_days{2024y / January / 31});
  EXPECT_EQ(p("2024-01-31T10:20Z"), sys_days{2024y / January / 31} + 10h + 20min);
  EXPECT_EQ(p("2024-02-29T00:00:00Z"), sys_days{2024y / February / 29});
  EXPECT_EQ(p("2016-12-31T23:59:60Z"), sys_days{2017y / January / 1});  // leap second
  EXPECT_EQ(p("1969-12-31T23:59:59Z"), system_clock::time_point{} - 1s);
  // Round trip with format_iso8601.
  for (system_clock::time_point t : {fixed_now, system_clock::time_point{} + 1ms,
                                     system_clock::time_point{sys_days{2262y / January / 1}}}) {
    EXPECT_EQ(p(hookline::format_iso8601(t)), t);
  }
}

TEST(iso8601, rejects_garbage) {
  for (const char* bad : {"",
                          "2024",
                          "2024-1-31",
                          "2024-01-32",
                          "2023-02-29",
                          "2024-13-01",
                          "2024-00-10",
                          "24-01-31",
                          "2024/01/31",
                          "2024-01-31T",
                          "2024-01-31 10:20:30Z",
                          "2024-01-31T24:00:00Z",
                          "2024-01-31T10:60:00Z",
                          "2024-01-31T10:20:61Z",
                          "2024-01-31T10:20:30.Z",
                          "2024-01-31T10:20:30ZZ",
                          "2024-01-31T10:20:30+",
                          "2024-01-31T10:20:30+2",
                          "2024-01-31T10:20:30+24:00",
                          "2024-01-31T10:20:30+02:60",
                          "2024-01-31T10:20:30+02:00x",
                          "2024-01-31T10:20:30 Z",
                          "2024-01-31X",
                          "2024-01-31T10",
                          "2024-01-31T1:20:30Z",
                          " 2024-01-31",
                          "2024-01-31\n",
                          "abcd-ef-gh",
                          "9999-12-31T23:59:59Z",
                          "0001-01-01T00:00:00Z"}) {
    EXPECT_FALSE(hookline::parse_iso8601(bad).has_value()) << bad;
  }
}

}  // namespace
