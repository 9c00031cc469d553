// SQLite store specifics: durability across reopen, group commit, lease recovery after a dead
// predecessor, migrations, configuration errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "hookline/error.hpp"
#include "hookline/store.hpp"
#include "store_test_util.hpp"
#include "stores/sql_common.hpp"
#include "stores/sqlite_store.hpp"

namespace hookline {
namespace {

using namespace std::chrono_literals;
using test::make_attempt;
using test::make_message;

std::int64_t scalar(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  std::int64_t v = -1;
  if (sqlite3_step(s) == SQLITE_ROW) v = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  sqlite3_close(db);
  return v;
}

claim_request claim_at(time_point now, std::string worker = "w1", std::size_t max = 64) {
  claim_request r;
  r.now = now;
  r.max = max;
  r.lease = 60s;
  r.worker_id = std::move(worker);
  return r;
}

class sqlite_store : public ::testing::Test {
 protected:
  std::shared_ptr<delivery_store> open(store_options o = {}) {
    return make_store("sqlite:" + path_, o);
  }
  test::temp_dir dir_;
  const std::string path_ = dir_.file("outbox.db");
  const time_point t0_ = std::chrono::system_clock::now();
};

// Bodies, URLs and response heads are in the file: readable by its owner only, whatever the
// umask (it was 0644), and the WAL alike.
TEST_F(sqlite_store, a_new_store_file_and_its_wal_are_private_to_the_owner) {
  const auto old_mask = ::umask(022);
  {
    auto s = open();
    std::vector<message> b{make_message("a", "s1", t0_)};
    s->enqueue(b);
    namespace fs = std::filesystem;
    const auto mode = [](const std::string& p) {
      return fs::status(p).permissions() & fs::perms::all;
    };
    EXPECT_EQ(mode(path_), fs::perms::owner_read | fs::perms::owner_write);
    ASSERT_TRUE(fs::exists(path_ + "-wal"));
    EXPECT_EQ(mode(path_ + "-wal"), fs::perms::owner_read | fs::perms::owner_write);
  }
  ::umask(old_mask);
}

TEST_F(sqlite_store, messages_attempts_state_and_stats_survive_a_reopen) {
  {
    auto s = open();
    std::vector<message> b{make_message("a", "s1", t0_), make_message("b", "s1", t0_ + 1s),
                           make_message("c", "s2", t0_)};
    s->enqueue(b);
    auto claimed = s->claim(claim_at(t0_));
    ASSERT_EQ(claimed.size(), 2u);
    s->reschedule("a", t0_ + 1min, make_attempt(claimed[0], 1, 503, t0_, false));
    s->complete("c", make_attempt(claimed[1], 1, 200, t0_, true));
    s->save_state({"s2", true, "HTTP 410 Gone", t0_});
  }
  auto s = open();
  auto a = s->get("a");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->status, message_status::pending);
  EXPECT_EQ(a->attempts, 1);
  EXPECT_EQ(a->next_attempt_at, t0_ + 1min);
  EXPECT_EQ(s->get("c")->status, message_status::delivered);
  EXPECT_EQ(s->get("b")->body, make_message("b", "s1", t0_).body);
  EXPECT_EQ(s->attempts({}).size(), 2u);
  EXPECT_EQ(s->stats("s1").status_5xx, 1u);
  EXPECT_EQ(s->stats("s2").status_2xx, 1u);
  auto states = s->load_states();
  ASSERT_EQ(states.size(), 1u);
  EXPECT_TRUE(states[0].disabled);
  EXPECT_EQ(states[0].failing_since, t0_);
  // Sequences keep growing after a reopen.
  std::vector<message> more{make_message("d", "s1", t0_)};
  s->enqueue(more);
  EXPECT_GT(more[0].sequence, s->get("b")->sequence);
}

TEST_F(sqlite_store, enqueue_is_committed_when_it_returns) {
  auto s = open();
  std::vector<message> b{make_message("a", "s1", t0_), make_message("b", "s1", t0_)};
  s->enqueue(b);
  // Another connection, as another process would see the file.
  EXPECT_EQ(scalar(path_, "SELECT count(*) FROM messages"), 2);
}

TEST_F(sqlite_store, concurrent_enqueues_share_commits) {
  auto s = open();
  const auto before = detail::sqlite_store_commits(*s);
  constexpr int threads = 8, per_thread = 40;
  std::atomic<int> go{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      go.fetch_add(1);
      while (go.load() < threads) std::this_thread::yield();
      for (int i = 0; i < per_thread; ++i) {
        std::vector<message> b{
            make_message("m" + std::to_string(t) + "-" + std::to_string(i), "s1", t0_)};
        s->enqueue(b);
      }
    });
  }
  for (auto& t : pool) t.join();
  const auto commits = detail::sqlite_store_commits(*s) - before;
  EXPECT_EQ(s->counts(t0_).pending, static_cast<std::size_t>(threads * per_thread));
  // Every enqueue waited for a commit (and an fsync); with 8 publishers most commits carry
  // several of them.
  EXPECT_LT(commits, static_cast<std::uint64_t>(threads * per_thread) * 3 / 4)
      << commits << " commits for " << threads * per_thread << " enqueues";
}

