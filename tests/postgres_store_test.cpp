// PostgreSQL store specifics: several workers on one outbox, lease rule, LISTEN/NOTIFY, a server
// restart mid-run, concurrent migrations, the shared subscription registry.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/sinks/ostream_sink.h>

#include "hookline/error.hpp"
#include "hookline/hookline.hpp"
#include "hookline/store.hpp"
#include "hookline/stores/postgres_subscriptions.hpp"
#include "store_test_util.hpp"
#include "support/fixtures.hpp"
#include "support/test_server.hpp"

namespace hookline {
namespace {

using namespace std::chrono_literals;
using test::make_attempt;
using test::make_message;

claim_request claim_at(time_point now, std::string worker, std::size_t max = 16) {
  claim_request r;
  r.now = now;
  r.max = max;
  r.lease = 30s;
  r.worker_id = std::move(worker);
  return r;
}

class postgres_store : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = test::test_pg_conninfo();
    ASSERT_FALSE(base_.empty());
    schema_ = std::make_unique<test::pg_schema>(base_);
  }
  std::shared_ptr<delivery_store> open(store_options o = {}) {
    return make_store("postgres:" + schema_->conninfo(), o);
  }
  std::string base_;
  std::unique_ptr<test::pg_schema> schema_;
  const time_point t0_ = std::chrono::system_clock::now();
};

/// Claims and completes until `total` distinct messages were seen or the deadline passes.
void drain(delivery_store& store, const std::string& worker, time_point now, std::size_t total,
           std::mutex& mutex, std::map<std::string, std::string>& owner, int& duplicates) {
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < deadline) {
    {
      std::lock_guard lock(mutex);
      if (owner.size() >= total) return;
    }
    auto got = store.claim(claim_at(now, worker));
    for (auto& m : got) {
      {
        std::lock_guard lock(mutex);
        if (!owner.emplace(m.id, worker).second) ++duplicates;
      }
      store.complete(m.id, make_attempt(m, 1, 200, now, true));
    }
    if (got.empty()) std::this_thread::sleep_for(1ms);
  }
}

TEST_F(postgres_store, two_workers_claiming_at_once_never_get_the_same_message) {
  auto a = open();
  auto b = open();
  constexpr std::size_t total = 1000;
  for (std::size_t i = 0; i < total; i += 100) {
    std::vector<message> batch;
    for (std::size_t j = i; j < i + 100; ++j) {
      batch.push_back(make_message("m" + std::to_string(j), "s" + std::to_string(j % 7), t0_));
    }
    a->enqueue(batch);
  }
  std::mutex mutex;
  std::map<std::string, std::string> owner;
  int duplicates = 0;
  std::vector<std::thread> workers;
  for (int i = 0; i < 2; ++i) {
    workers.emplace_back(
        [&, i] { drain(*a, "a" + std::to_string(i), t0_, total, mutex, owner, duplicates); });
    workers.emplace_back(
        [&, i] { drain(*b, "b" + std::to_string(i), t0_, total, mutex, owner, duplicates); });
  }
  for (auto& w : workers) w.join();
  EXPECT_EQ(duplicates, 0);
  EXPECT_EQ(owner.size(), total);
  std::set<char> instances;
  for (auto& [id, w] : owner) instances.insert(w[0]);
  EXPECT_EQ(instances.size(), 2u) << "both instances should have claimed work";
  // complete() commits in the background: each store's read waits only for its own writes, so
  // both are read once (flushing both) before either is checked.
  (void)a->counts(t0_);
  (void)b->counts(t0_);
  EXPECT_EQ(a->counts(t0_).delivered, total);
  EXPECT_EQ(b->counts(t0_).pending, 0u);
}

