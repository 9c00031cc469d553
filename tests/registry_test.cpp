#include "hookline/registry.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "hookline/error.hpp"

namespace {

using namespace hookline;
namespace fs = std::filesystem;

subscription sub(std::string id, std::string path, std::vector<content_type_filter> types,
                 bool all_events = false) {
  subscription s;
  s.id = std::move(id);
  s.url = "https://hooks.example.com/in";
  s.filter.path = std::move(path);
  s.filter.content_types = std::move(types);
  s.filter.triggers_for_all_events = all_events;
  return s;
}

event ev(std::string name, std::string path, std::string type) {
  event e;
  e.event_name = std::move(name);
  e.path = std::move(path);
  e.content_type = std::move(type);
  return e;
}

std::vector<std::string> ids(const std::vector<std::shared_ptr<const subscription>>& subs) {
  std::vector<std::string> out;
  for (const auto& s : subs) out.push_back(s->id);
  return out;
}

std::vector<std::string> match_ids(const registry& r, const event& e) {
  return ids(r.match(e));
}

using ids_t = std::vector<std::string>;

class temp_dir {
 public:
  temp_dir() {
    std::string tmpl = (fs::temp_directory_path() / "hookline-registry-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~temp_dir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_file(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

class hierarchy final : public type_resolver {
 public:
  std::vector<std::string> ancestors(std::string_view type) const override {
    if (type == "Image") return {"File", "GenericContent"};
    if (type == "File") return {"GenericContent"};
    if (type == "Folder") return {"GenericContent"};
    return {};
  }
};

// --- sensenet matching semantics -------------------------------------------------------------

TEST(registry, matches_subtree_including_container) {
  registry r;
  r.add(sub("s", "/Root/Content", {{"File", {"Create"}}}));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/Content", "File")), ids_t{"s"});
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/Content/a.txt", "File")), ids_t{"s"});
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/Content/Docs/Deep/a.txt", "File")), ids_t{"s"});
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root", "File")).empty());
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root/Other/a.txt", "File")).empty());
}

TEST(registry, path_prefix_is_compared_by_segment) {
  registry r;
  r.add(sub("s", "/Root/Content", {{"File", {"Create"}}}));
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root/Content2", "File")).empty());
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root/Content2/a.txt", "File")).empty());
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root/Conten", "File")).empty());
}

TEST(registry, paths_compare_case_insensitively_and_ignore_trailing_slashes) {
  registry r;
  r.add(sub("s", "/root/content/", {{"File", {"Create"}}}));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/Content/A.txt", "File")), ids_t{"s"});
  EXPECT_EQ(match_ids(r, ev("Create", "/ROOT/CONTENT", "File")), ids_t{"s"});
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/Content/", "File")), ids_t{"s"});
}

TEST(registry, missing_path_means_root) {
  registry r;
  r.add(sub("empty", "", {{"File", {"Create"}}}));
  subscription defaulted;
  defaulted.id = "default";
  defaulted.url = "https://h/";
  defaulted.filter.content_types = {{"File", {"Create"}}};
  r.add(defaulted);
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/Any/Where/x", "File")), (ids_t{"empty", "default"}));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root", "File")), (ids_t{"empty", "default"}));
  // An event without a path is under /Root only: filters on a folder below do not select it.
  r.add(sub("docs", "/Root/Docs", {{"File", {"Create"}}}));
  for (const char* none : {"", "/", "//"})
    EXPECT_EQ(match_ids(r, ev("Create", none, "File")), (ids_t{"empty", "default"})) << none;
}

TEST(registry, content_type_must_match_exactly_and_case_sensitively) {
  registry r;
  r.add(sub("s", "/Root", {{"File", {"Create"}}}));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/a", "File")), ids_t{"s"});
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root/a", "file")).empty());
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root/a", "Folder")).empty());
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root/a", "Image")).empty());  // subtype, not opted in
}

TEST(registry, events_are_selected_per_content_type) {
  // The filter from sensenet's documentation.
  registry r;
  r.add(sub("s", "/Root/Content",
            {{"Folder", {"Create"}}, {"File", {"Create", "Modify", "Approve"}}}));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/Content/f", "Folder")), ids_t{"s"});
  EXPECT_TRUE(match_ids(r, ev("Modify", "/Root/Content/f", "Folder")).empty());
  EXPECT_TRUE(match_ids(r, ev("Approve", "/Root/Content/f", "Folder")).empty());
  EXPECT_EQ(match_ids(r, ev("Modify", "/Root/Content/a.txt", "File")), ids_t{"s"});
  EXPECT_EQ(match_ids(r, ev("Approve", "/Root/Content/a.txt", "File")), ids_t{"s"});
  EXPECT_TRUE(match_ids(r, ev("Delete", "/Root/Content/a.txt", "File")).empty());
}

TEST(registry, all_selects_every_event_for_its_type_only) {
  registry r;
  r.add(sub("s", "/Root", {{"Folder", {"All"}}, {"File", {"Create"}}}));
  for (const char* name : {"Create", "Modify", "Delete", "MoveToTrash", "PermissionChange"})
    EXPECT_EQ(match_ids(r, ev(name, "/Root/f", "Folder")), ids_t{"s"}) << name;
  EXPECT_TRUE(match_ids(r, ev("Modify", "/Root/a.txt", "File")).empty());
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root/u", "User")).empty());
}

TEST(registry, triggers_for_all_events_applies_only_to_listed_types) {
  registry r;
  r.add(sub("s", "/Root", {{"File", {}}, {"Folder", {"Create"}}}, true));
  EXPECT_EQ(match_ids(r, ev("Delete", "/Root/a.txt", "File")), ids_t{"s"});
  EXPECT_EQ(match_ids(r, ev("Modify", "/Root/f", "Folder")), ids_t{"s"});
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root/u", "User")).empty());
}

TEST(registry, empty_content_type_list_fires_nothing) {
  registry r;
  r.add(sub("none", "/Root", {}, true));
  r.add(sub("no-events", "/Root", {{"File", {}}}));
  EXPECT_EQ(r.size(), 2u);
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root/a.txt", "File")).empty());
  EXPECT_TRUE(match_ids(r, ev("Modify", "/Root/f", "Folder")).empty());
}

TEST(registry, star_matches_any_content_type) {
  registry r;
  r.add(sub("star", "/Root/Content", {{"*", {"Delete"}}}));
  EXPECT_EQ(match_ids(r, ev("Delete", "/Root/Content/a", "File")), ids_t{"star"});
  EXPECT_EQ(match_ids(r, ev("Delete", "/Root/Content/b", "SomethingNew")), ids_t{"star"});
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root/Content/a", "File")).empty());
}

TEST(registry, include_subtypes_uses_the_type_resolver) {
  registry_options o;
  o.types = std::make_shared<hierarchy>();
  registry r(std::move(o));
  auto wide = sub("wide", "/Root", {{"File", {"Create"}}});
  wide.filter.include_subtypes = true;
  r.add(wide);
  r.add(sub("exact", "/Root", {{"File", {"Create"}}}));
  auto generic = sub("generic", "/Root/Content", {{"GenericContent", {"All"}}});
  generic.filter.include_subtypes = true;
  r.add(generic);
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/Content/i.png", "Image")), (ids_t{"wide", "generic"}));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/Content/a.txt", "File")),
            (ids_t{"wide", "exact", "generic"}));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/Content/f", "Folder")), ids_t{"generic"});
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root/Content/u", "User")).empty());
}