TEST_F(sqlite_store, restart_releases_the_leases_of_a_dead_predecessor) {
  {
    auto first = open();
    std::vector<message> b{make_message("a", "s1", t0_), make_message("b", "s1", t0_)};
    first->enqueue(b);
    ASSERT_EQ(first->claim(claim_at(t0_, "old-worker")).size(), 2u);
    // Gone without releasing its leases, like a killed process (the kernel drops its lock).
  }
  auto second = open();
  EXPECT_TRUE(detail::sqlite_store_released_stale_leases(*second));
  auto again = second->claim(claim_at(t0_ + 1s, "new-worker"));
  EXPECT_EQ(again.size(), 2u);
}

TEST_F(sqlite_store, leases_of_a_live_process_are_kept) {
  auto first = open();
  std::vector<message> b{make_message("a", "s1", t0_)};
  first->enqueue(b);
  ASSERT_EQ(first->claim(claim_at(t0_, "live-worker")).size(), 1u);
  // Another process opening the same file while the first one runs (e.g. `hookline publish`).
  auto second = open();
  EXPECT_FALSE(detail::sqlite_store_released_stale_leases(*second));
  EXPECT_TRUE(second->claim(claim_at(t0_ + 1s, "other")).empty());
  EXPECT_EQ(second->counts(t0_ + 1s).in_flight, 1u);
}

// A file written by schema version 1 (its indexes, no lease index) opens with its messages and
// gets the current indexes.
TEST_F(sqlite_store, a_version_1_file_is_migrated_in_place) {
  {
    auto s = open();
    std::vector<message> b{make_message("m1", "s1", t0_)};
    s->enqueue(b);
  }
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "DROP INDEX messages_due; DROP INDEX messages_ordered_head; "
                           "DROP INDEX messages_delivered; DROP INDEX messages_dead; "
                           "CREATE INDEX messages_claim ON messages(status, next_attempt_at); "
                           "CREATE INDEX messages_head ON messages(subscription_id, status, "
                           "sequence); "
                           "CREATE INDEX messages_status_updated ON messages(status, updated_at); "
                           "CREATE INDEX messages_lease_owner ON messages(lease_owner) "
                           "WHERE lease_owner IS NOT NULL; "
                           "DROP INDEX messages_first_attempt; "
                           "ALTER TABLE messages DROP COLUMN first_attempt_id; "
                           "ALTER TABLE messages DROP COLUMN first_started_at; "
                           "ALTER TABLE messages DROP COLUMN first_duration_us; "
                           "ALTER TABLE messages DROP COLUMN first_status_code; "
                           "ALTER TABLE messages DROP COLUMN first_request_length; "
                           "ALTER TABLE messages DROP COLUMN first_response_length; "
                           "ALTER TABLE messages DROP COLUMN first_response_head; "
                           "DELETE FROM schema_version WHERE version > 1",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  ASSERT_EQ(scalar(path_, "SELECT max(version) FROM schema_version"), 1);
  {
    auto s = open();
    ASSERT_TRUE(s->get("m1"));
    EXPECT_EQ(s->get("m1")->status, message_status::pending);
    EXPECT_EQ(s->claim(claim_at(t0_)).size(), 1u);
    EXPECT_EQ(s->next_due(t0_), t0_ + claim_at(t0_).lease);  // its lease end, from messages_due
  }
  EXPECT_EQ(scalar(path_, "SELECT max(version) FROM schema_version"),
            detail::sqlite_schema_version);
  EXPECT_EQ(scalar(path_,
                   "SELECT count(*) FROM sqlite_master WHERE name IN ('messages_due', "
                   "'messages_ordered_head', 'messages_delivered', 'messages_dead')"),
            4);
  EXPECT_EQ(scalar(path_,
                   "SELECT count(*) FROM sqlite_master WHERE name IN ('messages_claim', "
                   "'messages_head', 'messages_status_updated', 'messages_lease_owner', "
                   "'messages_lease_until')"),
            0);
}