TEST_F(postgres_store, a_lease_not_longer_than_the_request_timeout_is_refused) {
  store_options o;
  o.request_timeout = 20s;
  auto s = open(o);
  auto r = claim_at(t0_, "w");
  r.lease = 20s;
  try {
    s->claim(r);
    FAIL() << "expected hookline::error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("request timeout"), std::string::npos) << e.what();
  }
  r.lease = 21s;
  EXPECT_NO_THROW(s->claim(r));
  o.request_timeout = 0s;
  EXPECT_THROW(open(o), error);
}

TEST_F(postgres_store, notify_wakes_an_idle_worker_of_the_same_outbox_only) {
  auto idle = open();
  auto publisher = open();
  test::pg_schema other_schema(base_);
  auto other = make_store("postgres:" + other_schema.conninfo());
  // The first call connects the LISTEN session (and reports a wake-up: it may have missed some).
  idle->wait_for_notification(0ms);
  EXPECT_FALSE(idle->wait_for_notification(50ms));

  std::vector<message> elsewhere{make_message("x", "s1", t0_)};
  other->enqueue(elsewhere);
  EXPECT_FALSE(idle->wait_for_notification(300ms)) << "another schema's outbox woke us";

  std::atomic<bool> woke{false};
  const auto start = std::chrono::steady_clock::now();
  std::thread waiter([&] { woke = idle->wait_for_notification(20s); });
  std::vector<message> batch{make_message("a", "s1", t0_)};
  publisher->enqueue(batch);
  waiter.join();
  EXPECT_TRUE(woke.load());
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
}

TEST_F(postgres_store, workers_starting_at_once_migrate_once) {
  std::vector<std::thread> starters;
  std::atomic<int> opened{0};
  std::vector<std::string> errors;
  std::mutex mutex;
  for (int i = 0; i < 4; ++i) {
    starters.emplace_back([&] {
      try {
        auto s = open();
        std::vector<message> b{make_message("m" + std::to_string(opened.fetch_add(1)), "s", t0_)};
        s->enqueue(b);
      } catch (const std::exception& e) {
        std::lock_guard lock(mutex);
        errors.push_back(e.what());
      }
    });
  }
  for (auto& t : starters) t.join();
  EXPECT_TRUE(errors.empty()) << errors.front();
  EXPECT_EQ(open()->counts(t0_).pending, 4u);
}

TEST_F(postgres_store, connection_errors_never_show_the_password) {
  try {
    make_store("postgres:host=/nonexistent-hookline-dir dbname=x user=u password=hunter2secret");
    FAIL() << "expected hookline::error";
  } catch (const error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.find("hunter2secret"), std::string::npos) << what;
    EXPECT_NE(what.find("nonexistent-hookline-dir"), std::string::npos) << what;
  }
  try {
    make_store("postgres:host=/tmp password='hunter2secret");  // unterminated quote
    FAIL() << "expected hookline::error";
  } catch (const error& e) {
    EXPECT_EQ(std::string(e.what()).find("hunter2secret"), std::string::npos) << e.what();
  }
}

TEST_F(postgres_store, subscriptions_are_shared_through_the_database) {
  const std::string c = schema_->conninfo();
  EXPECT_TRUE(load_postgres_subscriptions(c).empty());
  save_postgres_subscription(c, {{"id", "b"}, {"url", "https://b.example.com/"}});
  save_postgres_subscription(c, {{"id", "a"}, {"url", "https://a.example.com/"}});
  save_postgres_subscription(c, {{"id", "b"}, {"url", "https://b2.example.com/"}});
  auto subs = load_postgres_subscriptions(c);  // as another worker would
  ASSERT_EQ(subs.size(), 2u);
  EXPECT_EQ(subs[0]["id"], "a");
  EXPECT_EQ(subs[1]["url"], "https://b2.example.com/");
  EXPECT_TRUE(remove_postgres_subscription(c, "a"));
  EXPECT_FALSE(remove_postgres_subscription(c, "a"));
  EXPECT_EQ(load_postgres_subscriptions(c).size(), 1u);
  try {
    save_postgres_subscription(c, {{"url", "https://x.example.com/"}});
    FAIL() << "expected hookline::error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("id"), std::string::npos) << e.what();
  }
}

