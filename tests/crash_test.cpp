// Crash safety and scale-out, end to end with the command line tool: publish 3,000 events into a
// SQLite outbox, SIGKILL a worker mid-flight, let a second worker drain: every message arrives,
// and duplicates are bounded by what was in flight. And two workers draining one PostgreSQL
// outbox at once: each message arrives exactly once.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "store_test_util.hpp"
#include "support/process.hpp"
#include "support/test_server.hpp"

namespace hookline {
namespace {

using namespace std::chrono_literals;

/// The JSON summary: the last non-empty stdout line (discarded when it is not JSON).
nlohmann::json summary(const std::string& out_path) {
  return nlohmann::json::parse(test::last_line(test::slurp(out_path)), nullptr, false);
}

/// One subscription to `server`'s /hook for File Create events.
std::string write_subscriptions(test::temp_dir& dir, test::test_server& server) {
  const std::string subs = dir.file("subscriptions.json");
  nlohmann::json s = nlohmann::json::array();
  s.push_back({{"id", "crash-sub"},
               {"name", "crash"},
               {"url", server.url("/hook")},
               {"httpMethod", "POST"},
               {"enabled", true},
               {"filter",
                {{"path", "/Root/Content"},
                 {"contentTypes", {{{"name", "File"}, {"events", {"Create"}}}}}}}});
  std::ofstream(subs) << s.dump(2);
  return subs;
}

std::string write_events(test::temp_dir& dir, int events) {
  const std::string events_file = dir.file("events.jsonl");
  std::ofstream out(events_file);
  for (int i = 0; i < events; ++i) {
    out << nlohmann::json{{"id", "evt-" + std::to_string(i)},
                          {"eventName", "Create"},
                          {"path", "/Root/Content/f" + std::to_string(i) + ".txt"},
                          {"contentType", "File"},
                          {"nodeId", i + 1},
                          {"name", "f" + std::to_string(i) + ".txt"}}
               .dump()
        << "\n";
  }
  return events_file;
}

/// 3,000 File Create events for one subscription on a receiver that answers after 5 ms (slow
/// enough that the killed process always has requests in flight), and a SQLite outbox.
class crash : public ::testing::Test {
 protected:
  static constexpr int events = 3000;
  static constexpr int concurrency = 32;

  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(bin))
        << bin << " is missing: build the hookline_cli target";
    server.set_default(test::response::slow(5ms, 204));
  }

  const std::string bin = test::bin_dir() + "/hookline";
  test::temp_dir dir;
  test::test_server server;
  const std::string subs = write_subscriptions(dir, server);
  const std::string events_file = write_events(dir, events);
  std::string store = "sqlite:" + dir.file("outbox.db");
  int worker_concurrency = concurrency;

  /// `hookline COMMAND` with the subscriptions, the store and the delivery options, then `tail`.
  std::vector<std::string> delivering(const std::string& command,
                                      std::vector<std::string> tail = {}) const {
    std::vector<std::string> args{bin,
                                  command,
                                  "--subscriptions",
                                  subs,
                                  "--store",
                                  store,
                                  "--allow-private",
                                  "--concurrency",
                                  std::to_string(worker_concurrency),
                                  "--endpoint-concurrency",
                                  std::to_string(worker_concurrency)};
    args.insert(args.end(), tail.begin(), tail.end());
    return args;
  }
};