// The claim, next_due() and prune() reach their rows through the partial indexes (a plan that
// scans the table would still be correct, only slow: this pins the plans).
TEST_F(sqlite_store, claims_and_lookups_use_the_partial_indexes) {
  { auto s = open(); }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  auto plan = [&](const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, ("EXPLAIN QUERY PLAN " + sql).c_str(), -1, &st, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(db);
    std::string out;
    while (st && sqlite3_step(st) == SQLITE_ROW)
      out += std::string(reinterpret_cast<const char*>(sqlite3_column_text(st, 3))) + "\n";
    sqlite3_finalize(st);
    return out;
  };
  // A search of the index, in its order: "USING INDEX" alone would also match a scan of the
  // whole index followed by a sort (which a key written differently from the index gets).
  const std::string due = HOOKLINE_SQLITE_DUE("c");  // as the store's queries write it
  const std::string claim_plan =
      plan("SELECT sequence FROM messages c WHERE c.status = 'pending' AND " + due +
           " <= 5 ORDER BY " + due + ", c.sequence LIMIT 10");
  EXPECT_THAT(claim_plan, ::testing::HasSubstr("SEARCH c USING INDEX messages_due"));
  EXPECT_THAT(claim_plan, ::testing::Not(::testing::HasSubstr("TEMP B-TREE")));
  const std::string next_due_plan =
      plan("SELECT " + due + " FROM messages c WHERE c.status = 'pending' ORDER BY " + due +
           ", c.sequence LIMIT 1");
  EXPECT_THAT(next_due_plan, ::testing::HasSubstr("USING INDEX messages_due"));
  EXPECT_THAT(next_due_plan, ::testing::Not(::testing::HasSubstr("TEMP B-TREE")));
  EXPECT_THAT(plan("SELECT 1 FROM messages p WHERE p.subscription_id = 'x' AND "
                   "p.status = 'pending' AND p.ordered = 1 AND p.sequence < 7"),
              ::testing::HasSubstr("messages_ordered_head"));
  EXPECT_THAT(plan("SELECT sequence FROM messages WHERE status = 'delivered' AND updated_at < 5"),
              ::testing::HasSubstr("messages_delivered"));
  EXPECT_THAT(plan("SELECT sequence FROM messages WHERE subscription_id = 'x' AND "
                   "status = 'dead' AND created_at >= 5"),
              ::testing::HasSubstr("messages_dead"));
  sqlite3_close(db);
}

// The default VFS, counting the statement journals SQLite writes to disk: it keeps one in memory
// up to 64 KiB, then opens a temporary file with SQLITE_OPEN_SUBJOURNAL.
class subjournal_counter {
 public:
  subjournal_counter() : base_(sqlite3_vfs_find(nullptr)) {
    vfs_ = *base_;
    vfs_.zName = "hookline-test-subjournal-counter";
    vfs_.pAppData = this;
    vfs_.xOpen = [](sqlite3_vfs* v, const char* name, sqlite3_file* f, int flags, int* out) {
      auto* self = static_cast<subjournal_counter*>(v->pAppData);
      if ((flags & SQLITE_OPEN_SUBJOURNAL) != 0) ++self->opened;
      return self->base_->xOpen(self->base_, name, f, flags, out);
    };
    EXPECT_EQ(sqlite3_vfs_register(&vfs_, 1), SQLITE_OK);
  }
  ~subjournal_counter() {
    sqlite3_vfs_unregister(&vfs_);
    sqlite3_vfs_register(base_, 1);
  }
  std::atomic<int> opened{0};

 private:
  sqlite3_vfs* base_;
  sqlite3_vfs vfs_{};
};

