// Runs the real `hookline` binary against the loopback test server and checks its output and
// exit codes (docs/cli.md).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "store_test_util.hpp"
#include "support/process.hpp"
#include "support/test_server.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using hookline::test::bin_dir;
using hookline::test::response;
using hookline::test::run;
using hookline::test::run_result;
using hookline::test::test_server;
using namespace std::chrono_literals;

const char* const reference_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

std::string hookline_bin() {
  return bin_dir() + "/hookline";
}

// One JSON object per line of `out` (the --json listings).
std::vector<json> json_lines(const std::string& out) {
  std::vector<json> all;
  std::istringstream lines(out);
  for (std::string l; std::getline(lines, l);) all.push_back(json::parse(l));
  return all;
}

run_result hookline(std::vector<std::string> args, const std::string& input = "") {
  args.insert(args.begin(), hookline_bin());
  return run(std::move(args), input);
}

class cli : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hookline-cli-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string file(const std::string& name, const std::string& content) {
    const auto p = (fs::path(dir_) / name).string();
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  // One subscription to `path` on the test server for File events under /Root/Content.
  json sub(const std::string& id, const std::string& url_path) {
    return {
        {"id", id},
        {"url", server_.url(url_path)},
        {"secret", reference_secret},
        {"filter",
         {{"path", "/Root/Content"}, {"contentTypes", {{{"name", "File"}, {"events", {"All"}}}}}}}};
  }
  static std::string event_line(const std::string& name, const std::string& p) {
    return json({{"eventName", name}, {"path", p}, {"contentType", "File"}, {"nodeId", 7}}).dump() +
           "\n";
  }

  std::string dir_;
  test_server server_;
};

TEST(cli_help, every_subcommand_has_help_with_examples) {
  for (std::vector<std::string> sub : {std::vector<std::string>{"dispatch"},
                                       {"publish"},
                                       {"worker"},
                                       {"deliveries"},
                                       {"attempts"},
                                       {"stats"},
                                       {"redeliver"},
                                       {"recover"},
                                       {"enable"},
                                       {"subscriptions", "validate"},
                                       {"subscriptions", "import"},
                                       {"subscriptions", "list"},
                                       {"subscriptions", "remove"},
                                       {"sign"},
                                       {"verify"},
                                       {"fire"}}) {
    sub.push_back("--help");
    auto r = hookline(sub);
    EXPECT_EQ(r.code, 0) << sub[0];
    EXPECT_NE(r.out.find("Examples:"), std::string::npos) << sub[0] << r.out;
  }
}