// Two workers' registries follow the table while they run: a change anywhere reaches both through
// NOTIFY (the fallback poll is far away), invalid rows are reported and skipped, and a
// subscription the store holds disabled stays disabled through every reload.
TEST_F(postgres_store, a_subscription_sync_keeps_every_registry_equal_to_the_table) {
  const std::string c = schema_->conninfo();
  save_postgres_subscription(c, {{"id", "a"}, {"url", "https://a.example.com/"}});
  save_postgres_subscription(c, {{"id", "gone"}, {"url", "https://gone.example.com/"}});
  auto store = open();
  store->save_state({"gone", true, "the endpoint answered 410 Gone", std::nullopt});

  registry one, two;
  std::mutex m;
  std::vector<std::pair<load_report, std::string>> reports;
  postgres_subscription_sync::options o;
  o.states = store;
  o.poll = 1h;
  o.on_load = [&](const load_report& r, const std::string& e) {
    std::lock_guard lock(m);
    reports.emplace_back(r, e);
  };
  postgres_subscription_sync sync_one(one, c, o);
  o.on_load = {};
  postgres_subscription_sync sync_two(two, c, o);
  ASSERT_EQ(one.size(), 2u);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_FALSE(one.get("gone")->enabled);
  EXPECT_TRUE(one.get("a")->enabled);

  const auto eventually = [](const std::function<bool()>& done) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!done() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(10ms);
    return done();
  };
  save_postgres_subscription(c, {{"id", "a"}, {"url", "https://a2.example.com/"}});
  EXPECT_TRUE(eventually([&] {
    return one.get("a")->url == "https://a2.example.com/" &&
           two.get("a")->url == "https://a2.example.com/";
  }));
  EXPECT_FALSE(two.get("gone")->enabled);  // reloaded, still disabled

  EXPECT_TRUE(remove_postgres_subscription(c, "a"));
  EXPECT_TRUE(eventually([&] { return !one.get("a") && !two.get("a"); }));

  // Saved as given (not validated): the reload reports it and keeps the rest.
  save_postgres_subscription(c, {{"id", "broken"}, {"url", "ftp://x"}});
  EXPECT_TRUE(eventually([&] {
    std::lock_guard lock(m);
    return !reports.empty() && !reports.back().first.rejected.empty();
  }));
  {
    std::lock_guard lock(m);
    ASSERT_EQ(reports.back().first.rejected.size(), 1u);
    EXPECT_EQ(reports.back().first.rejected[0].id, "broken");
    EXPECT_TRUE(reports.back().second.empty());
  }
  EXPECT_TRUE(one.get("gone").has_value());
  EXPECT_FALSE(one.get("broken").has_value());
  EXPECT_GE(sync_one.loads(), 4u);
}

// enqueue_claimed() run again after a lost connection finds its rows stored by the first try
// (whose commit was not acknowledged): rows carrying exactly its lease are still the publisher's
// to deliver; rows stored by anyone else are not.
TEST_F(postgres_store, enqueue_claimed_again_keeps_only_rows_with_its_own_lease) {
  auto s = open();
  std::vector<message> first{make_message("a", "s1", t0_), make_message("b", "s1", t0_)};
  const enqueue_lease lease{"pub", t0_ + 30s, 2};
  ASSERT_EQ(s->enqueue_claimed(first, lease), (std::vector<bool>{true, true}));
  std::vector<message> again{make_message("a", "s1", t0_), make_message("b", "s1", t0_),
                             make_message("c", "s1", t0_)};
  const enqueue_lease retry{"pub", t0_ + 30s, 3};
  EXPECT_EQ(s->enqueue_claimed(again, retry), (std::vector<bool>{true, true, true}));
  EXPECT_EQ(again[1].sequence, first[1].sequence);
  std::vector<message> other{make_message("a", "s1", t0_), make_message("d", "s1", t0_)};
  EXPECT_EQ(s->enqueue_claimed(other, enqueue_lease{"someone-else", t0_ + 30s, 2}),
            (std::vector<bool>{false, true}));
  // One id twice in a batch: stored once, handed over once.
  std::vector<message> twice{make_message("e", "s1", t0_), make_message("e", "s1", t0_)};
  EXPECT_EQ(s->enqueue_claimed(twice, enqueue_lease{"pub", t0_ + 30s, 2}),
            (std::vector<bool>{true, false}));
}