// Statements of several rows (the batched inserts of messages and attempts, a claim's leases)
// must not need a statement journal: one that changed more than 16 pages already in the file
// copied each of them to a temporary file. Ids and due times spread over the whole table (and
// long ids, so that the id indexes have many pages) make every such statement touch about as
// many index pages as it has rows: the message inserts (ids, due times), the claims' leases (due
// times) and, once the attempt log has grown, the attempt inserts (message ids).
TEST_F(sqlite_store, batched_writes_keep_no_statement_journal) {
  subjournal_counter counter;
  auto s = open();
  auto scattered = [](int i) { return (static_cast<std::uint64_t>(i) * 2654435761u) % 1000003u; };
  const std::string pad(60, 'p');
  for (int b = 0; b < 8; ++b) {
    std::vector<message> batch;
    for (int i = 0; i < 500; ++i) {
      const auto k = scattered(b * 500 + i);
      batch.push_back(make_message(std::to_string(k) + pad, "s1",
                                   t0_ - std::chrono::seconds(static_cast<long>(k % 86400))));
    }
    s->enqueue(batch);
  }
  const int after_enqueue = counter.opened.load();
  int after_first_claim = -1;
  for (;;) {
    auto claimed = s->claim(claim_at(t0_, "w1", 256));
    if (after_first_claim < 0) after_first_claim = counter.opened.load();
    if (claimed.empty()) break;
    std::vector<attempt_result> results;
    for (const auto& m : claimed) {
      attempt_result r;
      r.message_id = m.id;
      r.attempt = make_attempt(m, 1, 200, t0_, true);
      results.push_back(std::move(r));
    }
    s->record_results(results);
  }
  EXPECT_EQ(s->counts(t0_).delivered, 4000u);
  attempt_query all;
  all.limit = 5000;
  EXPECT_EQ(s->attempts(all).size(), 4000u);
  EXPECT_EQ(after_enqueue, 0) << "statement journals spilled while inserting messages";
  EXPECT_EQ(after_first_claim, 0) << "statement journals spilled while leasing a claim";
  EXPECT_EQ(counter.opened.load(), 0) << "statement journals spilled while recording attempts";
  // The control: a statement that does need one (an UPDATE of every row, which a NOT NULL
  // column could abort midway, inside a transaction) is counted. A SQLite built to keep
  // temporary files in memory fails here rather than passing the checks above untested.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  EXPECT_EQ(sqlite3_exec(db,
                         "BEGIN IMMEDIATE; UPDATE messages SET last_error = 'x' || id; "
                         "UPDATE messages SET last_error = ''; ROLLBACK",
                         nullptr, nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);
  EXPECT_GT(counter.opened.load(), 0) << "the counter saw no statement journal at all";
}

// Checkpoints keep the WAL short: about 40 MB of messages go through a WAL that stays a small
// multiple of the 1,000-page threshold (without checkpoints it would hold every page written).
TEST_F(sqlite_store, the_wal_is_checkpointed_and_stays_small) {
  auto s = open();
  std::uintmax_t largest = 0;
  for (int b = 0; b < 100; ++b) {
    std::vector<message> batch;
    for (int i = 0; i < 100; ++i) {
      auto m = make_message("m" + std::to_string(b * 100 + i), "s1", t0_);
      m.body.assign(4000, 'x');
      batch.push_back(std::move(m));
    }
    s->enqueue(batch);
    largest = std::max(largest, std::filesystem::file_size(path_ + "-wal"));
  }
  EXPECT_EQ(s->counts(t0_).pending, 10000u);
  EXPECT_LT(largest, std::uintmax_t{24} << 20) << "WAL bytes at most";
  EXPECT_GT(std::filesystem::file_size(path_), std::uintmax_t{35} << 20)
      << "the messages reached the database file";
}

TEST_F(sqlite_store, migration_version_and_wal_mode_are_recorded) {
  { auto s = open(); }
  { auto s = open(); }  // a second open applies nothing again
  EXPECT_EQ(scalar(path_, "SELECT max(version) FROM schema_version"),
            detail::sqlite_schema_version);
  EXPECT_EQ(scalar(path_, "SELECT count(*) FROM schema_version"), detail::sqlite_schema_version);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "wal");
  sqlite3_finalize(st);
  sqlite3_close(db);
}

TEST_F(sqlite_store, refuses_a_file_from_a_newer_version) {
  { auto s = open(); }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "INSERT INTO schema_version VALUES(99, 0)", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  try {
    open();
    FAIL() << "expected hookline::error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("schema version 99"), std::string::npos) << e.what();
  }
}

TEST_F(sqlite_store, refuses_a_lease_not_longer_than_the_request_timeout) {
  store_options o;
  o.request_timeout = 15s;
  auto s = open(o);
  auto r = claim_at(t0_);
  r.lease = 15s;
  EXPECT_THROW(s->claim(r), error);
  r.lease = 16s;
  EXPECT_NO_THROW(s->claim(r));
}