// Each command's help gives its own defaults and exit codes: worker --drain has no default
// timeout, and publish cannot time out.
TEST(cli_help, drain_timeout_and_exit_codes_are_each_commands_own) {
  auto r = hookline({"worker", "--help"});
  EXPECT_NE(r.out.find("as long as it takes"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("(default 60)"), std::string::npos) << r.out;
  r = hookline({"dispatch", "--help"});
  EXPECT_NE(r.out.find("(default 60)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" 3 the drain timeout"), std::string::npos) << r.out;
  r = hookline({"publish", "--help"});
  EXPECT_NE(r.out.find("Exit codes: 0 ok"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("drain timeout"), std::string::npos) << r.out;
}

TEST_F(cli, dispatch_delivers_every_event_and_ends_with_the_summary_line) {
  const auto subs = file("subs.json", json::array({sub("a", "/a"), sub("b", "/b")}).dump());
  const auto events = file("events.jsonl", event_line("Create", "/Root/Content/x.txt") +
                                               event_line("Modify", "/Root/Content/x.txt") +
                                               event_line("Create", "/Root/Other/y.txt"));
  auto r = hookline({"dispatch", "--subscriptions", subs, "--allow-private", events});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto s = r.summary();
  EXPECT_EQ(s, json::parse(R"({"published":3,"messages":4,"delivered":4,"dead":0,"pending":0,
                               "errors":0})"));
  EXPECT_EQ(server_.request_count("/a"), 2u);
  EXPECT_EQ(server_.request_count("/b"), 2u);
  for (const auto& req : server_.requests()) {
    EXPECT_TRUE(req.has_header("webhook-id"));
    EXPECT_EQ(req.header("webhook-signature").value_or("").rfind("v1,", 0), 0u);
  }
}

TEST_F(cli, dispatch_reads_stdin_and_reports_bad_lines_by_number_but_sends_the_rest) {
  const auto subs = file("subs.json", json::array({sub("a", "/a")}).dump());
  const std::string input = event_line("Create", "/Root/Content/1.txt") + "this is not json\n" +
                            event_line("Create", "/Root/Content/3.txt") +
                            R"({"eventName":"Explode","path":"/Root/Content/4.txt"})" + "\n" +
                            "\n" + event_line("Modify", "/Root/Content/6.txt");
  auto r = hookline({"dispatch", "--subscriptions", subs, "--allow-private", "-"}, input);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("<stdin>:2: not valid JSON"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("<stdin>:4: invalid event: eventName"), std::string::npos) << r.err;
  const auto s = r.summary();
  EXPECT_EQ(s["published"], 3);
  EXPECT_EQ(s["delivered"], 3);
  EXPECT_EQ(s["errors"], 2);
  EXPECT_EQ(server_.request_count("/a"), 3u);
}

TEST_F(cli, dispatch_skips_an_invalid_subscription_naming_its_fields) {
  json bad = {{"id", "broken"},
              {"url", "ftp://example.com/in"},
              {"filter",
               {{"path", "/Root"}, {"contentTypes", {{{"name", "File"}, {"events", {"Crate"}}}}}}}};
  const auto subs =
      file("subs.json", "[\n" + sub("good", "/good").dump() + ",\n" + bad.dump() + "\n]");
  const auto events = file("e.jsonl", event_line("Create", "/Root/Content/x.txt"));
  auto r = hookline({"dispatch", "--subscriptions", subs, "--allow-private", events});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("subs.json:3: subscription \"broken\""), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("url:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("filter.contentTypes[0].events[0]:"), std::string::npos) << r.err;
  EXPECT_EQ(r.summary()["delivered"], 1);
  EXPECT_EQ(server_.request_count("/good"), 1u);
}

TEST_F(cli, dispatch_retries_500_then_succeeds_with_the_same_webhook_id) {
  server_.script("/flaky", {response::of(500), response::of(500)});
  const auto subs = file("subs.json", json::array({sub("f", "/flaky")}).dump());
  const auto events = file("e.jsonl", event_line("Create", "/Root/Content/x.txt"));
  auto r = hookline({"dispatch", "--subscriptions", subs, "--allow-private", "--retry-schedule",
                     "0.2,0.2,0.2", events});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.summary()["delivered"], 1);
  const auto reqs = server_.requests("/flaky");
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[0].header("webhook-id"), reqs[2].header("webhook-id"));
  EXPECT_GE(reqs[1].arrived - reqs[0].arrived, 150ms);
}

TEST_F(cli, dispatch_gives_up_at_once_on_410_and_400_and_logs_each_dead_message) {
  server_.respond_always("/gone", response::of(410));
  server_.respond_always("/bad", response::of(400, "no thanks"));
  const auto subs =
      file("subs.json", json::array({sub("gone", "/gone"), sub("bad", "/bad")}).dump());
  const auto events = file("e.jsonl", event_line("Create", "/Root/Content/x.txt"));
  auto r = hookline({"dispatch", "--subscriptions", subs, "--allow-private", "--retry-schedule",
                     "0.1,0.1", events});
  EXPECT_EQ(r.code, 0) << r.err;
  const auto s = r.summary();
  EXPECT_EQ(s["dead"], 2);
  EXPECT_EQ(s["delivered"], 0);
  EXPECT_EQ(server_.request_count("/gone"), 1u);
  EXPECT_EQ(server_.request_count("/bad"), 1u);
  EXPECT_NE(r.err.find("dead: message"), std::string::npos);
  EXPECT_NE(r.err.find("subscription \"gone\""), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("410"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("subscription \"bad\""), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("400"), std::string::npos) << r.err;
  // Each said once: the tool's own line, not the library's warning as well.
  const auto count = [&](std::string_view needle) {
    std::size_t n = 0;
    for (auto at = r.err.find(needle); at != std::string::npos; at = r.err.find(needle, at + 1))
      ++n;
    return n;
  };
  EXPECT_EQ(count("dead: message"), 2u) << r.err;
  EXPECT_EQ(count(" is dead"), 0u) << r.err;
  EXPECT_EQ(count("disabled"), 1u) << r.err;
}

// A 410 disables the subscription in the store for every later run, until `enable` clears it.
TEST_F(cli, a_subscription_disabled_by_410_stays_disabled_until_enable) {
  server_.respond("/gone", response::of(410));  // then the default, 200
  const auto subs = file("subs.json", json::array({sub("gone", "/gone")}).dump());
  const std::string store = "sqlite:" + path("outbox.db");
  const auto one = file("one.jsonl", event_line("Create", "/Root/Content/x.txt"));
  const auto two = file("two.jsonl", event_line("Create", "/Root/Content/x.txt") +
                                         event_line("Create", "/Root/Content/y.txt"));
  const auto run = [&](const std::string& events) {
    return hookline(
        {"dispatch", "--subscriptions", subs, "--store", store, "--allow-private", events});
  };
  auto r = run(one);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.summary()["dead"], 1);
  EXPECT_EQ(server_.request_count("/gone"), 1u);

  r = run(two);  // the receiver is back, but the store says disabled
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.summary()["messages"], 0);
  EXPECT_NE(r.err.find("stays disabled"), std::string::npos) << r.err;
  EXPECT_EQ(server_.request_count("/gone"), 1u);

  r = hookline({"enable", "--store", store, "--subscription", "gone"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("enabled (it was disabled: the endpoint answered 410 Gone)"),
            std::string::npos)
      << r.out;
  r = hookline({"enable", "--store", store, "--subscription", "gone"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("is not disabled"), std::string::npos) << r.out;

  r = run(two);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.summary()["delivered"], 2);
  EXPECT_EQ(server_.request_count("/gone"), 3u);
}

// Without --allow-private the guard refuses the loopback receiver: the message is dead, the
// reason names the address and the flag, once, and nothing reached the receiver.
TEST_F(cli, dispatch_refuses_a_loopback_receiver_unless_allowed) {
  const auto subs = file("subs.json", json::array({sub("local", "/in")}).dump());
  const auto events = file("e.jsonl", event_line("Create", "/Root/Content/x.txt"));
  auto r = hookline({"dispatch", "--subscriptions", subs, events});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.summary()["dead"], 1);
  EXPECT_NE(r.err.find("address 127.0.0.1 refused: loopback (--allow-private permits it)"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("refused"), r.err.rfind("refused")) << r.err;
  EXPECT_EQ(server_.connections_accepted(), 0u);
}

// "none" is a single attempt, and the reason counts it in the singular.
TEST_F(cli, dispatch_with_no_retries_gives_up_after_one_attempt) {
  server_.respond_always("/down", response::of(503));
  const auto subs = file("subs.json", json::array({sub("down", "/down")}).dump());
  const auto events = file("e.jsonl", event_line("Create", "/Root/Content/x.txt"));
  auto r = hookline(
      {"dispatch", "--subscriptions", subs, "--allow-private", "--retry-schedule", "none", events});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.summary()["dead"], 1);
  EXPECT_EQ(server_.request_count("/down"), 1u);
  EXPECT_NE(r.err.find("gave up after 1 attempt: HTTP 503"), std::string::npos) << r.err;
}

TEST_F(cli, dispatch_exits_3_when_the_drain_timeout_leaves_messages_pending) {
  server_.respond_always("/down", response::of(503));
  const auto subs = file("subs.json", json::array({sub("down", "/down")}).dump());
  const auto events = file("e.jsonl", event_line("Create", "/Root/Content/x.txt"));
  const auto started = std::chrono::steady_clock::now();
  auto r = hookline({"dispatch", "--subscriptions", subs, "--allow-private", "--retry-schedule",
                     "30", "--drain-timeout", "0.5", events});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_EQ(r.summary()["pending"], 1);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 20s);
}

// A request under way when the drain timeout passes gets a moment to finish as the hub stops;
// if that settles the last message, nothing is pending and the run did not time out.
TEST_F(cli, dispatch_exits_0_when_the_request_under_way_at_the_drain_timeout_settles) {
  server_.respond_always("/slow", response::slow(600ms, 204));
  const auto subs = file("subs.json", json::array({sub("slow", "/slow")}).dump());
  const auto events = file("e.jsonl", event_line("Create", "/Root/Content/x.txt"));
  auto r = hookline({"dispatch", "--subscriptions", subs, "--allow-private", "--timeout", "10",
                     "--drain-timeout", "0.5", events});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.summary()["delivered"], 1);
  EXPECT_EQ(r.summary()["pending"], 0);
}