// A schema at version 2 (no ordered-head index) migrates in place: the index appears and ordered
// messages still wait for the one before them.
TEST_F(postgres_store, a_version_2_schema_is_migrated_in_place) {
  const std::string c = schema_->conninfo();
  {
    auto s = open();
    std::vector<message> b{make_message("o1", "s1", t0_, true),
                           make_message("o2", "s1", t0_, true)};
    s->enqueue(b);
  }
  test::pg_exec(c,
                "DROP INDEX messages_ordered_head; DELETE FROM schema_version WHERE version > 2");
  auto has_index = [&] {
    try {
      test::pg_exec(c,
                    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = "
                    "current_schema() AND indexname = 'messages_ordered_head') THEN RAISE "
                    "EXCEPTION 'missing'; END IF; END $$");
      return true;
    } catch (const std::runtime_error&) {
      return false;
    }
  };
  ASSERT_FALSE(has_index());
  auto s = open();
  EXPECT_TRUE(has_index());
  EXPECT_NO_THROW(test::pg_exec(c,
                                "DO $$ BEGIN IF (SELECT max(version) FROM schema_version) <> 3 "
                                "THEN RAISE EXCEPTION 'version'; END IF; END $$"));
  auto got = s->claim(claim_at(t0_ + 1s, "w1"));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id, "o1");
}

// A dispatching hub on PostgreSQL sends what it publishes at once. Its own NOTIFY may reach its
// idle loop before the messages are handed over; the loop must not then listen for the next
// notification and sleep through the hand-over.
TEST_F(postgres_store, a_dispatching_hub_sends_its_own_publishes_without_delay) {
  test::test_server server;
  auto o = test::fast_options(2);
  o.store = "postgres:" + schema_->conninfo();
  hub h(o);
  h.subscriptions().add(test::make_subscription("s", server.url("/hook"), "/Root/Content", "File"));
  std::vector<double> delays;
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(30ms);  // idle: listening for notifications
    const auto t = std::chrono::steady_clock::now();
    h.publish(test::make_content_event("Create", "/Root/Content/Docs", "a.txt", "File", i + 1));
    ASSERT_TRUE(server.wait_for_requests(static_cast<std::size_t>(i + 1), 5s));
    delays.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
  }
  std::sort(delays.begin(), delays.end());
  // Sleeping through a hand-over costs the rest of a 100 ms wait.
  EXPECT_LT(delays[17], 60.0) << "90th percentile of publish -> request, ms";
}

/// A PostgreSQL cluster of this test's own, so restarting it does not disturb tests running in
/// parallel against the shared one.
class private_cluster {
 public:
  private_cluster() {
    dir_ = std::filesystem::temp_directory_path() /
           ("hookline-pg-restart-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    const std::string cmd =
        script() + " start " + dir_.string() + " > " + (dir_.string() + ".conninfo");
    if (std::system(cmd.c_str()) != 0) throw std::runtime_error("cannot start PostgreSQL");
    std::ifstream in(dir_.string() + ".conninfo");
    std::getline(in, conninfo_);
  }
  ~private_cluster() {
    const std::string cmd = script() + " stop " + dir_.string();
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "stopping PostgreSQL failed\n");
    std::filesystem::remove(dir_.string() + ".conninfo");
  }
  bool restart() {
    const std::string cmd = script() + " restart " + dir_.string();
    return std::system(cmd.c_str()) == 0;
  }
  const std::string& conninfo() const { return conninfo_; }