TEST_F(sqlite_store, bad_locations_and_options_are_named_in_the_error) {
  try {
    make_store("sqlite:" + path_ + "?synchronous=sometimes");
    FAIL() << "expected hookline::error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("synchronous"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("sometimes"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_store("sqlite::memory:"), error);
  EXPECT_THROW(make_store("sqlite:" + dir_.file("no/such/dir/x.db")), error);
  auto normal = make_store("sqlite:" + path_ + "?synchronous=normal");
  std::vector<message> b{make_message("a", "s1", t0_)};
  normal->enqueue(b);
  EXPECT_TRUE(normal->get("a").has_value());
}

TEST_F(sqlite_store, retention_prunes_old_delivered_messages_at_open) {
  const time_point old = t0_ - 3h;
  {
    store_options keep;
    keep.retention = std::chrono::hours(0);  // no pruning while the data is set up
    auto s = open(keep);
    std::vector<message> b{make_message("old", "s1", old), make_message("dead", "s1", old)};
    s->enqueue(b);
    auto claimed = s->claim(claim_at(old));
    s->complete("old", make_attempt(claimed[0], 1, 200, old, true));
    s->dead_letter("dead", "gave up", nullptr);
  }
  store_options o;
  o.retention = 1h;
  auto s = open(o);
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  // Messages go first, then attempts: wait for both.
  while ((s->get("old").has_value() || !s->attempts({}).empty()) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_FALSE(s->get("old").has_value());
  EXPECT_TRUE(s->get("dead").has_value());
  EXPECT_TRUE(s->attempts({}).empty());
}

// Messages, leases and results are written up to 16 rows per statement (chunks of 16, 4 and 1):
// each row must keep its own values, sequence and outcome across the chunk boundaries.
TEST_F(sqlite_store, a_batch_across_statement_chunks_keeps_each_message_and_its_order) {
  auto store = open();
  std::vector<message> batch;
  for (int i = 0; i < 37; ++i)  // 16 + 16 + 4 + 1
    batch.push_back(make_message("m" + std::to_string(i), i % 2 ? "s1" : "s2", t0_));
  const auto leased = store->enqueue_claimed(batch, enqueue_lease{"pub", t0_ + 30s, 21});
  ASSERT_EQ(leased.size(), 37u);
  EXPECT_EQ(std::count(leased.begin(), leased.end(), true), 21);
  for (std::size_t i = 1; i < batch.size(); ++i)
    EXPECT_EQ(batch[i].sequence, batch[i - 1].sequence + 1) << batch[i].id;
  for (const auto& m : batch) {
    auto stored = store->get(m.id);
    ASSERT_TRUE(stored) << m.id;
    EXPECT_EQ(stored->sequence, m.sequence);
    EXPECT_EQ(stored->subscription_id, m.subscription_id);
    EXPECT_EQ(stored->body, m.body);
  }
  EXPECT_EQ(store->counts(t0_).in_flight, 21u);
  // The other 16 are claimed (one lease statement of 16 rows) and leased to the claimer only.
  auto claimed = store->claim(claim_at(t0_, "w2"));
  ASSERT_EQ(claimed.size(), 16u);
  EXPECT_EQ(store->counts(t0_).in_flight, 37u);
  EXPECT_TRUE(store->claim(claim_at(t0_ + 1s, "w3")).empty());
  EXPECT_EQ(store->release_worker("w2"), 16u);
  EXPECT_EQ(store->release_worker("pub"), 21u);
}

TEST_F(sqlite_store, an_enqueue_retried_by_the_host_keeps_stored_messages_where_they_are) {
  auto store = open();
  std::vector<message> first{make_message("a", "s1", t0_), make_message("b", "s1", t0_)};
  store->enqueue(first);
  // 21 rows: 16 + 4 + 1. "a" and "b" are stored already and "x3" comes twice.
  std::vector<message> batch;
  for (int i = 0; i < 21; ++i) batch.push_back(make_message("x" + std::to_string(i), "s1", t0_));
  batch[2] = make_message("b", "s1", t0_);
  batch[4] = make_message("x3", "s1", t0_);
  batch[17] = make_message("a", "s1", t0_);
  const auto leased = store->enqueue_claimed(batch, enqueue_lease{"pub", t0_ + 30s, 21});
  EXPECT_EQ(batch[2].sequence, first[1].sequence);
  EXPECT_EQ(batch[17].sequence, first[0].sequence);
  EXPECT_EQ(batch[4].sequence, batch[3].sequence) << "the repeated id has the first one's place";
  EXPECT_FALSE(leased[2]);
  EXPECT_FALSE(leased[4]);
  EXPECT_FALSE(leased[17]);
  EXPECT_EQ(std::count(leased.begin(), leased.end(), true), 18);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (i == 2 || i == 4 || i == 17) continue;
    EXPECT_TRUE(leased[i]) << i;
    EXPECT_GT(batch[i].sequence, first[1].sequence) << i;
  }
  EXPECT_EQ(store->counts(t0_).pending, 20u);
  EXPECT_EQ(store->counts(t0_).in_flight, 18u);
  // The stored ones were not leased by the retry: a claim hands them out.
  EXPECT_EQ(store->claim(claim_at(t0_, "w2")).size(), 2u);
}

TEST_F(sqlite_store, results_across_statement_chunks_update_each_message) {
  auto store = open();
  std::vector<message> batch;
  for (int i = 0; i < 22; ++i) batch.push_back(make_message("m" + std::to_string(i), "s1", t0_));
  batch.push_back(make_message("gone", "s2", t0_));
  store->enqueue(batch);
  auto claimed = store->claim(claim_at(t0_, "w1", 100));
  ASSERT_EQ(claimed.size(), 23u);
  EXPECT_EQ(store->counts(t0_).in_flight, 23u) << "every chunk's rows leased (16 + 4 + 1 + 1 + 1)";
  store->dead_letter("gone", "given up", nullptr);
  std::vector<attempt_result> results;
  for (int i = 0; i < 22; ++i) {
    const auto& m = batch[static_cast<std::size_t>(i)];
    if (i % 3 == 0) {
      results.push_back(
          {m.id, t0_ + std::chrono::seconds(10 + i), make_attempt(m, 1, 500 + i, t0_ + 1s, false)});
    } else {
      results.push_back({m.id, std::nullopt, make_attempt(m, 1, 200 + i, t0_ + 1s, true)});
    }
  }
  // A retry for a message no longer pending records its attempt and changes nothing else; a
  // result for an unknown message records nothing.
  results.push_back({"gone", t0_ + 10s, make_attempt(batch[22], 2, 503, t0_ + 1s, false)});
  results.push_back({"nobody", std::nullopt, make_attempt(batch[0], 1, 200, t0_ + 1s, true)});
  store->record_results(results);
  for (int i = 0; i < 22; ++i) {
    const auto m = *store->get("m" + std::to_string(i));
    EXPECT_EQ(m.attempts, 1) << m.id;
    if (i % 3 == 0) {
      EXPECT_EQ(m.status, message_status::pending) << m.id;
      EXPECT_EQ(m.last_status, 500 + i) << m.id;
      EXPECT_EQ(m.last_error, "HTTP " + std::to_string(500 + i)) << m.id;
      EXPECT_EQ(m.next_attempt_at, t0_ + std::chrono::seconds(10 + i)) << m.id;
    } else {
      EXPECT_EQ(m.status, message_status::delivered) << m.id;
      EXPECT_EQ(m.last_status, 200 + i) << m.id;
    }
  }
  const auto gone = *store->get("gone");
  EXPECT_EQ(gone.status, message_status::dead);
  EXPECT_EQ(gone.last_error, "given up");
  EXPECT_FALSE(store->get("nobody"));
  const auto log = store->attempts(attempt_query{});
  ASSERT_EQ(log.size(), 23u);
  for (std::size_t i = 0; i < 22; ++i) EXPECT_EQ(log[i].message_id, batch[i].id) << "in order";
  EXPECT_EQ(log[22].message_id, "gone");
  EXPECT_EQ(store->stats("s1").calls, 22u);
  EXPECT_EQ(store->stats("s1").failures, 8u);
  EXPECT_EQ(store->stats("s2").calls, 1u);
  EXPECT_EQ(store->counts(t0_ + 2s).in_flight, 0u);
}

TEST_F(sqlite_store, two_results_for_one_message_in_a_batch_apply_in_order) {
  auto store = open();
  std::vector<message> batch{make_message("a", "s1", t0_), make_message("b", "s1", t0_)};
  store->enqueue(batch);
  ASSERT_EQ(store->claim(claim_at(t0_)).size(), 2u);
  std::vector<attempt_result> results;
  results.push_back({"a", t0_ + 5s, make_attempt(batch[0], 1, 503, t0_ + 1s, false)});
  results.push_back({"b", std::nullopt, make_attempt(batch[1], 1, 200, t0_ + 1s, true)});
  results.push_back({"a", std::nullopt, make_attempt(batch[0], 2, 204, t0_ + 6s, true)});
  store->record_results(results);
  const auto a = *store->get("a");
  EXPECT_EQ(a.status, message_status::delivered);
  EXPECT_EQ(a.attempts, 2);
  EXPECT_EQ(a.last_status, 204);
  EXPECT_EQ(store->get("b")->status, message_status::delivered);
  attempt_query q;
  q.message_id = "a";
  EXPECT_EQ(store->attempts(q).size(), 2u);
}

// A message delivered at its first attempt keeps that attempt in its own row (schema 5): no
// attempts row is written, and the attempt log still returns it, whole and in its place.
TEST_F(sqlite_store, a_first_attempt_success_stays_in_the_message_row_and_reads_back_whole) {
  auto store = open();
  std::vector<message> batch{make_message("a", "s1", t0_), make_message("b", "s1", t0_),
                             make_message("c", "s2", t0_)};
  store->enqueue(batch);
  ASSERT_EQ(store->claim(claim_at(t0_)).size(), 3u);
  auto first_a = make_attempt(batch[0], 1, 201, t0_ + 1s, true);
  first_a.duration = std::chrono::microseconds(4321);
  first_a.response_length = 99;
  first_a.response_head = "{\"ok\":true}";
  std::vector<attempt_result> results;
  results.push_back({"b", t0_ + 5s, make_attempt(batch[1], 1, 503, t0_ + 1s, false)});
  results.push_back({"a", std::nullopt, first_a});
  results.push_back({"c", std::nullopt, make_attempt(batch[2], 1, 204, t0_ + 2s, true)});
  store->record_results(results);
  store->get("a");  // a read waits for the results
  EXPECT_EQ(scalar(path_, "SELECT count(*) FROM attempts"), 1) << "only b's failure";
  EXPECT_EQ(scalar(path_, "SELECT count(*) FROM messages WHERE first_attempt_id IS NOT NULL"), 2);

  const auto log = store->attempts({});
  ASSERT_EQ(log.size(), 3u);
  EXPECT_EQ(log[0].message_id, "b");  // the order results were recorded in
  EXPECT_EQ(log[1].message_id, "a");
  EXPECT_EQ(log[2].message_id, "c");
  const auto& a = log[1];
  EXPECT_EQ(a.subscription_id, "s1");
  EXPECT_EQ(a.event_id, batch[0].event_id);
  EXPECT_EQ(a.event_name, batch[0].event_name);
  EXPECT_EQ(a.url, batch[0].url);
  EXPECT_EQ(a.http_method, batch[0].http_method);
  EXPECT_EQ(a.attempt, 1);
  EXPECT_EQ(a.started_at, t0_ + 1s);
  EXPECT_EQ(a.duration, std::chrono::microseconds(4321));
  EXPECT_EQ(a.status_code, 201);
  EXPECT_EQ(a.error, "");
  EXPECT_EQ(a.request_length, batch[0].body.size());
  EXPECT_EQ(a.response_length, 99u);
  EXPECT_EQ(a.response_head, "{\"ok\":true}");
  EXPECT_TRUE(a.success);

  attempt_query by_sub;
  by_sub.subscription_id = "s2";
  ASSERT_EQ(store->attempts(by_sub).size(), 1u);
  EXPECT_EQ(store->attempts(by_sub)[0].message_id, "c");
  attempt_query since;
  since.since = t0_ + 2s;
  ASSERT_EQ(store->attempts(since).size(), 1u);
  attempt_query newest;
  newest.limit = 2;  // the most recent two, oldest first
  const auto two = store->attempts(newest);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0].message_id, "a");
  EXPECT_EQ(two[1].message_id, "c");
  EXPECT_EQ(store->stats("s1").calls, 2u);
  EXPECT_EQ(store->stats("s2").status_2xx, 1u);
}