TEST(registry, include_subtypes_without_a_resolver_matches_exact_types) {
  registry r;
  auto wide = sub("wide", "/Root", {{"File", {"Create"}}});
  wide.filter.include_subtypes = true;
  r.add(wide);
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/a", "File")), ids_t{"wide"});
  EXPECT_TRUE(match_ids(r, ev("Create", "/Root/a", "Image")).empty());
}

TEST(registry, disabled_subscriptions_never_fire) {
  registry r;
  auto off = sub("off", "/Root", {{"File", {"All"}}});
  off.enabled = false;
  r.add(off);
  r.add(sub("on", "/Root", {{"File", {"All"}}}));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/a", "File")), ids_t{"on"});
  EXPECT_TRUE(r.get("off").has_value());
  ASSERT_TRUE(r.set_enabled("off", true));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/a", "File")), (ids_t{"off", "on"}));
  ASSERT_TRUE(r.set_enabled("on", false));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/a", "File")), ids_t{"off"});
  EXPECT_FALSE(r.get("on")->enabled);
  EXPECT_FALSE(r.set_enabled("missing", true));
}

TEST(registry, event_names_compare_case_insensitively) {
  registry r;
  r.add(sub("s", "/Root", {{"File", {"checkout", "MOVETOTRASH"}}}));
  EXPECT_EQ(match_ids(r, ev("CheckOut", "/Root/a", "File")), ids_t{"s"});
  EXPECT_EQ(match_ids(r, ev("moveToTrash", "/Root/a", "File")), ids_t{"s"});
  EXPECT_TRUE(match_ids(r, ev("CheckIn", "/Root/a", "File")).empty());
}

