// Crash safety, end to end with the command line tool: publish 3,000 events into a SQLite outbox,
// SIGKILL a worker mid-flight, let a second worker drain: every message arrives, and duplicates
// are bounded by what was in flight.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "store_test_util.hpp"
#include "support/test_server.hpp"

extern char** environ;

namespace hookline {
namespace {

using namespace std::chrono_literals;

std::string hookline_binary() {
  if (const char* d = std::getenv("HOOKLINE_BIN_DIR"); d && *d) return std::string(d) + "/hookline";
  return std::string(HOOKLINE_BINARY_DIR) + "/bin/hookline";
}

/// Starts `args` with stdout and stderr sent to files; returns the pid (or -1).
pid_t spawn(const std::vector<std::string>& args, const std::string& out, const std::string& err) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

/// Waits for `pid` up to `timeout`; its exit code, or -1 (killed or still running: then killed).
int wait_exit(pid_t pid, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    std::this_thread::sleep_for(20ms);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return -1;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

/// The JSON summary: the last non-empty stdout line.
nlohmann::json summary(const std::string& out_path) {
  std::istringstream in(read_file(out_path));
  std::string line, last;
  while (std::getline(in, line)) {
    if (!line.empty()) last = line;
  }
  return nlohmann::json::parse(last, nullptr, false);
}

TEST(crash, sigkilled_worker_loses_nothing_and_duplicates_only_what_was_in_flight) {
  const std::string bin = hookline_binary();
  ASSERT_TRUE(std::filesystem::exists(bin)) << bin << " is missing: build the hookline_cli target";
  test::temp_dir dir;
  test::test_server server;
  // Slow enough answers that the worker always has requests in flight when it is killed.
  server.set_default(test::response::slow(5ms, 204));

  constexpr int events = 3000;
  constexpr int concurrency = 32;
  const std::string subs = dir.file("subscriptions.json");
  {
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
  }
  const std::string events_file = dir.file("events.jsonl");
  {
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
  }
  const std::string store = "sqlite:" + dir.file("outbox.db");

  // 1. Publish: exits once every message is committed.
  const pid_t publisher =
      spawn({bin, "publish", "--subscriptions", subs, "--store", store, events_file},
            dir.file("publish.out"), dir.file("publish.err"));
  ASSERT_GT(publisher, 0);
  ASSERT_EQ(wait_exit(publisher, 120s), 0) << read_file(dir.file("publish.err"));
  const auto published = summary(dir.file("publish.out"));
  ASSERT_FALSE(published.is_discarded()) << read_file(dir.file("publish.out"));
  ASSERT_EQ(published.value("messages", 0), events) << published.dump();
  EXPECT_EQ(server.request_count(), 0u) << "publish must not deliver";

  // 2. A worker delivers until it is killed mid-flight.
  const std::vector<std::string> worker_args{bin,
                                             "worker",
                                             "--subscriptions",
                                             subs,
                                             "--store",
                                             store,
                                             "--allow-private",
                                             "--concurrency",
                                             std::to_string(concurrency),
                                             "--endpoint-concurrency",
                                             std::to_string(concurrency)};
  const pid_t first = spawn(worker_args, dir.file("worker1.out"), dir.file("worker1.err"));
  ASSERT_GT(first, 0);
  ASSERT_TRUE(server.wait_for_requests(events / 3, 120s))
      << "the first worker delivered only " << server.request_count() << "\n"
      << read_file(dir.file("worker1.err"));
  ASSERT_EQ(::kill(first, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(first, &status, 0), first);
  ASSERT_TRUE(WIFSIGNALED(status));
  const std::size_t before_restart = server.request_count();
  EXPECT_LT(before_restart, static_cast<std::size_t>(events)) << "killed too late to matter";

  // 3. Another worker resumes what the first one left and drains the outbox.
  auto drain_args = worker_args;
  drain_args.insert(drain_args.end(), {"--drain", "--drain-timeout", "120"});
  const pid_t second = spawn(drain_args, dir.file("worker2.out"), dir.file("worker2.err"));
  ASSERT_GT(second, 0);
  ASSERT_EQ(wait_exit(second, 180s), 0) << read_file(dir.file("worker2.err"));
  const auto drained = summary(dir.file("worker2.out"));
  ASSERT_FALSE(drained.is_discarded()) << read_file(dir.file("worker2.out"));
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

}  // namespace
}  // namespace hookline