// What the row cannot describe goes to the attempts table: a first attempt sent to a url or
// with a method the subscription has since changed to (the row keeps the ones of its
// publication), and a second success (another worker's, late). The log keeps both places in
// the order the results came, through every filter and limit.
TEST_F(sqlite_store, attempts_the_row_cannot_hold_go_to_the_table_and_the_log_merges_both) {
  auto store = open();
  std::vector<message> batch{make_message("a", "s1", t0_), make_message("b", "s1", t0_),
                             make_message("c", "s2", t0_), make_message("d", "s1", t0_)};
  store->enqueue(batch);
  ASSERT_EQ(store->claim(claim_at(t0_)).size(), 4u);
  auto moved = make_attempt(batch[0], 1, 200, t0_ + 1s, true);
  moved.url = "https://new.example/hook";
  moved.http_method = "PUT";
  store->complete("a", moved);                                           // table
  store->complete("b", make_attempt(batch[1], 1, 200, t0_ + 2s, true));  // row
  store->complete("c", make_attempt(batch[2], 1, 200, t0_ + 3s, true));  // row
  store->complete("b", make_attempt(batch[1], 1, 204, t0_ + 4s, true));  // table: late, another's
  store->complete("d", make_attempt(batch[3], 1, 200, t0_ + 5s, true));  // row
  EXPECT_EQ(store->get("b")->status, message_status::delivered);
  EXPECT_EQ(scalar(path_, "SELECT count(*) FROM attempts"), 2);

  const auto log = store->attempts({});
  ASSERT_EQ(log.size(), 5u);
  const char* order[] = {"a", "b", "c", "b", "d"};
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(log[i].message_id, order[i]) << i;
  EXPECT_EQ(log[0].url, "https://new.example/hook");
  EXPECT_EQ(log[0].http_method, "PUT");
  EXPECT_EQ(log[1].url, batch[1].url);
  EXPECT_EQ(log[3].status_code, 204);

  attempt_query s1;
  s1.subscription_id = "s1";
  s1.limit = 3;  // the most recent three of s1: b (row), b (table), d (row)
  const auto recent = store->attempts(s1);
  ASSERT_EQ(recent.size(), 3u);
  EXPECT_EQ(recent[0].message_id, "b");
  EXPECT_EQ(recent[0].status_code, 200);
  EXPECT_EQ(recent[1].status_code, 204);
  EXPECT_EQ(recent[2].message_id, "d");
  attempt_query since;
  since.since = t0_ + 3s;
  const auto late = store->attempts(since);
  ASSERT_EQ(late.size(), 3u);
  EXPECT_EQ(late[0].message_id, "c");
  EXPECT_EQ(late[2].message_id, "d");
  attempt_query by_message;
  by_message.message_id = "b";
  EXPECT_EQ(store->attempts(by_message).size(), 2u);
  EXPECT_EQ(store->stats("s1").calls, 4u);
}