TEST(registry, results_follow_registration_order_and_hold_each_subscription_once) {
  registry r;
  r.add(sub("c", "/Root/A/B", {{"File", {"Create"}}}));
  // Matches through three routes: exact type, `*`, and a second entry for the same type.
  r.add(sub("a", "/Root", {{"File", {"Create"}}, {"*", {"All"}}, {"File", {"All"}}}));
  r.add(sub("b", "/Root/A", {{"*", {"Create", "create"}}}));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/A/B/x", "File")), (ids_t{"c", "a", "b"}));
  // update keeps the position; remove + add goes to the end.
  r.update(sub("c", "/Root", {{"File", {"Create"}}}));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/A/B/x", "File")), (ids_t{"c", "a", "b"}));
  ASSERT_TRUE(r.remove("a"));
  r.add(sub("a", "/Root", {{"File", {"Create"}}}));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/A/B/x", "File")), (ids_t{"c", "b", "a"}));
  std::vector<std::string> listed;
  for (const auto& s : r.list()) listed.push_back(s.id);
  EXPECT_EQ(listed, (ids_t{"c", "b", "a"}));
}

TEST(registry, unknown_event_names_in_events_only_fire_all_subscriptions) {
  registry r;
  r.add(sub("all", "/Root", {{"File", {"All"}}}));
  r.add(sub("create", "/Root", {{"File", {"Create"}}}));
  EXPECT_EQ(match_ids(r, ev("HostSpecific", "/Root/a", "File")), ids_t{"all"});
}

// --- writes ----------------------------------------------------------------------------------

TEST(registry, add_rejects_an_invalid_subscription_listing_every_field) {
  registry r;
  auto bad = sub("bad", "/Elsewhere", {{"File", {"Create", "Explode"}}});
  bad.url = "ftp://x";
  bad.http_method = "PO ST";
  try {
    r.add(bad);
    FAIL() << "expected validation_error";
  } catch (const validation_error& e) {
    std::vector<std::string> fields;
    for (const auto& f : e.errors()) fields.push_back(f.field);
    EXPECT_EQ(fields,
              (ids_t{"url", "httpMethod", "filter.path", "filter.contentTypes[0].events[1]"}));
    EXPECT_NE(std::string(e.what()).find("bad"), std::string::npos);
  }
  EXPECT_EQ(r.size(), 0u);
  EXPECT_FALSE(r.get("bad"));
}

// Built through the C++ API too: the message, the request and the attempt log all say "PATCH".
TEST(registry, methods_are_kept_upper_cased) {
  registry r;
  subscription s;
  s.id = "a";
  s.url = "https://a.example.com/";
  s.http_method = "patch";
  r.add(s);
  EXPECT_EQ(r.get("a")->http_method, "PATCH");
  EXPECT_EQ(r.current()->find("a")->http_method, "PATCH");
}

