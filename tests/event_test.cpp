#include "hookline/event.hpp"

#include <algorithm>

#include <gtest/gtest.h>

#include "hookline/error.hpp"
#include "hookline/payload.hpp"

namespace {

using namespace hookline;
using nlohmann::json;

std::vector<std::string> fields(const validation_error& e) {
  std::vector<std::string> out;
  for (const auto& f : e.errors()) out.push_back(f.field);
  return out;
}

using strings = std::vector<std::string>;

TEST(event, catalog_knows_sensenet_names_and_the_ones_sensenet_left_out) {
  event_catalog c;
  for (const char* name : {"Create", "Modify", "Delete", "Approve", "Reject", "Draft", "Pending",
                           "CheckOut", "MoveToTrash", "RestoreFromTrash", "Move", "Copy", "Rename",
                           "CheckIn", "UndoCheckOut", "Publish", "PermissionChange"}) {
    EXPECT_EQ(c.canonical(name), std::optional<std::string>(name));
  }
  EXPECT_EQ(c.names().size(), 17u);
  EXPECT_EQ(std::count(c.names().begin(), c.names().end(), "All"), 0);
  EXPECT_EQ(c.canonical("All"), std::optional<std::string>("All"));
  EXPECT_FALSE(c.canonical("Login"));
  EXPECT_FALSE(c.canonical(""));
}

TEST(event, catalog_lookup_ignores_case) {
  event_catalog c;
  EXPECT_EQ(c.canonical("checkout"), std::optional<std::string>("CheckOut"));
  EXPECT_EQ(c.canonical("MOVETOTRASH"), std::optional<std::string>("MoveToTrash"));
  EXPECT_EQ(c.canonical("all"), std::optional<std::string>("All"));
  EXPECT_EQ(c.canonical("undocheckout"), std::optional<std::string>("UndoCheckOut"));
}

TEST(event, hosts_can_register_their_own_names) {
  event_catalog c;
  c.add("Archive");
  c.add("login_failed-2");
  EXPECT_EQ(c.canonical("ARCHIVE"), std::optional<std::string>("Archive"));
  EXPECT_EQ(c.names().back(), "login_failed-2");
  EXPECT_THROW(c.add("archive"), error);  // already known, case-insensitively
  EXPECT_THROW(c.add("create"), error);
  EXPECT_THROW(c.add("all"), error);
  EXPECT_THROW(c.add(""), error);
  EXPECT_THROW(c.add("has space"), error);
  EXPECT_THROW(c.add("dot.ted"), error);
}

TEST(event, json_round_trips_every_field) {
  event e;
  e.id = "evt-1";
  e.event_name = "Create";
  e.path = "/Root/Content/Docs/a.txt";
  e.content_type = "File";
  e.node_id = 42;
  e.name = "a.txt";
  e.display_name = "A \"quoted\" name";
  e.version_id = 7;
  e.version = "1.0.A";
  e.previous_version = "0.1.D";
  e.version_modification_date = "2024-05-01T10:00:00.000Z";
  e.modified_by = 1;
  e.current_user = "admin";
  e.changed_fields = {"Name", "Description"};
  e.data = {{"Manager", {{"DisplayName", "Boss"}}}};
  e.time = *parse_iso8601("2024-05-01T10:00:00.250Z");
  const json j = e;
  EXPECT_EQ(j["user"], "admin");
  EXPECT_EQ(j["eventName"], "Create");
  EXPECT_EQ(j["nodeId"], 42);
  EXPECT_TRUE(j["time"].is_string());
  const event back = json::parse(j.dump()).get<event>();
  EXPECT_EQ(back.id, e.id);
  EXPECT_EQ(back.event_name, e.event_name);
  EXPECT_EQ(back.path, e.path);
  EXPECT_EQ(back.content_type, e.content_type);
  EXPECT_EQ(back.node_id, e.node_id);
  EXPECT_EQ(back.name, e.name);
  EXPECT_EQ(back.display_name, e.display_name);
  EXPECT_EQ(back.version_id, e.version_id);
  EXPECT_EQ(back.version, e.version);
  EXPECT_EQ(back.previous_version, e.previous_version);
  EXPECT_EQ(back.version_modification_date, e.version_modification_date);
  EXPECT_EQ(back.modified_by, e.modified_by);
  EXPECT_EQ(back.current_user, e.current_user);
  EXPECT_EQ(back.changed_fields, e.changed_fields);
  EXPECT_EQ(back.data, e.data);
  EXPECT_EQ(back.time, e.time);
}

TEST(event, parses_the_design_example) {
  auto e =
      json::parse(R"({ "id": "evt-1", "eventName": "Create", "path": "/Root/Content/Docs/a.txt",
    "contentType": "File", "nodeId": 42, "name": "a.txt", "displayName": "A", "versionId": 7,
    "version": "1.0.A", "previousVersion": null, "modifiedBy": 1, "changedFields": [],
    "data": { } })")
          .get<event>();
  EXPECT_EQ(e.event_name, "Create");
  EXPECT_EQ(e.node_id, 42);
  EXPECT_FALSE(e.previous_version);
  EXPECT_FALSE(e.time);
  EXPECT_TRUE(e.data.is_object());
}

