// Starts the example content server binary and drives its REST API end to end, with the
// loopback test server as the webhook receiver.
#include <httplib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/process.hpp"
#include "support/test_server.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using hookline::test::bin_dir;
using hookline::test::response;
using hookline::test::test_server;
using namespace std::chrono_literals;

// The content server in the background on a free port; SIGTERM on destruction.
class server_process {
 public:
  server_process(const std::string& dir, const std::string& store)
      : port_file_(dir + "/port"),
        proc_(args(port_file_, store), dir + "/stdout", dir + "/stderr", 10s) {
    port_ = hookline::test::wait_for_port_file(port_file_, 10s);
  }
  int port() const { return port_; }
  std::string err() const { return proc_.err(); }

 private:
  static std::vector<std::string> args(const std::string& port_file, const std::string& store) {
    fs::remove(port_file);
    return {bin_dir() + "/content_server",
            "--port",
            "0",
            "--port-file",
            port_file,
            "--store",
            store,
            "--allow-private",
            "--retry-schedule",
            "0.2,0.2",
            "--quiet"};
  }

  std::string port_file_;
  hookline::test::background_process proc_;
  int port_ = 0;
};

class content_server : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hookline-cs-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    start();
  }
  void TearDown() override {
    cs_.reset();
    fs::remove_all(dir_);
  }
  void start() {
    cs_ = std::make_unique<server_process>(dir_, "sqlite:" + dir_ + "/cs.db");
    ASSERT_GT(cs_->port(), 0) << cs_->err();
    client_ = std::make_unique<httplib::Client>("127.0.0.1", cs_->port());
    client_->set_read_timeout(10, 0);
  }

  std::pair<int, json> call(const std::string& method, const std::string& path,
                            const json& body = nullptr) {
    httplib::Headers h = {{"X-User", "editor"}};
    const std::string text = body.is_null() ? std::string() : body.dump();
    auto r = method == "GET"     ? client_->Get(path, h)
             : method == "POST"  ? client_->Post(path, h, text, "application/json")
             : method == "PUT"   ? client_->Put(path, h, text, "application/json")
             : method == "PATCH" ? client_->Patch(path, h, text, "application/json")
                                 : client_->Delete(path, h);
    if (!r) return {0, nullptr};
    return {r->status, r->body.empty() ? json(nullptr) : json::parse(r->body)};
  }

  // POST /content, returning the event names the server reported.
  std::vector<std::string> create(const std::string& parent, const std::string& name,
                                  const std::string& type, json extra = json::object()) {
    extra["parent"] = parent;
    extra["name"] = name;
    extra["type"] = type;
    auto [status, j] = call("POST", "/content", extra);
    EXPECT_EQ(status, 201) << j.dump();
    return j.value("events", std::vector<std::string>{});
  }
  std::vector<std::string> act(const std::string& path, const std::string& verb,
                               const json& body = json::object()) {
    auto [status, j] = call("POST", "/content" + path + "/" + verb, body);
    EXPECT_EQ(status, 200) << verb << " " << path << ": " << j.dump();
    return j.value("events", std::vector<std::string>{});
  }
  json docs_subscription(const std::string& id, const std::string& url_path) {
    return {
        {"id", id},
        {"url", receiver_.url(url_path)},
        {"secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
        {"filter",
         {{"path", "/Root/Content/Docs"},
          {"includeSubtypes", true},
          {"contentTypes",
           {{{"name", "Folder"}, {"events", {"All"}}}, {{"name", "File"}, {"events", {"All"}}}}}}},
        {"payload", R"({"who": "@@currentuser@@", "where": "@@content.Path@@"})"}};
  }

  using names = std::vector<std::string>;
  std::string dir_;
  test_server receiver_;
  std::unique_ptr<server_process> cs_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(content_server, subscription_crud_with_every_invalid_field_reported) {
  auto [status, j] =
      call("POST", "/webhooks",
           {{"id", "bad"},
            {"url", "ftp://example.com"},
            {"headers", {{"X-A", "a\r\nb"}}},
            {"filter",
             {{"path", "/Root"}, {"contentTypes", {{{"name", "File"}, {"events", {"Crate"}}}}}}}});
  EXPECT_EQ(status, 400);
  std::set<std::string> fields;
  for (const auto& f : j["invalidFields"]) {
    fields.insert(f["field"].get<std::string>());
    EXPECT_FALSE(f["reason"].get<std::string>().empty());
  }
  EXPECT_TRUE(fields.count("url")) << j.dump();
  EXPECT_TRUE(fields.count("headers.X-A")) << j.dump();
  EXPECT_TRUE(fields.count("filter.contentTypes[0].events[0]")) << j.dump();
  EXPECT_TRUE(j.contains("error"));

  std::tie(status, j) = call("POST", "/webhooks", docs_subscription("docs", "/in"));
  ASSERT_EQ(status, 201) << j.dump();
  EXPECT_EQ(j["id"], "docs");
  EXPECT_EQ(j["signed"], true);
  EXPECT_FALSE(j.contains("secret") || j.contains("secrets")) << "secrets are never shown";

  // sensenet's field names, filter and headers as JSON strings; the Name serves as the id, as
  // everywhere (subscriptions.md).
  std::tie(status, j) =
      call("POST", "/webhooks",
           {{"Name", "sn"},
            {"WebHookUrl", receiver_.url("/sn")},
            {"WebHookFilter",
             R"({"Path":"/Root/Content","ContentTypes":[{"Name":"File","Events":["Create"]}]})"},
            {"WebHookHeaders", R"({"X-Api-Key":"k"})"}});
  ASSERT_EQ(status, 201) << j.dump();
  EXPECT_EQ(j["id"], "sn");
  // Any spelling of the id key is read; without an id or a name the server assigns one.
  std::tie(status, j) = call("POST", "/webhooks", {{"ID", "upper"}, {"url", receiver_.url("/u")}});
  ASSERT_EQ(status, 201) << j.dump();
  EXPECT_EQ(j["id"], "upper");
  std::tie(status, j) = call("POST", "/webhooks", {{"url", receiver_.url("/a")}});
  ASSERT_EQ(status, 201) << j.dump();
  EXPECT_EQ(j["id"].get<std::string>().rfind("wh-", 0), 0u) << j.dump();
  const std::string assigned = j["id"];
  ASSERT_EQ(call("DELETE", "/webhooks/upper").first, 204);
  ASSERT_EQ(call("DELETE", "/webhooks/" + assigned).first, 204);

  EXPECT_EQ(call("POST", "/webhooks", docs_subscription("docs", "/in")).first, 409);
  std::tie(status, j) = call("GET", "/webhooks");
  EXPECT_EQ(j.size(), 2u);

  auto changed = docs_subscription("docs", "/in2");
  changed.erase("secret");
  changed["name"] = "renamed";
  std::tie(status, j) = call("PUT", "/webhooks/docs", changed);
  EXPECT_EQ(status, 200) << j.dump();
  EXPECT_EQ(j["name"], "renamed");
  EXPECT_EQ(j["signed"], true) << "a PUT without a secret keeps the old one";
  changed["url"] = "not a url";
  EXPECT_EQ(call("PUT", "/webhooks/docs", changed).first, 400);
  EXPECT_EQ(call("PUT", "/webhooks/nobody", docs_subscription("nobody", "/x")).first, 404);

  EXPECT_EQ(call("DELETE", "/webhooks/sn").first, 204);
  EXPECT_EQ(call("GET", "/webhooks/sn").first, 404);
  EXPECT_EQ(call("GET", "/webhooks/docs").second["url"], receiver_.url("/in2"));

  // Subscriptions survive a restart of the server.
  cs_.reset();
  start();
  std::tie(status, j) = call("GET", "/webhooks/docs");
  EXPECT_EQ(status, 200);
  EXPECT_EQ(j["name"], "renamed");
}

TEST_F(content_server, content_operations_deliver_the_sensenet_events) {
  ASSERT_EQ(call("POST", "/webhooks", docs_subscription("docs", "/in")).first, 201);

  EXPECT_EQ(create("/Root/Content", "Docs", "Folder"), (names{"Create", "Approve"}));
  EXPECT_EQ(create("/Root/Content/Docs", "a.txt", "File", {{"versioning", "majorMinor"}}),
            (names{"Create", "Draft"}));
  auto [status, j] =
      call("PATCH", "/content/Root/Content/Docs/a.txt", {{"fields", {{"Description", "first"}}}});
  EXPECT_EQ(status, 200);
  EXPECT_EQ(j["events"], (names{"Modify", "Draft"}));
  EXPECT_EQ(j["content"]["version"], "0.2.D");
  EXPECT_EQ(act("/Root/Content/Docs/a.txt", "publish"), (names{"Publish", "Approve"}));
  EXPECT_EQ(act("/Root/Content/Docs/a.txt", "checkout"), (names{"CheckOut"}));
  EXPECT_EQ(act("/Root/Content/Docs/a.txt", "checkin"), (names{"CheckIn", "Draft"}));
  EXPECT_EQ(create("/Root/Content/Docs", "b.txt", "File", {{"approving", true}}),
            (names{"Create", "Pending"}));
  EXPECT_EQ(act("/Root/Content/Docs/b.txt", "approve"), (names{"Approve"}));
  EXPECT_EQ(create("/Root/Content/Docs", "Sub", "Folder"), (names{"Create", "Approve"}));
  EXPECT_EQ(act("/Root/Content/Docs/b.txt", "move", {{"target", "/Root/Content/Docs/Sub"}}),
            (names{"Move"}));
  EXPECT_EQ(act("/Root/Content/Docs/a.txt", "trash"), (names{"MoveToTrash"}));
  EXPECT_EQ(act("/Root/Content/Docs/a.txt", "restore"), (names{"RestoreFromTrash"}));
  // An Image is a File: the filter on File with includeSubtypes covers it.
  EXPECT_EQ(create("/Root/Content/Docs", "p.png", "Image"), (names{"Create", "Approve"}));
  // Outside the filter's path: no delivery.
  EXPECT_EQ(create("/Root/Content", "other.txt", "File"), (names{"Create", "Approve"}));

  const std::multiset<std::string> expected = {"Create /Root/Content/Docs 1.0.A",
                                               "Approve /Root/Content/Docs 1.0.A",
                                               "Create /Root/Content/Docs/a.txt 0.1.D",
                                               "Draft /Root/Content/Docs/a.txt 0.1.D",
                                               "Modify /Root/Content/Docs/a.txt 0.2.D",
                                               "Draft /Root/Content/Docs/a.txt 0.2.D",
                                               "Publish /Root/Content/Docs/a.txt 1.0.A",
                                               "Approve /Root/Content/Docs/a.txt 1.0.A",
                                               "CheckOut /Root/Content/Docs/a.txt 1.1.L",
                                               "CheckIn /Root/Content/Docs/a.txt 1.1.D",
                                               "Draft /Root/Content/Docs/a.txt 1.1.D",
                                               "Create /Root/Content/Docs/b.txt 1.0.P",
                                               "Pending /Root/Content/Docs/b.txt 1.0.P",
                                               "Approve /Root/Content/Docs/b.txt 1.0.A",
                                               "Create /Root/Content/Docs/Sub 1.0.A",
                                               "Approve /Root/Content/Docs/Sub 1.0.A",
                                               "Move /Root/Content/Docs/Sub/b.txt 1.0.A",
                                               "MoveToTrash /Root/Content/Docs/a.txt 1.1.D",
                                               "RestoreFromTrash /Root/Content/Docs/a.txt 1.1.D",
                                               "Create /Root/Content/Docs/p.png 1.0.A",
                                               "Approve /Root/Content/Docs/p.png 1.0.A"};
  ASSERT_TRUE(receiver_.wait_for_requests("/in", expected.size(), 20s));
  std::this_thread::sleep_for(300ms);  // nothing more may come
  std::multiset<std::string> got;
  std::set<std::string> ids;
  for (const auto& req : receiver_.requests("/in")) {
    const auto body = json::parse(req.body);
    got.insert(body["eventName"].get<std::string>() + " " + body["path"].get<std::string>() + " " +
               body["version"].get<std::string>());
    ids.insert(req.header("webhook-id").value_or(""));
    EXPECT_EQ(body["who"], "editor");
    EXPECT_EQ(body["where"], body["path"]);
    EXPECT_TRUE(req.has_header("webhook-signature"));
  }
  EXPECT_EQ(got, expected);
  EXPECT_EQ(ids.size(), expected.size());
  for (const auto& req : receiver_.requests("/in")) {
    const auto body = json::parse(req.body);
    if (body["eventName"] == "Modify") {
      EXPECT_EQ(body["changedFields"], json::array({"Description"}));
      EXPECT_EQ(body["previousVersion"], "0.1.D");
    }
  }
}

TEST_F(content_server, bad_content_requests_are_answered_with_the_reason) {
  auto [status, j] = call("POST", "/content", {{"parent", "/Root/Content"}});
  EXPECT_EQ(status, 400);
  std::set<std::string> fields;
  for (const auto& f : j["invalidFields"]) fields.insert(f["field"].get<std::string>());
  EXPECT_EQ(fields, (std::set<std::string>{"name", "type"}));

  std::tie(status, j) =
      call("POST", "/content", {{"parent", "/Root/Content"}, {"name", "x"}, {"type", "Spaceship"}});
  EXPECT_EQ(status, 400);
  EXPECT_NE(j.dump().find("Spaceship"), std::string::npos);

  std::tie(status, j) =
      call("POST", "/content", {{"parent", "/Root/Nowhere"}, {"name", "x"}, {"type", "File"}});
  EXPECT_EQ(status, 404);

  auto raw = client_->Post("/content", "{not json", "application/json");
  ASSERT_TRUE(raw);
  EXPECT_EQ(raw->status, 400);

  create("/Root/Content", "f.txt", "File");
  std::tie(status, j) = call("POST", "/content/Root/Content/f.txt/approve");
  EXPECT_EQ(status, 409) << "approving needs a pending version";
  EXPECT_EQ(
      call("POST", "/content", {{"parent", "/Root/Content"}, {"name", "f.txt"}, {"type", "File"}})
          .first,
      409);
  EXPECT_EQ(call("DELETE", "/content/Root/Content/f.txt").second["events"], (names{"Delete"}));
  EXPECT_EQ(call("GET", "/content/Root/Content/f.txt").first, 404);
}

TEST_F(content_server, deliveries_stats_and_redeliver_per_subscription) {
  // The answer ends in a byte that is not UTF-8: the deliveries endpoint must still answer.
  receiver_.script("/flaky", {response::of(500, "try later \xC3")});
  ASSERT_EQ(call("POST", "/webhooks", docs_subscription("flaky", "/flaky")).first, 201);
  create("/Root/Content", "Docs", "Folder");  // Create + Approve: 2 messages
  ASSERT_TRUE(receiver_.wait_for_requests("/flaky", 3, 20s));

  json d;
  for (int i = 0; i < 100; ++i) {
    d = call("GET", "/webhooks/flaky/deliveries").second;
    std::size_t delivered = 0;
    for (const auto& m : d["messages"]) delivered += m["status"] == "delivered";
    if (delivered == 2 && d["attempts"].size() == 3) break;
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(d["messages"].size(), 2u) << d.dump();
  ASSERT_EQ(d["attempts"].size(), 3u) << d.dump();
  json failed;
  for (const auto& a : d["attempts"]) {
    if (a["statusCode"] == 500) failed = a;
  }
  ASSERT_FALSE(failed.is_null()) << d.dump();
  EXPECT_EQ(failed["success"], false);
  EXPECT_EQ(failed["responseHead"], "try later \xEF\xBF\xBD");  // U+FFFD for the stray byte
  EXPECT_EQ(failed["subscriptionId"], "flaky");
  const std::string retried = failed["messageId"];
  std::vector<int> tries_of_retried;
  for (const auto& a : d["attempts"]) {
    if (a["messageId"] == retried) tries_of_retried.push_back(a["attempt"]);
  }
  EXPECT_EQ(tries_of_retried, (std::vector<int>{1, 2}));

  auto [status, s] = call("GET", "/webhooks/flaky/stats");
  EXPECT_EQ(status, 200);
  EXPECT_EQ(s["calls"], 3);
  EXPECT_EQ(s["status5xx"], 1);
  EXPECT_EQ(s["status2xx"], 2);
  EXPECT_EQ(s["failures"], 1);
  EXPECT_NEAR(s["successRate"].get<double>(), 2.0 / 3.0, 1e-9);
  EXPECT_EQ(s["messages"]["delivered"], 2);

  std::tie(status, s) = call("POST", "/deliveries/" + retried + "/redeliver");
  EXPECT_EQ(status, 202);
  ASSERT_TRUE(receiver_.wait_for_requests("/flaky", 4, 20s));
  EXPECT_EQ(receiver_.requests("/flaky").back().header("webhook-id"), retried);
  EXPECT_EQ(call("POST", "/deliveries/msg_nope/redeliver").first, 404);

  // The manual trigger sends to one subscription regardless of its filter.
  std::tie(status, s) =
      call("POST", "/webhooks/flaky/fire", {{"path", "/Root/Content"}, {"eventName", "modify"}});
  EXPECT_EQ(status, 202) << s.dump();
  ASSERT_TRUE(receiver_.wait_for_requests("/flaky", 5, 20s));
  const auto fired = json::parse(receiver_.requests("/flaky").back().body);
  EXPECT_EQ(fired["eventName"], "Modify");
  EXPECT_EQ(fired["path"], "/Root/Content");
}

}  // namespace

namespace {

// The README demo script runs end to end and shows deliveries and a retry.
TEST(demo, run_demo_shows_deliveries_and_a_retry_and_cleans_up) {
  const std::string cmd =
      std::string("bash ") + HOOKLINE_SOURCE_DIR + "/scripts/run-demo.sh '" + bin_dir() + "' 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  while (auto n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int status = pclose(p);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << out;
  EXPECT_NE(out.find("invalidFields"), std::string::npos) << out;
  EXPECT_NE(out.find("subscription archive ->"), std::string::npos) << out;
  EXPECT_NE(out.find("subscription search ->"), std::string::npos) << out;
  EXPECT_NE(out.find("HTTP 503"), std::string::npos) << out;
  EXPECT_NE(out.find("s later"), std::string::npos) << "a retry is shown: " << out;
  EXPECT_NE(out.find(", 0 pending, 0 dead"), std::string::npos) << out;
  EXPECT_EQ(out.find("HTTP 401"), std::string::npos) << "signatures verify: " << out;
}

}  // namespace