TEST(registry, set_enabled_if_unchanged_acts_only_on_the_object_it_was_given) {
  registry r;
  subscription s;
  s.id = "a";
  s.url = "https://a.example.com/";
  r.add(s);
  const auto seen = r.current()->find("a");
  ASSERT_TRUE(seen);
  EXPECT_TRUE(r.set_enabled_if_unchanged(seen, false));
  EXPECT_FALSE(r.get("a")->enabled);
  // `seen` is now an old object: enabling through it changes nothing.
  EXPECT_FALSE(r.set_enabled_if_unchanged(seen, true));
  EXPECT_FALSE(r.get("a")->enabled);
  r.upsert(s);  // the host's new configuration, enabled
  const auto fresh = r.current()->find("a");
  EXPECT_FALSE(r.set_enabled_if_unchanged(seen, false));
  EXPECT_TRUE(r.get("a")->enabled);
  EXPECT_TRUE(r.set_enabled_if_unchanged(fresh, true));  // already so: true, nothing changes
  EXPECT_EQ(r.current()->find("a"), fresh);
  r.remove("a");
  EXPECT_FALSE(r.set_enabled_if_unchanged(fresh, false));
}

TEST(registry, add_refuses_a_duplicate_id_and_update_an_unknown_one) {
  registry r;
  r.add(sub("s", "/Root", {{"File", {"Create"}}}));
  EXPECT_THROW(r.add(sub("s", "/Root", {{"Folder", {"Create"}}})), error);
  EXPECT_EQ(r.get("s")->filter.content_types[0].name, "File");
  EXPECT_THROW(r.update(sub("t", "/Root", {})), error);
  EXPECT_FALSE(r.remove("t"));
  r.upsert(sub("t", "/Root", {{"Folder", {"Create"}}}));
  r.upsert(sub("s", "/Root", {{"Folder", {"Create"}}}));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/f", "Folder")), (ids_t{"s", "t"}));
  EXPECT_EQ(r.size(), 2u);
}

TEST(registry, snapshots_are_immutable) {
  registry r;
  r.add(sub("s", "/Root", {{"File", {"Create"}}}));
  auto before = r.current();
  r.remove("s");
  r.add(sub("t", "/Root", {{"File", {"Create"}}}));
  EXPECT_EQ(ids(before->match(ev("Create", "/Root/a", "File"))), ids_t{"s"});
  EXPECT_EQ(before->size(), 1u);
  ASSERT_TRUE(before->find("s"));
  EXPECT_FALSE(before->find("t"));
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/a", "File")), ids_t{"t"});
  EXPECT_FALSE(r.current()->find("s"));
}