TEST(event, from_json_names_every_bad_field) {
  try {
    (void)json::parse(R"({"id": "evt-9", "nodeId": "42", "versionId": 1.5, "path": 7,
      "changedFields": ["ok", 3], "data": [], "time": "yesterday", "previousVersion": 2,
      "user": false})")
        .get<event>();
    FAIL() << "expected validation_error";
  } catch (const validation_error& e) {
    EXPECT_EQ(fields(e), (strings{"eventName", "path", "nodeId", "versionId", "previousVersion",
                                  "user", "changedFields[1]", "data", "time"}));
    EXPECT_NE(std::string(e.what()).find("evt-9"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("yesterday"), std::string::npos);
  }
}

// An id goes into log lines, and data through recursive copies: 100,000 nested arrays crashed
// `hookline dispatch` instead of being reported as one bad line.
TEST(event, from_json_refuses_control_characters_in_the_id_and_data_nested_too_deep) {
  try {
    (void)json::parse(R"({"id": "evt-\u001b[31mRED\nfake: line", "eventName": "Create"})")
        .get<event>();
    FAIL() << "expected validation_error";
  } catch (const validation_error& e) {
    EXPECT_EQ(fields(e), strings{"id"});
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
  const auto nested = [](int arrays) {
    return R"({"eventName": "Create", "data": {"a": )" + std::string(arrays, '[') +
           std::string(arrays, ']') + "}}";
  };
  try {
    (void)json::parse(nested(100000)).get<event>();
    FAIL() << "expected validation_error";
  } catch (const validation_error& e) {
    EXPECT_EQ(fields(e), strings{"data"});
    EXPECT_NE(std::string(e.what()).find("deeper than 256"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)json::parse(nested(256)).get<event>(), validation_error);  // 257 levels
  EXPECT_EQ(json::parse(nested(255)).get<event>().data.at("a").size(), 1u);     // 256 levels
}

TEST(event, from_json_refuses_a_non_object_and_all_as_an_event) {
  EXPECT_THROW((void)json::array().get<event>(), validation_error);
  EXPECT_THROW((void)json({{"eventName", "All"}}).get<event>(), validation_error);
  EXPECT_THROW((void)json({{"eventName", ""}}).get<event>(), validation_error);
  EXPECT_THROW(
      (void)json({{"eventName", "Create"}, {"nodeId", 18446744073709551615ull}}).get<event>(),
      validation_error);
}

TEST(event, event_names_are_canonicalised_when_parsed) {
  auto e = json({{"eventName", "checkout"}, {"path", "/Root/a"}}).get<event>();
  EXPECT_EQ(e.event_name, "CheckOut");
  event_catalog c;
  EXPECT_EQ(event_from_json(json({{"eventName", "PERMISSIONCHANGE"}}), c).event_name,
            "PermissionChange");
}

TEST(event, unknown_event_names_fail_only_against_a_catalog) {
  const json j = {{"eventName", "Archive"}, {"path", "/Root/a"}};
  EXPECT_EQ(j.get<event>().event_name, "Archive");  // host names pass without a catalog
  event_catalog c;
  try {
    (void)event_from_json(j, c);
    FAIL() << "expected validation_error";
  } catch (const validation_error& e) {
    EXPECT_EQ(fields(e), strings{"eventName"});
    EXPECT_NE(e.errors()[0].reason.find("Archive"), std::string::npos);
  }
  c.add("Archive");
  EXPECT_EQ(event_from_json(j, c).event_name, "Archive");
}

}  // namespace