TEST_F(crash, sigkilled_worker_loses_nothing_and_duplicates_only_what_was_in_flight) {
  // 1. Publish: exits once every message is committed.
  test::background_process publisher(
      {bin, "publish", "--subscriptions", subs, "--store", store, events_file},
      dir.file("publish.out"), dir.file("publish.err"));
  ASSERT_TRUE(publisher.started());
  ASSERT_EQ(publisher.wait_for(120s), 0) << publisher.err();
  const auto published = summary(dir.file("publish.out"));
  ASSERT_FALSE(published.is_discarded()) << publisher.out();
  ASSERT_EQ(published.value("messages", 0), events) << published.dump();
  EXPECT_EQ(server.request_count(), 0u) << "publish must not deliver";

  // 2. A worker delivers until it is killed mid-flight.
  test::background_process first(delivering("worker"), dir.file("worker1.out"),
                                 dir.file("worker1.err"));
  ASSERT_TRUE(first.started());
  ASSERT_TRUE(server.wait_for_requests(events / 3, 120s))
      << "the first worker delivered only " << server.request_count() << "\n"
      << first.err();
  ASSERT_TRUE(first.signal(SIGKILL));
  first.wait();
  ASSERT_TRUE(first.killed_by_signal());
  const std::size_t before_restart = server.request_count();
  EXPECT_LT(before_restart, static_cast<std::size_t>(events)) << "killed too late to matter";

  // 3. Another worker resumes what the first one left and drains the outbox.
  test::background_process second(delivering("worker", {"--drain", "--drain-timeout", "120"}),
                                  dir.file("worker2.out"), dir.file("worker2.err"));
  ASSERT_TRUE(second.started());
  ASSERT_EQ(second.wait_for(180s), 0) << second.err();
  const auto drained = summary(dir.file("worker2.out"));
  ASSERT_FALSE(drained.is_discarded()) << second.out();
  EXPECT_EQ(drained.value("pending", -1), 0) << drained.dump();
  EXPECT_EQ(drained.value("dead", -1), 0) << drained.dump();

  // Every message arrived at least once, under its stable webhook-id.
  std::map<std::string, int> seen;
  for (const auto& r : server.requests("/hook")) {
    auto id = r.header("webhook-id");
    ASSERT_TRUE(id.has_value());
    ++seen[*id];
  }
  EXPECT_EQ(seen.size(), static_cast<std::size_t>(events));
  std::size_t duplicates = 0;
  for (const auto& [id, n] : seen) duplicates += static_cast<std::size_t>(n - 1);
  // Only requests in flight at the kill (at most `concurrency`) and results not yet committed
  // (at most one claim batch) can be sent twice.
  EXPECT_LE(duplicates, static_cast<std::size_t>(concurrency + 64)) << duplicates << " duplicates";
  RecordProperty("duplicates", static_cast<int>(duplicates));
  RecordProperty("delivered_before_kill", static_cast<int>(before_restart));
}

// `hookline dispatch` publishes and delivers in one process: its messages are handed straight to
// its dispatcher, stored leased to it. Killed mid-flight, nothing it committed is lost: a worker
// started on the same file takes over those leases at once (no other process has the file open)
// and delivers the rest.
TEST_F(crash, sigkilled_dispatch_loses_nothing_it_committed) {
  test::background_process first(delivering("dispatch", {events_file}), dir.file("dispatch.out"),
                                 dir.file("dispatch.err"));
  ASSERT_TRUE(first.started());
  ASSERT_TRUE(server.wait_for_requests(events / 3, 120s))
      << "dispatch delivered only " << server.request_count() << "\n"
      << first.err();
  ASSERT_TRUE(first.signal(SIGKILL));
  first.wait();
  ASSERT_TRUE(first.killed_by_signal());
  const std::size_t before_restart = server.request_count();

  test::background_process second(delivering("worker", {"--drain", "--drain-timeout", "120"}),
                                  dir.file("worker.out"), dir.file("worker.err"));
  ASSERT_TRUE(second.started());
  ASSERT_EQ(second.wait_for(180s), 0) << second.err();
  const auto drained = summary(dir.file("worker.out"));
  ASSERT_FALSE(drained.is_discarded()) << second.out();
  EXPECT_EQ(drained.value("pending", -1), 0) << drained.dump();
  EXPECT_EQ(drained.value("dead", -1), 0) << drained.dump();

  // Every committed message is delivered and arrived under its webhook-id; nothing was sent
  // before it was committed.
  auto outbox = make_store(store);
  message_query all;
  all.limit = 0;
  const auto stored = outbox->query(all);
  std::set<std::string> stored_ids;
  std::map<std::string, int> seen;
  for (const auto& r : server.requests("/hook")) ++seen[r.header("webhook-id").value_or("")];
  for (const auto& m : stored) {
    stored_ids.insert(m.id);
    EXPECT_EQ(m.status, message_status::delivered) << m.id;
    EXPECT_GE(seen[m.id], 1) << m.id << " never arrived";
  }
  for (const auto& [id, n] : seen) EXPECT_EQ(stored_ids.count(id), 1u) << id << " was never stored";
  EXPECT_GT(stored.size(), before_restart / 2);
  std::size_t duplicates = 0;
  for (const auto& [id, n] : seen) duplicates += static_cast<std::size_t>(n - 1);
  // Requests handed to the transport at the kill (at most 2 x concurrency) and results not yet
  // committed (at most 512: the SQLite store holds the dispatcher back beyond that) can be sent
  // twice. A sanitizer run, whose committer lags, saw 249.
  EXPECT_LE(duplicates, static_cast<std::size_t>(2 * concurrency + 512))
      << duplicates << " duplicates";
  RecordProperty("duplicates", static_cast<int>(duplicates));
  RecordProperty("committed_before_kill", static_cast<int>(stored.size()));
}