TEST(registry, many_single_writes_agree_with_a_brute_force_model) {
  // Drives the registry through adds, updates, removes and toggles (enough to fold the delta
  // into the base several times) and compares every match with a direct evaluation.
  registry r;
  std::mt19937 rng(7);
  const std::vector<std::string> paths = {"/Root", "/Root/A", "/Root/A/B", "/Root/C",
                                          "/Root/A/B/D"};
  const std::vector<std::string> types = {"File", "Folder", "*"};
  const std::vector<std::string> names = {"Create", "Modify", "Delete"};
  std::map<std::string, subscription> model;  // id -> sub
  std::vector<std::string> order;             // registration order
  auto random_sub = [&](const std::string& id) {
    auto s = sub(id, paths[rng() % paths.size()],
                 {{types[rng() % types.size()], {names[rng() % names.size()]}}}, rng() % 5 == 0);
    s.enabled = rng() % 6 != 0;
    return s;
  };
  for (int step = 0; step < 1500; ++step) {
    const std::string id = "s" + std::to_string(rng() % 300);
    const int op = static_cast<int>(rng() % 4);
    if (op <= 1) {
      auto s = random_sub(id);
      if (!model.count(id)) order.push_back(id);
      model[id] = s;
      r.upsert(s);
    } else if (op == 2) {
      const bool had = model.erase(id) > 0;
      if (had) order.erase(std::find(order.begin(), order.end(), id));
      EXPECT_EQ(r.remove(id), had);
    } else if (model.count(id)) {
      model[id].enabled = !model[id].enabled;
      r.set_enabled(id, model[id].enabled);
    }
    if (step % 50 != 0) continue;
    for (const auto& p : {"/Root/A/B/D/x", "/Root/C", "/Root/A"}) {
      for (const auto& t : {"File", "Folder"}) {
        for (const auto& n : names) {
          ids_t expected;
          for (const auto& sid : order) {
            const auto& s = model[sid];
            if (!s.enabled) continue;
            const std::string fp = s.filter.path;
            const std::string ep = p;
            if (!(ep == fp || ep.starts_with(fp + "/"))) continue;
            const auto& ct = s.filter.content_types[0];
            if (ct.name != "*" && ct.name != t) continue;
            if (!s.filter.triggers_for_all_events && ct.events[0] != n) continue;
            expected.push_back(sid);
          }
          ASSERT_EQ(match_ids(r, ev(n, p, t)), expected) << "step " << step << " " << p;
        }
      }
    }
    ASSERT_EQ(r.size(), model.size());
    std::vector<std::string> listed;
    for (const auto& s : r.list()) listed.push_back(s.id);
    ASSERT_EQ(listed, order);
  }
}

TEST(registry, replace_all_reports_invalid_entries_and_duplicate_ids) {
  registry r;
  r.add(sub("old", "/Root", {{"File", {"Create"}}}));
  auto bad = sub("bad", "/Root", {{"File", {"Create"}}});
  bad.url.clear();
  auto report = r.replace_all({sub("a", "/Root", {{"File", {"Create"}}}), bad,
                               sub("a", "/Root", {{"Folder", {"Create"}}}),
                               sub("b", "/Root", {{"File", {"Create"}}})});
  EXPECT_EQ(report.loaded, 2u);
  ASSERT_EQ(report.rejected.size(), 2u);
  EXPECT_EQ(report.rejected[0].index, 1u);
  EXPECT_EQ(report.rejected[0].errors[0].field, "url");
  EXPECT_EQ(report.rejected[1].index, 2u);
  EXPECT_EQ(report.rejected[1].errors[0].field, "id");
  // The message counts entries from 1, as the command line tool does; `index` counts from 0.
  EXPECT_EQ(report.rejected[1].errors[0].reason,
            "duplicate id 'a': entry 1 has it already (entries count from 1)");
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/x", "File")), (ids_t{"a", "b"}));
  EXPECT_FALSE(r.get("old"));
}

// --- files -----------------------------------------------------------------------------------

TEST(registry, load_file_skips_invalid_entries_and_loads_the_rest) {
  temp_dir dir;
  const auto file = dir.path() / "subs.json";
  write_file(file, R"([
    {"id": "good1", "url": "https://a.example/in",
     "filter": {"contentTypes": [{"name": "File", "events": ["Create"]}]}},
    {"id": "bad-url", "url": "notaurl",
     "filter": {"contentTypes": [{"name": "File", "events": ["Create"]}]}},
    42,
    {"id": "bad-filter", "url": "https://a.example/in", "filter": "{not json"},
    {"id": "bad-event", "url": "https://a.example/in",
     "filter": {"contentTypes": [{"name": "File", "events": ["Nope"]}]}},
    {"id": "good2", "url": "https://b.example/in",
     "filter": {"contentTypes": [{"name": "File", "events": ["All"]}]}}
  ])");
  registry r;
  auto report = r.load_file(file);
  EXPECT_EQ(report.loaded, 2u);
  ASSERT_EQ(report.rejected.size(), 4u);
  EXPECT_EQ(report.rejected[0].index, 1u);
  EXPECT_EQ(report.rejected[0].id, "bad-url");
  EXPECT_EQ(report.rejected[0].errors[0].field, "url");
  EXPECT_EQ(report.rejected[1].index, 2u);
  EXPECT_EQ(report.rejected[2].id, "bad-filter");
  EXPECT_EQ(report.rejected[2].errors[0].field, "filter");
  EXPECT_EQ(report.rejected[3].errors[0].field, "filter.contentTypes[0].events[0]");
  EXPECT_EQ(match_ids(r, ev("Create", "/Root/x", "File")), (ids_t{"good1", "good2"}));
}

