// Runs the example receiver binary and checks what it answers and prints.
#include <httplib.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <hookline/hookline.hpp>

#include "support/process.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using hookline::test::background_process;
using hookline::test::bin_dir;
using namespace std::chrono_literals;

const std::string secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

class receiver : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hookline-receiver-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    proc_.reset();
    fs::remove_all(dir_);
  }

  void start(std::vector<std::string> extra) {
    std::vector<std::string> args = {bin_dir() + "/receiver", "--port", "0", "--port-file",
                                     dir_ + "/port"};
    args.insert(args.end(), extra.begin(), extra.end());
    proc_ = std::make_unique<background_process>(args, dir_ + "/stdout", dir_ + "/stderr");
    port_ = hookline::test::wait_for_port_file(dir_ + "/port", 5s);
    ASSERT_GT(port_, 0) << proc_->err();
    client_ = std::make_unique<httplib::Client>("127.0.0.1", port_);
  }

  // A request signed the way hookline signs it.
  httplib::Result post(
      const std::string& id, const std::string& body,
      std::chrono::system_clock::time_point when = std::chrono::system_clock::now(),
      const std::string& signing_secret = secret) {
    const auto ts =
        std::chrono::duration_cast<std::chrono::seconds>(when.time_since_epoch()).count();
    httplib::Headers h = {{"webhook-id", id},
                          {"webhook-timestamp", std::to_string(ts)},
                          {"webhook-signature", hookline::sign(signing_secret, id, ts, body)}};
    return client_->Post("/hooks", h, body, "application/json");
  }

  static std::string event_body(const std::string& name, const std::string& path) {
    return json({{"eventName", name}, {"path", path}, {"nodeId", 1}}).dump();
  }

  std::string dir_;
  std::unique_ptr<background_process> proc_;
  int port_ = 0;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(receiver, accepts_a_good_signature_and_prints_one_line_per_event) {
  start({"--secret", secret});
  auto r = post("msg_1", event_body("Create", "/Root/Content/a.txt"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  ASSERT_EQ(proc_->stop(), 0);
  const auto out = proc_->out();
  EXPECT_NE(out.find("listening on http://127.0.0.1:" + std::to_string(port_)), std::string::npos);
  EXPECT_NE(out.find(" msg_1 Create /Root/Content/a.txt\n"), std::string::npos) << out;
}

TEST_F(receiver, rejects_bad_stale_and_missing_signatures_with_401_and_a_reason) {
  start({"--secret", secret});
  const auto body = event_body("Create", "/Root/Content/a.txt");

  auto r = post("msg_2", body, std::chrono::system_clock::now(),
                "whsec_" + std::string("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_FALSE(json::parse(r->body)["error"].get<std::string>().empty());

  r = post("msg_3", body, std::chrono::system_clock::now() - 1h);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_FALSE(json::parse(r->body)["error"].get<std::string>().empty());

  r = client_->Post("/hooks", body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_NE(r->body.find("missing webhook-id"), std::string::npos) << r->body;

  auto events = client_->Get("/_receiver/events");
  ASSERT_TRUE(events);
  const auto j = json::parse(events->body);
  EXPECT_EQ(j["rejected"], 3);
  EXPECT_TRUE(j["accepted"].empty());
  proc_->stop();
  EXPECT_NE(proc_->out().find("rejected 401"), std::string::npos);
}

TEST_F(receiver, answers_a_duplicate_webhook_id_with_200_and_reports_it) {
  start({"--secret", secret});
  const auto body = event_body("Modify", "/Root/Content/b.txt");
  auto first = post("msg_dup", body);
  auto second = post("msg_dup", body);
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->status, 200);
  EXPECT_EQ(second->status, 200);
  EXPECT_EQ(json::parse(second->body)["duplicate"], true);
  auto events = client_->Get("/_receiver/events");
  const auto j = json::parse(events->body);
  EXPECT_EQ(j["accepted"].size(), 1u);
  EXPECT_EQ(j["duplicates"], 1);
  proc_->stop();
  EXPECT_NE(proc_->out().find("msg_dup Modify /Root/Content/b.txt duplicate"), std::string::npos)
      << proc_->out();
}

TEST_F(receiver, fail_first_answers_the_first_requests_with_the_chosen_status) {
  start({"--fail-first", "2", "--status", "500"});
  const auto body = event_body("Create", "/Root/x");
  std::vector<int> statuses;
  for (int i = 0; i < 3; ++i) {
    auto r = client_->Post("/hooks", {{"webhook-id", "msg_same"}}, body, "application/json");
    ASSERT_TRUE(r);
    statuses.push_back(r->status);
  }
  EXPECT_EQ(statuses, (std::vector<int>{500, 500, 200}));
  const auto j = json::parse(client_->Get("/_receiver/events")->body);
  EXPECT_EQ(j["failed"], 2);
  EXPECT_EQ(j["accepted"].size(), 1u);
}

TEST_F(receiver, fail_rate_one_and_delay_simulate_a_slow_failing_endpoint) {
  start({"--fail-rate", "1", "--status", "429", "--delay", "200", "--quiet"});
  const auto started = std::chrono::steady_clock::now();
  auto r = client_->Post("/hooks", event_body("Create", "/Root/x"), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429);
  EXPECT_GE(std::chrono::steady_clock::now() - started, 200ms);
  proc_->stop();
  EXPECT_EQ(proc_->out().find("/Root/x"), std::string::npos) << "--quiet prints no events";
}

TEST_F(receiver, bad_arguments_exit_2) {
  background_process p({bin_dir() + "/receiver", "--port", "0", "--fail-rate", "2"},
                       dir_ + "/stdout", dir_ + "/stderr");
  EXPECT_EQ(p.wait(), 2);
  EXPECT_NE(p.err().find("--fail-rate"), std::string::npos);
  background_process q({bin_dir() + "/receiver", "--port", "0", "--secret", "not-a-secret"},
                       dir_ + "/stdout", dir_ + "/stderr");
  EXPECT_EQ(q.wait(), 2);
  EXPECT_NE(q.err().find("--secret"), std::string::npos);
}

}  // namespace