TEST_F(cli, bad_arguments_exit_2_and_name_the_problem) {
  const auto subs = file("subs.json", json::array({sub("a", "/a")}).dump());
  const auto events = file("e.jsonl", event_line("Create", "/Root/Content/x.txt"));

  auto r = hookline({"dispatch", events});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--subscriptions"), std::string::npos) << r.err;

  r = hookline({"dispatch", "--subscriptions", path("missing.json"), events});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("missing.json"), std::string::npos) << r.err;

  const auto broken = file("broken.json", "[\n  {\"id\": \"a\",\n   \"url\": nope}\n]");
  r = hookline({"dispatch", "--subscriptions", broken, events});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("broken.json:3:"), std::string::npos) << r.err;

  r = hookline({"dispatch", "--subscriptions", subs, "--retry-schedule", "1,soon", events});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("soon"), std::string::npos) << r.err;

  // An empty schedule is a mistake, not "one attempt" (that is "none").
  r = hookline({"dispatch", "--subscriptions", subs, "--retry-schedule", "", events});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--retry-schedule: empty"), std::string::npos) << r.err;

  // 0 and a negative timeout get the same message.
  for (const char* t : {"0", "-1"}) {
    r = hookline({"dispatch", "--subscriptions", subs, "--timeout", t, events});
    EXPECT_EQ(r.code, 2) << t;
    EXPECT_NE(r.err.find("--timeout: must be a positive number of seconds"), std::string::npos)
        << t << ": " << r.err;
  }

  r = hookline({"dispatch", "--subscriptions", subs, "--store", "nosuch:thing", events});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("nosuch:thing"), std::string::npos) << r.err;

  r = hookline({"dispatch", "--subscriptions", subs, path("no-events.jsonl")});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("no-events.jsonl"), std::string::npos) << r.err;

  r = hookline({"frobnicate"});
  EXPECT_EQ(r.code, 2);
}