TEST(registry, load_json_accepts_an_object_with_a_subscriptions_array_and_sensenet_names) {
  registry r;
  auto j = nlohmann::json::parse(R"({"subscriptions": [
    {"Id": 1234, "Name": "docs", "WebHookUrl": "https://hooks.example.com/in",
     "WebHookHttpMethod": "PUT", "Enabled": true,
     "WebHookFilter": "{\"Path\":\"/Root/Content\",\"ContentTypes\":[{\"Name\":\"File\",\"Events\":[\"Create\",\"Checkout\"]}],\"TriggersForAllEvents\":false}",
     "WebHookHeaders": "{\"X-Api-Key\":\"k\"}"}
  ]})");
  auto report = r.load_json(j);
  EXPECT_EQ(report.loaded, 1u);
  EXPECT_TRUE(report.rejected.empty());
  auto s = r.get("1234");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->http_method, "PUT");
  EXPECT_EQ(match_ids(r, ev("CheckOut", "/Root/Content/a", "File")), ids_t{"1234"});
  EXPECT_THROW(r.load_json(nlohmann::json{{"items", 1}}), error);
  EXPECT_THROW(r.load_json(nlohmann::json("x")), error);
}

// What sensenet's OData API returns for its subscriptions loads as it is, in the library as in
// the command line tool.
TEST(registry, load_file_accepts_a_sensenet_odata_export) {
  const auto file = std::filesystem::temp_directory_path() /
                    ("hookline_odata_" + std::to_string(::getpid()) + ".json");
  {
    std::ofstream out(file);
    out << R"({"d": {"__count": 1, "results": [
      {"Id": 5, "Name": "n", "WebHookUrl": "https://a.example.com/", "Enabled": "true"}]}})";
  }
  registry r;
  const auto report = r.load_file(file);
  std::filesystem::remove(file);
  EXPECT_EQ(report.loaded, 1u);
  ASSERT_TRUE(r.get("5"));
  EXPECT_EQ(r.get("5")->url, "https://a.example.com/");
  try {
    r.load_json(nlohmann::json{{"d", {{"results", 5}}}});
    ADD_FAILURE() << "a d.results that is no array was accepted";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("sensenet OData export"), std::string::npos) << e.what();
  }
}

// What load_file throws for a file holding `text` (nothing is loaded).
std::string load_file_error(const std::filesystem::path& file, const std::string& text) {
  write_file(file, text);
  registry r;
  try {
    r.load_file(file);
    ADD_FAILURE() << "expected an error";
  } catch (const error& e) {
    EXPECT_EQ(r.size(), 0u);
    return e.what();
  }
  return {};
}

TEST(registry, load_file_reports_a_syntax_error_with_file_and_line) {
  temp_dir dir;
  const auto file = dir.path() / "broken.json";
  const auto what = load_file_error(file, "[\n  {\"id\": \"a\",\n   \"url\": }\n]\n");
  EXPECT_NE(what.find(file.string()), std::string::npos) << what;
  EXPECT_NE(what.find("line 3"), std::string::npos) << what;
}

