// The store's share of one delivered message: enqueue (leased at publish, as a dispatching hub
// does) and record its successful attempt, in batches of 64. The memory store is the baseline
// in the same run; `sqlite:...?synchronous=normal` keeps the disk's fsync out of the figure so
// that what is left is the CPU cost of the SQL work. Under `valgrind --tool=callgrind` the
// instruction counts repeat exactly, whatever else the machine is doing.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "hookline/store.hpp"

namespace {

constexpr std::size_t kBatch = 64;

std::string temp_path() {
  return "/tmp/hookline-store-bench-" + std::to_string(::getpid()) + ".db";
}

void remove_db(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm", ".lock"}) std::remove((path + suffix).c_str());
}

std::vector<hookline::message> batch(std::size_t first, hookline::time_point now) {
  std::vector<hookline::message> out(kBatch);
  for (std::size_t i = 0; i < kBatch; ++i) {
    auto& m = out[i];
    // Time-ordered like the hub's ULIDs, so the unique index grows at its end.
    char id[32];
    std::snprintf(id, sizeof id, "msg_%012zu", first + i);
    m.id = id;
    m.subscription_id = "sub-" + std::to_string((first + i) % 4);
    m.event_id = "evt_" + std::to_string(first + i);
    m.event_name = "Modify";
    m.url = "https://hooks.example.com/incoming/docs";
    m.http_method = "POST";
    m.body = std::string(340, 'b');
    m.created_at = m.next_attempt_at = m.updated_at = now;
  }
  return out;
}

void lifecycle(benchmark::State& state, const std::string& uri) {
  std::shared_ptr<hookline::delivery_store> store = hookline::make_store(uri);
  std::size_t next = 0;
  std::vector<hookline::attempt_result> results;
  for (auto _ : state) {
    const auto now = std::chrono::system_clock::now();
    auto msgs = batch(next, now);
    next += kBatch;
    hookline::enqueue_lease lease{"bench-worker", now + std::chrono::minutes(1), kBatch};
    store->enqueue_claimed(msgs, lease);
    for (const auto& m : msgs) {
      hookline::attempt_result r;
      r.message_id = m.id;
      auto& a = r.attempt;
      a.message_id = m.id;
      a.subscription_id = m.subscription_id;
      a.event_id = m.event_id;
      a.event_name = m.event_name;
      a.url = m.url;
      a.http_method = m.http_method;
      a.attempt = 1;
      a.started_at = now;
      a.duration = std::chrono::microseconds(180);
      a.status_code = 204;
      a.request_length = m.body.size();
      a.response_head = "HTTP/1.1 204 No Content\r\nServer: nginx\r\n";
      a.success = true;
      results.push_back(std::move(r));
    }
    store->record_results(results);
    results.clear();  // record_results() may move from it, and need not empty it
  }
  // The results are written behind the last enqueue: a read waits for them.
  const auto c = store->counts(std::chrono::system_clock::now());
  if (c.delivered != next) state.SkipWithError("not every message was recorded as delivered");
  state.SetItemsProcessed(static_cast<std::int64_t>(next));
}

void memory_lifecycle(benchmark::State& state) {
  lifecycle(state, "memory:");
}

void sqlite_lifecycle(benchmark::State& state) {
  const auto path = temp_path();
  remove_db(path);
  lifecycle(state, "sqlite:" + path + "?synchronous=normal");
  remove_db(path);
}

}  // namespace

// HOOKLINE_BENCH_ITERATIONS=N runs each benchmark exactly N times (for callgrind, whose counts
// then compare run to run).
int main(int argc, char** argv) {
  const char* fixed = std::getenv("HOOKLINE_BENCH_ITERATIONS");
  for (auto [name, fn] : {std::pair{"memory_lifecycle", &memory_lifecycle},
                          std::pair{"sqlite_lifecycle", &sqlite_lifecycle}}) {
    auto* b = benchmark::RegisterBenchmark(name, fn)->UseRealTime();
    if (fixed != nullptr) b->Iterations(std::strtoll(fixed, nullptr, 10));
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