// A draining worker with nothing due for a while says what it waits for, and when.
TEST_F(cli, a_waiting_worker_says_when_its_next_message_is_due) {
  server_.respond_always("/down", response::of(503));
  const auto subs = file("subs.json", json::array({sub("down", "/down")}).dump());
  const auto events = file("e.jsonl", event_line("Create", "/Root/Content/x.txt"));
  const std::string store = "sqlite:" + path("outbox.db");
  ASSERT_EQ(hookline({"publish", "--subscriptions", subs, "--store", store, events}).code, 0);
  auto r = hookline({"worker", "--subscriptions", subs, "--store", store, "--allow-private",
                     "--retry-schedule", "120", "--drain", "--drain-timeout", "6.5"});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_EQ(r.summary()["pending"], 1);
  EXPECT_EQ(server_.request_count("/down"), 1u);
  EXPECT_NE(r.err.find("hookline worker: 1 message pending, none due before 20"), std::string::npos)
      << r.err;
}

TEST_F(cli, publish_then_worker_on_sqlite_and_a_rerun_resumes) {
  const auto subs = file("subs.json", json::array({sub("a", "/a")}).dump());
  std::string lines;
  for (int i = 0; i < 5; ++i) lines += event_line("Create", "/Root/Content/f" + std::to_string(i));
  const auto events = file("e.jsonl", lines);
  const std::string store = "sqlite:" + path("outbox.db");

  auto r = hookline({"publish", "--subscriptions", subs, "--store", store, events});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.summary(), json::parse(R"({"published":5,"messages":5,"delivered":0,"dead":0,
                                         "pending":5,"errors":0})"));
  EXPECT_EQ(server_.request_count(), 0u);

  // First worker: the endpoint fails, the retry is a second away, the drain timeout is shorter.
  server_.respond_always("/a", response::of(503));
  r = hookline({"worker", "--subscriptions", subs, "--store", store, "--allow-private",
                "--retry-schedule", "1,1,1", "--drain", "--drain-timeout", "0.5"});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_EQ(r.summary()["pending"], 5);
  EXPECT_EQ(r.summary()["published"], 0);
  EXPECT_GE(server_.request_count("/a"), 1u);

  // The endpoint recovers; a new worker on the same file finishes the job.
  server_.reset();
  r = hookline({"worker", "--subscriptions", subs, "--store", store, "--allow-private",
                "--retry-schedule", "1,1,1", "--drain", "--drain-timeout", "30"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.summary()["delivered"], 5);
  EXPECT_EQ(r.summary()["pending"], 0);
  std::set<std::string> ids;
  for (const auto& req : server_.requests("/a")) {
    ids.insert(req.header("webhook-id").value_or(""));
  }
  EXPECT_EQ(ids.size(), 5u);
}

TEST_F(cli, worker_without_drain_stops_cleanly_on_sigterm) {
  const auto subs = file("subs.json", json::array({sub("a", "/a")}).dump());
  const std::string store = "sqlite:" + path("outbox.db");
  ASSERT_EQ(hookline({"publish", "--subscriptions", subs, "--store", store, "-"},
                     event_line("Create", "/Root/Content/x"))
                .code,
            0);
  run_result r;
  std::atomic<pid_t> pid{0};
  std::thread t([&] {
    r = run(
        {hookline_bin(), "worker", "--subscriptions", subs, "--store", store, "--allow-private"},
        "", 60s, [&](pid_t p) { pid = p; });
  });
  const bool delivered = server_.wait_for_requests("/a", 1, 20s);
  // The worker keeps running after the queue is empty; SIGTERM ends it.
  std::this_thread::sleep_for(300ms);
  kill(pid.load(), SIGTERM);
  t.join();
  ASSERT_TRUE(delivered);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.summary()["delivered"], 1);
  EXPECT_NE(r.err.find("SIGTERM"), std::string::npos) << r.err;
}