// nlohmann's message ends with the text it last read, here most of a secret pasted with a tab.
TEST(registry, load_file_syntax_errors_never_repeat_the_text_they_read) {
  temp_dir dir;
  const auto what = load_file_error(dir.path() / "pasted.json",
                                    "[{\"id\": \"a\", \"url\": \"https://h/\",\n  \"secret\": "
                                    "\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\t\"}]\n");
  EXPECT_NE(what.find("line 2"), std::string::npos) << what;
  EXPECT_NE(what.find("control character"), std::string::npos) << what;
  EXPECT_EQ(what.find("MfKQ9r8"), std::string::npos) << what;
}

TEST(registry, load_file_of_a_missing_file_names_it) {
  registry r;
  try {
    r.load_file("/nonexistent/dir/subs.json");
    FAIL() << "expected error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/subs.json"), std::string::npos);
  }
}

TEST(registry, save_file_round_trips_and_leaves_no_temporary_file) {
  temp_dir dir;
  const auto file = dir.path() / "subs.json";
  registry r;
  auto a = sub("a", "/Root/Content", {{"File", {"Create", "Modify"}}, {"Folder", {"All"}}});
  a.headers = {{"X-Z", "1"}, {"X-A", "2"}};
  a.secrets = {"whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="};
  a.payload = R"({"user": @@currentuser@@})";
  a.rate_limit = 2.5;
  r.add(a);
  auto b = sub("b", "", {{"*", {"Delete"}}}, true);
  b.enabled = false;
  r.add(b);
  r.save_file(file);
  std::size_t entries = 0;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    (void)entry;
    ++entries;
  }
  EXPECT_EQ(entries, 1u);
  struct stat st {};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);  // holds secrets

  registry copy;
  auto report = copy.load_file(file);
  EXPECT_EQ(report.loaded, 2u);
  EXPECT_EQ(copy.list(), r.list());
}

TEST(registry, save_file_replaces_the_old_file_whole) {
  temp_dir dir;
  const auto file = dir.path() / "subs.json";
  write_file(file, std::string(100000, 'x'));  // longer than what replaces it
  ::chmod(file.c_str(), 0640);
  registry r;
  r.add(sub("only", "/Root", {{"File", {"Create"}}}));
  r.save_file(file);
  std::ifstream in(file);
  auto j = nlohmann::json::parse(in);
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["id"], "only");
  struct stat st {};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);  // an existing file keeps its mode
  EXPECT_THROW(r.save_file(dir.path() / "no-such-dir" / "subs.json"), error);
}

// --- concurrency -----------------------------------------------------------------------------

TEST(registry, match_runs_concurrently_with_writers) {
  registry r;
  r.add(sub("anchor", "/Root", {{"File", {"Create"}}}));
  std::atomic<bool> stop{false};
  std::atomic<long> matches{0};
  std::atomic<long> bad{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&] {
      const auto e = ev("Create", "/Root/A/B/c.txt", "File");
      while (!stop.load()) {
        auto found = r.match(e);
        // The anchor is registered first and never changes, so it always leads the result.
        if (found.empty() || found.front()->id != "anchor") ++bad;
        for (std::size_t i = 1; i < found.size(); ++i)
          if (found[i]->id == found[i - 1]->id) ++bad;
        ++matches;
      }
    });
  }
  for (int i = 0; i < 600; ++i) {
    const std::string id = "w" + std::to_string(i % 50);
    r.upsert(sub(id, i % 2 ? "/Root/A" : "/Root/A/B", {{"File", {"Create"}}}));
    if (i % 3 == 0) r.remove("w" + std::to_string((i * 7) % 50));
    if (i % 5 == 0) r.set_enabled(id, i % 10 != 0);
  }
  while (matches.load() < 1000) std::this_thread::yield();
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0);
  // The final state is the one every reader sees next.
  const auto final_ids = match_ids(r, ev("Create", "/Root/A/B/c.txt", "File"));
  std::size_t expected = 1;
  for (const auto& s : r.list())
    if (s.id != "anchor" && s.enabled) ++expected;
  EXPECT_EQ(final_ids.size(), expected);
}

}  // namespace