// A redelivery moves the first attempt out of the row (keeping its place in the log), so the
// next delivery's first attempt can stay there in turn; nothing of the history is lost, also
// across a reopen.
TEST_F(sqlite_store, a_redelivered_message_keeps_its_earlier_first_attempt_in_the_log) {
  {
    auto store = open();
    std::vector<message> batch{make_message("a", "s1", t0_), make_message("b", "s1", t0_)};
    store->enqueue(batch);
    ASSERT_EQ(store->claim(claim_at(t0_)).size(), 2u);
    store->complete("a", make_attempt(batch[0], 1, 200, t0_ + 1s, true));
    store->complete("b", make_attempt(batch[1], 1, 202, t0_ + 2s, true));
    ASSERT_TRUE(store->redeliver("a", t0_ + 3s));
    EXPECT_EQ(store->get("a")->status, message_status::pending);
    EXPECT_EQ(scalar(path_, "SELECT count(*) FROM attempts"), 1);
    auto again = store->claim(claim_at(t0_ + 3s));
    ASSERT_EQ(again.size(), 1u);
    store->complete("a", make_attempt(again[0], 1, 204, t0_ + 4s, true));
    EXPECT_EQ(store->get("a")->status, message_status::delivered);
  }
  auto store = open();
  const auto log = store->attempts({});
  ASSERT_EQ(log.size(), 3u);
  EXPECT_EQ(log[0].message_id, "a");
  EXPECT_EQ(log[0].status_code, 200);
  EXPECT_EQ(log[1].message_id, "b");
  EXPECT_EQ(log[2].message_id, "a");
  EXPECT_EQ(log[2].status_code, 204);
  attempt_query q;
  q.message_id = "a";
  ASSERT_EQ(store->attempts(q).size(), 2u);
  // Pruned with its message: the delivered rows go, and so do their attempts.
  EXPECT_EQ(store->prune(t0_ + 1h), 5u);  // two messages, three attempts
  EXPECT_TRUE(store->attempts({}).empty());
}

// Fire-and-forget writes (results) wait once the committer is behind by its cap, so a
// dispatcher cannot run ahead of what the store has recorded (what a crash can send twice).
TEST(group_committer, holds_fire_and_forget_writes_back_beyond_its_cap) {
  std::atomic<int> committed{0};
  detail::group_committer committer(
      [&](std::vector<std::shared_ptr<detail::write_op>>& ops) {
        std::this_thread::sleep_for(20ms);
        for (auto& op : ops) op->run();
        committed += static_cast<int>(ops.size());
      },
      std::make_shared<spdlog::logger>("test"), 2048, 100);
  int most_ahead = 0;
  for (int i = 1; i <= 6; ++i) {
    auto op = std::make_shared<detail::write_op>();
    op->run = [] {};
    op->weight = 60;  // two do not fit under 100; one alone always goes
    committer.submit(op);
    most_ahead = std::max(most_ahead, i - committed.load());
  }
  committer.barrier();
  EXPECT_EQ(committed.load(), 6);
  EXPECT_LE(most_ahead, 1) << "writes beyond the cap were queued";
}

}  // namespace
}  // namespace hookline