TEST_F(cli, deliveries_redeliver_and_recover_work_on_a_store) {
  server_.respond_always("/bad", response::of(400));
  const auto subs = file("subs.json", json::array({sub("s", "/bad")}).dump());
  const std::string store = "sqlite:" + path("outbox.db");
  const auto events = file(
      "e.jsonl", event_line("Create", "/Root/Content/1") + event_line("Create", "/Root/Content/2"));
  auto r =
      hookline({"dispatch", "--subscriptions", subs, "--store", store, "--allow-private", events});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(r.summary()["dead"], 2);

  r = hookline({"deliveries", "--store", store, "--status", "dead", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto dead = json_lines(r.out);
  ASSERT_EQ(dead.size(), 2u);
  EXPECT_EQ(dead[0]["status"], "dead");
  EXPECT_EQ(dead[0]["subscriptionId"], "s");
  EXPECT_EQ(dead[0]["lastStatus"], 400);

  r = hookline({"deliveries", "--store", store});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("MESSAGE"), std::string::npos);
  EXPECT_NE(r.out.find(dead[0]["id"].get<std::string>()), std::string::npos);

  // The limit says when it cut the list short; 0 and memory: are refused with a reason.
  r = hookline({"deliveries", "--store", store, "--json", "--limit", "1"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 1u);
  EXPECT_NE(r.err.find("stopped at the limit of 1 message;"), std::string::npos) << r.err;
  r = hookline({"deliveries", "--store", store, "--json", "--limit", "2"});
  EXPECT_EQ(r.err.find("limit"), std::string::npos) << r.err;
  r = hookline({"deliveries", "--store", store, "--limit", "0"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--limit"), std::string::npos) << r.err;
  r = hookline({"deliveries", "--store", "memory:"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("only inside the process"), std::string::npos) << r.err;
  EXPECT_EQ(hookline({"deliveries", "--store", store, "--status", "lost"}).code, 2);
  EXPECT_EQ(hookline({"deliveries", "--store", "sqlite:" + path("nothing.db")}).code, 2);
  EXPECT_FALSE(fs::exists(path("nothing.db")));

  r = hookline({"redeliver", "--store", store, dead[0]["id"]});
  EXPECT_EQ(r.code, 0) << r.err;
  r = hookline({"deliveries", "--store", store, "--status", "pending", "--json"});
  EXPECT_NE(r.out.find(dead[0]["id"].get<std::string>()), std::string::npos) << r.out;

  r = hookline({"redeliver", "--store", store, "msg_unknown"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("msg_unknown"), std::string::npos);

  EXPECT_EQ(
      hookline({"recover", "--store", store, "--subscription", "s", "--since", "yesterday"}).code,
      2);
  r = hookline(
      {"recover", "--store", store, "--subscription", "s", "--since", "2000-01-01T00:00:00Z"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("recovered 1 dead message"), std::string::npos) << r.out;

  // A worker now delivers both again, with their original webhook-ids.
  server_.reset();
  r = hookline({"worker", "--subscriptions", subs, "--store", store, "--allow-private", "--drain"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.summary()["delivered"], 2);
  std::set<std::string> ids;
  for (const auto& req : server_.requests("/bad"))
    ids.insert(req.header("webhook-id").value_or(""));
  EXPECT_TRUE(ids.count(dead[0]["id"].get<std::string>()));
  EXPECT_TRUE(ids.count(dead[1]["id"].get<std::string>()));
}

// The attempt log and the statistics of a store, for an operator asking why a message failed.
TEST_F(cli, attempts_and_stats_show_each_attempt_and_the_counts_of_a_store) {
  server_.script("/flaky", {response::of(500, "try later"), response::of(503)});
  server_.respond_always("/bad", response::of(400, "no such folder"));
  const auto subs = file("subs.json", json::array({sub("f", "/flaky"), sub("b", "/bad")}).dump());
  const std::string store = "sqlite:" + path("outbox.db");
  const auto events = file("e.jsonl", event_line("Create", "/Root/Content/x.txt"));
  auto r = hookline({"dispatch", "--subscriptions", subs, "--store", store, "--allow-private",
                     "--retry-schedule", "0.1,0.1,0.1", events});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(r.summary()["delivered"], 1);
  ASSERT_EQ(r.summary()["dead"], 1);

  r = hookline({"attempts", "--store", store, "--subscription", "f", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto log = json_lines(r.out);
  ASSERT_EQ(log.size(), 3u) << r.out;
  // Oldest first: 500 with its response body kept, then 503, then 200.
  EXPECT_EQ(log[0]["statusCode"], 500);
  EXPECT_EQ(log[0]["success"], false);
  EXPECT_EQ(log[0]["responseHead"], "try later");
  EXPECT_EQ(log[0]["url"], server_.url("/flaky"));
  EXPECT_EQ(log[1]["statusCode"], 503);
  EXPECT_EQ(log[2]["statusCode"], 200);
  EXPECT_EQ(log[2]["success"], true);
  EXPECT_EQ(log[2]["attempt"], 3);
  EXPECT_EQ(log[2]["messageId"], log[0]["messageId"]);
  EXPECT_EQ(r.err.find("limit"), std::string::npos) << r.err;
  // A limit keeps the most recent, still oldest first, and says that it cut the list.
  r = hookline({"attempts", "--store", store, "--subscription", "f", "--json", "--limit", "2"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto recent = json_lines(r.out);
  ASSERT_EQ(recent.size(), 2u) << r.out;
  EXPECT_EQ(recent[0]["statusCode"], 503);
  EXPECT_EQ(recent[1]["statusCode"], 200);
  EXPECT_NE(r.err.find("the most recent 2 only"), std::string::npos) << r.err;

  const std::string bad_id = [&] {
    for (const auto& j : json_lines(hookline({"attempts", "--store", store, "--json"}).out)) {
      if (j["subscriptionId"] == "b") return j["messageId"].get<std::string>();
    }
    return std::string();
  }();
  ASSERT_FALSE(bad_id.empty());
  r = hookline({"attempts", "--store", store, "--message", bad_id});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("STARTED"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("no such folder"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("400"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("/flaky"), std::string::npos) << r.out;
  // Nothing started in the future; a bad date is refused by name.
  r = hookline({"attempts", "--store", store, "--since", "2099-01-01T00:00:00Z", "--json"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  r = hookline({"attempts", "--store", store, "--since", "soon"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--since"), std::string::npos) << r.err;
  EXPECT_EQ(hookline({"attempts", "--store", "sqlite:" + path("nothing.db")}).code, 2);

  r = hookline({"stats", "--store", store, "--subscription", "f", "--subscription", "b",
                "--subscription", "none", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto st = json_lines(r.out);
  ASSERT_EQ(st.size(), 3u) << r.out;
  EXPECT_EQ(st[0]["subscriptionId"], "f");
  EXPECT_EQ(st[0]["calls"], 3);
  EXPECT_EQ(st[0]["status2xx"], 1);
  EXPECT_EQ(st[0]["status5xx"], 2);
  EXPECT_EQ(st[0]["failures"], 2);
  EXPECT_NEAR(st[0]["successRate"].get<double>(), 1.0 / 3.0, 1e-9);
  EXPECT_EQ(st[1]["calls"], 1);
  EXPECT_EQ(st[1]["status4xx"], 1);
  EXPECT_EQ(st[2]["calls"], 0);
  EXPECT_TRUE(st[2]["successRate"].is_null()) << st[2];
  r = hookline({"stats", "--store", store, "--subscription", "f"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("SUCCESS"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("33.3%"), std::string::npos) << r.out;
  EXPECT_EQ(hookline({"stats", "--store", store}).code, 2) << "--subscription is required";
}

// A receiver's answer is not checked text: bytes that are not UTF-8 and terminal escape
// sequences must neither stop the listing nor reach the operator's terminal.
TEST_F(cli, attempts_show_a_receivers_raw_answer_safely) {
  server_.respond_always("/odd", response::of(400, "caf\xC3 \x1b]0;pwned\x07\x1b[31mred"));
  const auto subs = file("subs.json", json::array({sub("o", "/odd")}).dump());
  const std::string store = "sqlite:" + path("outbox.db");
  const auto events = file("e.jsonl", event_line("Create", "/Root/Content/x.txt"));
  auto r =
      hookline({"dispatch", "--subscriptions", subs, "--store", store, "--allow-private", events});
  ASSERT_EQ(r.code, 0) << r.err;
  r = hookline({"attempts", "--store", store + "?synchronous=full", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = json::parse(r.out);
  EXPECT_EQ(j["statusCode"], 400);
  EXPECT_EQ(j["responseHead"].get<std::string>().rfind("caf\xEF\xBF\xBD", 0), 0u)
      << "the broken byte becomes U+FFFD: " << j["responseHead"];
  r = hookline({"attempts", "--store", store});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.find('\x1b'), std::string::npos) << "an escape sequence reached the terminal";
  EXPECT_EQ(r.out.find('\x07'), std::string::npos);
  EXPECT_NE(r.out.find("pwned"), std::string::npos) << r.out;
  EXPECT_EQ(hookline({"attempts", "--store", store, "--limit", "0"}).code, 2);
}

// Subscriptions kept in PostgreSQL: imported from a file (the invalid entry named and left out),
// listed, used by dispatch through --subscriptions postgres:..., removed.
TEST_F(cli, subscriptions_import_list_remove_and_use_a_postgres_database) {
  hookline::test::pg_schema schema(hookline::test::test_pg_conninfo());
  ASSERT_FALSE(schema.conninfo().empty());
  const std::string db = "postgres:" + schema.conninfo();
  json broken = sub("broken", "/b");
  broken["url"] = "ftp://nowhere";
  const auto subs = file("subs.json", json::array({sub("docs", "/docs"), broken}).dump());
  auto r = hookline({"subscriptions", "import", "--store", db, subs});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.out.find("1 subscription imported"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("\"broken\""), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("url"), std::string::npos) << r.err;

  r = hookline({"subscriptions", "list", "--store", db});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto rows = json_lines(r.out);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0]["id"], "docs");

  const auto events = file("e.jsonl", event_line("Create", "/Root/Content/x.txt"));
  r = hookline({"dispatch", "--subscriptions", db, "--allow-private", events});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.summary()["delivered"], 1);
  EXPECT_EQ(server_.request_count("/docs"), 1u);

  r = hookline({"subscriptions", "remove", "--store", db, "docs"});
  EXPECT_EQ(r.code, 0) << r.err;
  r = hookline({"subscriptions", "remove", "--store", db, "docs"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("no subscription \"docs\""), std::string::npos) << r.err;
  r = hookline({"subscriptions", "list", "--store", "sqlite:" + path("x.db")});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("postgres:CONNINFO"), std::string::npos) << r.err;
}

TEST_F(cli, subscriptions_validate_names_every_broken_field) {
  const auto f = file("subs.json", R"([
  {"id": "ok", "url": "https://hooks.example.com/a"},
  {"id": "two-problems", "url": "gopher://x",
   "filter": {"path": "/Root", "contentTypes": [{"name": "File", "events": ["Crate"]}]}},
  {"id": "hdr", "url": "https://hooks.example.com/b", "headers": {"X-A": "a\nb"},
   "secret": "whsec_short"}
])");
  auto r = hookline({"subscriptions", "validate", f});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("subs.json:3: subscription \"two-problems\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  url:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  filter.contentTypes[0].events[0]:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("subs.json:5: subscription \"hdr\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  headers.X-A:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  secret"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("\"ok\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("3 subscriptions, 1 valid, 2 invalid"), std::string::npos) << r.out;

  const auto good =
      file("good.json", R"({"subscriptions": [{"id": "a", "url": "https://h.example/a"}]})");
  EXPECT_EQ(hookline({"subscriptions", "validate", good}).code, 0);

  const auto not_json = file("nj.json", "[\n{\"id\": \"a\"\n \"url\": 1}]");
  r = hookline({"subscriptions", "validate", not_json});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("nj.json:3:"), std::string::npos) << r.err;
}

TEST_F(cli, subscriptions_validate_accepts_a_sensenet_export_unchanged) {
  const auto f = file("export.json", R"({"d": {"__count": 1, "results": [
  {"Id": 1234, "Name": "docs-hook", "Path": "/Root/System/WebHooks/docs-hook",
   "Type": "WebHookSubscription",
   "WebHookUrl": "https://hooks.example.com/in", "WebHookHttpMethod": "POST",
   "WebHookFilter": "{\"Path\":\"/Root/Content\",\"ContentTypes\":[{\"Name\":\"File\",\"Events\":[\"Create\",\"Checkout\"]}],\"TriggersForAllEvents\":false}",
   "WebHookHeaders": "{\"X-Api-Key\":\"k\"}",
   "WebHookPayload": "{\"user\": @@currentuser@@, \"where\": \"@@content.Path@@\"}",
   "Enabled": true, "IsValid": true, "InvalidFields": null}]}})");
  auto r = hookline({"subscriptions", "validate", f});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("1 subscription, 1 valid, 0 invalid"), std::string::npos) << r.out;
}

TEST_F(cli, dispatch_uses_a_sensenet_export_unchanged) {
  json export_ = {
      {"d",
       {{"results",
         {{{"Id", 77},
           {"Name", "sn"},
           {"WebHookUrl", server_.url("/sn")},
           {"WebHookFilter",
            R"({"Path":"/Root/Content","ContentTypes":[{"Name":"File","Events":["Create"]}]})"},
           {"WebHookHeaders", R"({"X-Api-Key":"k"})"},
           {"Enabled", true}}}}}}};
  const auto subs = file("export.json", export_.dump());
  auto r = hookline({"dispatch", "--subscriptions", subs, "--allow-private", "-"},
                    event_line("Create", "/Root/Content/a.txt"));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto reqs = server_.requests("/sn");
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].header("X-Api-Key"), "k");
  EXPECT_EQ(json::parse(reqs[0].body)["path"], "/Root/Content/a.txt");
}

TEST(cli_signing, sign_reproduces_the_standard_webhooks_reference_vector) {
  auto r = hookline({"sign", "--secret", reference_secret, "--id", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                     "--timestamp", "1614265330"},
                    R"({"test": 2432232314})");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\n");

  EXPECT_EQ(hookline({"sign", "--secret", "whsec_", "--id", "m", "--timestamp", "1"}, "x").code, 2);
  EXPECT_EQ(
      hookline({"sign", "--secret", reference_secret, "--id", "m", "--timestamp", "soon"}, "x")
          .code,
      2);
}

TEST(cli_signing, verify_accepts_good_and_rejects_bad_or_stale_signatures) {
  const std::vector<std::string> vector_args = {
      "verify",      "--secret",  reference_secret, "--id", "msg_p5jXN8AQM9LWM0D4loKWxJek",
      "--timestamp", "1614265330"};
  const std::string body = R"({"test": 2432232314})";
  auto with = [&](std::vector<std::string> extra) {
    auto a = vector_args;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  // The reference vector is from 2021: valid only when the time is not checked.
  auto r = hookline(
      with({"--signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", "--tolerance", "0"}),
      body);
  EXPECT_EQ(r.code, 0) << r.err;
  r = hookline(with({"--signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}), body);
  EXPECT_EQ(r.code, 1);
  EXPECT_FALSE(r.err.empty());
  r = hookline(
      with({"--signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=", "--tolerance", "0"}),
      body);
  EXPECT_EQ(r.code, 1);
  r = hookline(with({"--signature", "v1,", "--tolerance", "0"}), body);
  EXPECT_EQ(r.code, 1);
  r = hookline(
      with({"--signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", "--tolerance", "0"}),
      body + " ");
  EXPECT_EQ(r.code, 1);

  // A fresh signature made by `sign` verifies with the default tolerance.
  const auto now = std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                      std::chrono::system_clock::now().time_since_epoch())
                                      .count());
  auto sig = hookline({"sign", "--secret", reference_secret, "--id", "msg_1", "--timestamp", now},
                      "hello");
  ASSERT_EQ(sig.code, 0);
  sig.out.pop_back();
  r = hookline({"verify", "--secret", reference_secret, "--id", "msg_1", "--timestamp", now,
                "--signature", sig.out},
               "hello");
  EXPECT_EQ(r.code, 0) << r.err;
  r = hookline(
      {"verify", "--secret", "whsec_", "--id", "msg_1", "--timestamp", now, "--signature", sig.out},
      "hello");
  EXPECT_EQ(r.code, 1);
}

TEST_F(cli, fire_sends_one_event_bypassing_the_filter_and_prints_the_outcome) {
  json s = sub("f", "/fire");
  s["filter"]["path"] = "/Root/Elsewhere";
  const auto subs = file("subs.json", json::array({s}).dump());
  auto r =
      hookline({"fire", "--subscriptions", subs, "--subscription", "f", "--allow-private",
                R"({"eventName":"Modify","path":"/Root/Content/a.txt","contentType":"File"})"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto out = r.summary();
  EXPECT_EQ(out["status"], "delivered");
  EXPECT_EQ(out["httpStatus"], 200);
  const auto reqs = server_.requests("/fire");
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(json::parse(reqs[0].body)["eventName"], "Modify");
  EXPECT_EQ(reqs[0].header("webhook-id"), out["messageId"].get<std::string>());

  server_.respond_always("/fire", response::of(500));
  r = hookline({"fire", "--subscriptions", subs, "--subscription", "f", "--allow-private"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_EQ(r.summary()["status"], "dead");

  r = hookline({"fire", "--subscriptions", subs, "--subscription", "nobody"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("nobody"), std::string::npos);
}

}  // namespace