 private:
  static std::string script() { return std::string(HOOKLINE_SOURCE_DIR) + "/scripts/postgres.sh"; }
  std::filesystem::path dir_;
  std::string conninfo_;
};

TEST(postgres_store_restart, a_server_restart_mid_run_loses_nothing_and_stalls_nobody) {
  // The PostgreSQL binaries are what the test needs (like HOOKLINE_TEST_PG, this fails, not
  // skips, when they are missing).
  private_cluster cluster;
  ASSERT_FALSE(cluster.conninfo().empty());
  store_options o;
  o.request_timeout = 1s;
  // The store's own logger (not registered with spdlog: the CLI's never was, and its reconnects
  // went nowhere).
  std::ostringstream log;
  {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
    o.logger = std::make_shared<spdlog::logger>("store-test", sink);
  }
  auto producer_store = make_store("postgres:" + cluster.conninfo(), o);
  auto worker_store = make_store("postgres:" + cluster.conninfo(), o);
  const time_point now = std::chrono::system_clock::now();
  constexpr int total = 400;

  std::atomic<int> enqueued{0};
  std::atomic<bool> producer_failed{false};
  std::atomic<bool> restarted{false};
  std::thread producer([&] {
    try {
      for (int i = 0; i < total; i += 4) {
        // Half of the messages come after the restart, however long it takes on a busy machine
        // (the producer used to finish before a slow restart began).
        const auto deadline = std::chrono::steady_clock::now() + 60s;
        while (i == total / 2 && !restarted && std::chrono::steady_clock::now() < deadline)
          std::this_thread::sleep_for(5ms);
        std::vector<message> b;
        for (int j = i; j < i + 4; ++j)
          b.push_back(make_message("m" + std::to_string(j), "s", now));
        producer_store->enqueue(b);
        enqueued += 4;
        std::this_thread::sleep_for(2ms);
      }
    } catch (const std::exception& e) {
      producer_failed = true;
      ADD_FAILURE() << "enqueue failed: " << e.what();
    }
  });
  std::set<std::string> delivered;
  std::atomic<bool> worker_failed{false};
  std::thread worker([&] {
    const auto deadline = std::chrono::steady_clock::now() + 90s;
    try {
      while (delivered.size() < static_cast<std::size_t>(total) &&
             std::chrono::steady_clock::now() < deadline && !producer_failed) {
        // Real time and a short lease: a claim whose commit was lost with the connection is
        // claimable again two seconds later.
        auto req = claim_at(std::chrono::system_clock::now(), "worker", 8);
        req.lease = 2s;
        auto got = worker_store->claim(req);
        for (auto& m : got) {
          delivered.insert(m.id);
          worker_store->complete(m.id, make_attempt(m, 1, 200, now, true));
        }
        if (got.empty()) worker_store->wait_for_notification(50ms);
      }
    } catch (const std::exception& e) {
      worker_failed = true;
      ADD_FAILURE() << "worker failed: " << e.what();
    }
  });
  while (enqueued < total / 4 && !producer_failed) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(cluster.restart());
  const int after_restart = enqueued;
  restarted = true;
  producer.join();
  worker.join();
  EXPECT_LT(after_restart, total) << "the restart should happen mid-run";
  EXPECT_FALSE(producer_failed.load());
  EXPECT_FALSE(worker_failed.load());
  EXPECT_EQ(delivered.size(), static_cast<std::size_t>(total));
  // Completions in the air when the server stopped were retried after the reconnect.
  const auto c = worker_store->counts(now);
  EXPECT_EQ(c.delivered, static_cast<std::size_t>(total));
  EXPECT_EQ(producer_store->query({}).size(), static_cast<std::size_t>(total));
  o.logger->flush();
  EXPECT_NE(log.str().find("reconnecting"), std::string::npos) << log.str();
}

}  // namespace
}  // namespace hookline