// Scale-out, as issue 4 asks a new user to try it: 3,000 events published into PostgreSQL, two
// workers started at once with --drain. Each message arrives exactly once (no lease runs out in
// so short a run) and both workers deliver some.
TEST_F(crash, two_workers_on_one_postgres_outbox_deliver_each_message_once) {
  const std::string base = test::test_pg_conninfo();
  ASSERT_FALSE(base.empty()) << "HOOKLINE_TEST_PG is not set: scripts/test.sh starts PostgreSQL";
  test::pg_schema schema(base);
  store = "postgres:" + schema.conninfo();
  worker_concurrency = 8;  // about 1,600 messages/s each: the drain takes both workers a while

  test::background_process publisher(
      {bin, "publish", "--subscriptions", subs, "--store", store, events_file},
      dir.file("publish.out"), dir.file("publish.err"));
  ASSERT_TRUE(publisher.started());
  ASSERT_EQ(publisher.wait_for(120s), 0) << publisher.err();
  ASSERT_EQ(summary(dir.file("publish.out")).value("messages", 0), events) << publisher.out();

  const std::vector<std::string> drain{"--drain", "--drain-timeout", "120"};
  test::background_process one(delivering("worker", drain), dir.file("one.out"),
                               dir.file("one.err"));
  test::background_process two(delivering("worker", drain), dir.file("two.out"),
                               dir.file("two.err"));
  ASSERT_TRUE(one.started());
  ASSERT_TRUE(two.started());
  ASSERT_EQ(one.wait_for(180s), 0) << one.err();
  ASSERT_EQ(two.wait_for(180s), 0) << two.err();
  const auto a = summary(dir.file("one.out"));
  const auto b = summary(dir.file("two.out"));
  ASSERT_FALSE(a.is_discarded()) << one.out();
  ASSERT_FALSE(b.is_discarded()) << two.out();
  EXPECT_GT(a.value("delivered", 0), 0) << "the first worker did nothing: " << a.dump();
  EXPECT_GT(b.value("delivered", 0), 0) << "the second worker did nothing: " << b.dump();
  EXPECT_EQ(a.value("delivered", 0) + b.value("delivered", 0), events) << a.dump() << b.dump();
  EXPECT_EQ(a.value("pending", -1), 0) << a.dump();
  EXPECT_EQ(b.value("pending", -1), 0) << b.dump();

  std::map<std::string, int> seen;
  for (const auto& r : server.requests("/hook")) ++seen[r.header("webhook-id").value_or("")];
  EXPECT_EQ(seen.size(), static_cast<std::size_t>(events));
  for (const auto& [id, n] : seen) EXPECT_EQ(n, 1) << id << " arrived " << n << " times";
  RecordProperty("first_worker_delivered", a.value("delivered", 0));
  RecordProperty("second_worker_delivered", b.value("delivered", 0));
}

}  // namespace
}  // namespace hookline
