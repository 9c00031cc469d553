// Embedded durable store in one SQLite file: WAL, group commit, leases, versioned migrations.
#include "stores/sqlite_store.hpp"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string_view>
#include <type_traits>
#include <unordered_map>

#include "hookline/error.hpp"
#include "stores/factories.hpp"
#include "stores/sql_common.hpp"
#include "string_map.hpp"

namespace hookline::detail {
namespace {

using std::chrono::milliseconds;

// Versioned migrations, applied in order inside one transaction at open. Never edit a shipped
// entry: add a new one.
const char* const kMigrations[] = {
    // 1: the outbox, the attempt log, subscription state and statistics.
    R"sql(
CREATE TABLE messages(
  sequence INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  subscription_id TEXT NOT NULL,
  event_id TEXT NOT NULL,
  event_name TEXT NOT NULL,
  url TEXT NOT NULL,
  http_method TEXT NOT NULL,
  body BLOB NOT NULL,
  ordered INTEGER NOT NULL DEFAULT 0,
  status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
  attempts INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  next_attempt_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  last_status INTEGER NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT '',
  lease_owner TEXT,
  lease_until INTEGER);
CREATE INDEX messages_claim ON messages(status, next_attempt_at);
CREATE INDEX messages_head ON messages(subscription_id, status, sequence);
CREATE INDEX messages_created ON messages(created_at);
CREATE INDEX messages_status_updated ON messages(status, updated_at);
CREATE INDEX messages_lease_owner ON messages(lease_owner) WHERE lease_owner IS NOT NULL;
CREATE TABLE attempts(
  id INTEGER PRIMARY KEY,
  message_id TEXT NOT NULL,
  subscription_id TEXT NOT NULL,
  event_id TEXT NOT NULL,
  event_name TEXT NOT NULL,
  url TEXT NOT NULL,
  http_method TEXT NOT NULL,
  attempt INTEGER NOT NULL,
  started_at INTEGER NOT NULL,
  duration_us INTEGER NOT NULL,
  status_code INTEGER NOT NULL,
  error TEXT NOT NULL,
  request_length INTEGER NOT NULL,
  response_length INTEGER NOT NULL,
  response_head TEXT NOT NULL,
  success INTEGER NOT NULL);
CREATE INDEX attempts_message ON attempts(message_id, id);
CREATE INDEX attempts_subscription ON attempts(subscription_id, started_at);
CREATE INDEX attempts_started ON attempts(started_at);
CREATE TABLE subscription_state(
  subscription_id TEXT PRIMARY KEY,
  disabled INTEGER NOT NULL,
  reason TEXT NOT NULL,
  failing_since INTEGER);
CREATE TABLE subscription_stats(
  subscription_id TEXT PRIMARY KEY,
  calls INTEGER NOT NULL DEFAULT 0,
  status_1xx INTEGER NOT NULL DEFAULT 0,
  status_2xx INTEGER NOT NULL DEFAULT 0,
  status_3xx INTEGER NOT NULL DEFAULT 0,
  status_4xx INTEGER NOT NULL DEFAULT 0,
  status_5xx INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0,
  errors INTEGER NOT NULL DEFAULT 0,
  request_bytes INTEGER NOT NULL DEFAULT 0,
  response_bytes INTEGER NOT NULL DEFAULT 0);
)sql",
    // 2: next_due() finds the earliest lease end without scanning every pending message.
    R"sql(
CREATE INDEX messages_lease_until ON messages(lease_until) WHERE lease_until IS NOT NULL;
)sql",
    // 3: fewer, smaller indexes, so a message costs fewer B-tree writes. Pending messages are
    // indexed by when they can next be claimed (a leased one when its lease ends), so a claim
    // never steps over messages in flight; delivered and dead ones only where prune() and
    // recover() look for them; the ordered head check sees only ordered messages.
    R"sql(
DROP INDEX IF EXISTS messages_claim;
DROP INDEX IF EXISTS messages_head;
DROP INDEX IF EXISTS messages_status_updated;
DROP INDEX IF EXISTS messages_lease_owner;
DROP INDEX IF EXISTS messages_lease_until;
CREATE INDEX messages_due ON messages(max(next_attempt_at, coalesce(lease_until, 0)), sequence)
  WHERE status = 'pending';
CREATE INDEX messages_ordered_head ON messages(subscription_id, sequence)
  WHERE status = 'pending' AND ordered = 1;
CREATE INDEX messages_delivered ON messages(updated_at) WHERE status = 'delivered';
CREATE INDEX messages_dead ON messages(subscription_id, created_at) WHERE status = 'dead';
)sql",
    // 4: the same due index, its key written without function calls. SQLite treats a function in
    // an index key as a possible error midway through a statement, so every statement of several
    // rows that wrote the index (the batched message inserts, a claim's leases) kept a statement
    // journal: a copy of each page it changed, spilled to a temporary file past 64 KiB.
    R"sql(
DROP INDEX IF EXISTS messages_due;
CREATE INDEX messages_due ON messages(
  (CASE WHEN lease_until > next_attempt_at THEN lease_until ELSE next_attempt_at END), sequence)
  WHERE status = 'pending';
)sql",
    // 5: a message delivered at its first attempt keeps that attempt in its own row, and the
    // attempt log reads it from there: the common case writes one row update instead of the
    // update, an attempts row and its three index entries. Attempt ids are one sequence over both
    // places (the log's order); a redelivery moves the attempt into the attempts table. The one
    // index carries the subscription so that a query for a rare subscription skips the others
    // without reading their rows (a second index for it cost 10 % of the writer's time).
    R"sql(
ALTER TABLE messages ADD COLUMN first_attempt_id INTEGER;
ALTER TABLE messages ADD COLUMN first_started_at INTEGER;
ALTER TABLE messages ADD COLUMN first_duration_us INTEGER;
ALTER TABLE messages ADD COLUMN first_status_code INTEGER;
ALTER TABLE messages ADD COLUMN first_request_length INTEGER;
ALTER TABLE messages ADD COLUMN first_response_length INTEGER;
ALTER TABLE messages ADD COLUMN first_response_head TEXT;
CREATE INDEX messages_first_attempt ON messages(first_attempt_id, subscription_id)
  WHERE first_attempt_id IS NOT NULL;
)sql",
};
static_assert(std::size(kMigrations) == sqlite_schema_version);

constexpr const char* kMessageColumns =
    "id, sequence, subscription_id, event_id, event_name, url, http_method, body, ordered, "
    "status, attempts, created_at, next_attempt_at, updated_at, last_status, last_error";

constexpr const char* kAttemptColumns =
    "message_id, subscription_id, event_id, event_name, url, http_method, attempt, started_at, "
    "duration_us, status_code, error, request_length, response_length, response_head, success";

// A first attempt kept in its message's row (migration 5), as the columns of kAttemptColumns
// followed by its id, from the messages table.
constexpr const char* kInlineAttemptColumns =
    "id, subscription_id, event_id, event_name, url, http_method, 1, first_started_at, "
    "first_duration_us, first_status_code, '', first_request_length, first_response_length, "
    "first_response_head, 1, first_attempt_id";

/// An attempt for the attempts table, with its id in the log (0: not taken yet).
struct logged_attempt {
  const attempt_record* record;
  std::int64_t id;
};

// An ordered message is claimable only when no earlier ordered message of its subscription is
// pending (as in the memory store; messages made while the subscription was unordered never
// promised an order).
#define ORDERED_HEAD(alias)                                      \
  "AND (" alias                                                  \
  ".ordered = 0 OR NOT EXISTS (SELECT 1 FROM messages p "        \
  "WHERE p.subscription_id = " alias                             \
  ".subscription_id AND p.status = 'pending' AND p.ordered = 1 " \
  "AND p.sequence < " alias ".sequence)) "

#define DUE(a) HOOKLINE_SQLITE_DUE(a)

// Results (delivered or retried messages) the dispatcher may hand over before the store has
// committed the earlier ones: what a crash can send twice beyond the requests in flight. About
// 25 ms of results at 20,000 messages/s, so the cap only holds back a store that falls behind.
constexpr std::size_t kMaxUnrecordedResults = 512;

// Rows deleted per transaction by prune(), so the committer never holds the write lock long.
constexpr int kPruneChunk = 5000;

/// A prepared statement; reset (bindings cleared) when the guard returned by use() goes away.
class statement {
 public:
  statement(sqlite3* db, const std::string& sql, const std::string& where)
      : db_(db), where_(where) {
    if (sqlite3_prepare_v3(db, sql.c_str(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT,
                           &stmt_, nullptr) != SQLITE_OK) {
      throw error(where_ + ": preparing a statement: " + sqlite3_errmsg(db));
    }
  }
  ~statement() { sqlite3_finalize(stmt_); }
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;

  statement& bind(int i, std::int64_t v) {
    check(sqlite3_bind_int64(stmt_, i, v));
    return *this;
  }
  statement& bind(int i, int v) { return bind(i, static_cast<std::int64_t>(v)); }
  statement& bind(int i, std::size_t v) { return bind(i, static_cast<std::int64_t>(v)); }
  statement& bind(int i, bool v) { return bind(i, static_cast<std::int64_t>(v ? 1 : 0)); }
  statement& bind(int i, std::string_view v) {
    check(sqlite3_bind_text64(stmt_, i, v.data(), v.size(), SQLITE_TRANSIENT, SQLITE_UTF8));
    return *this;
  }
  /// Binds without a copy: every caller binds, steps and resets (use_guard) while the string
  /// lives, so SQLite may read it in place. A temporary cannot be bound this way.
  statement& bind(int i, const std::string& v) {
    check(sqlite3_bind_text64(stmt_, i, v.data(), v.size(), SQLITE_STATIC, SQLITE_UTF8));
    return *this;
  }
  statement& bind(int i, std::string&& v) = delete;
  statement& bind(int i, const char* v) { return bind(i, std::string_view(v)); }
  statement& bind_blob(int i, const std::string& v) {
    check(sqlite3_bind_blob64(stmt_, i, v.data(), v.size(), SQLITE_STATIC));
    return *this;
  }
  statement& bind_blob(int i, std::string&& v) = delete;
  statement& bind_null(int i) {
    check(sqlite3_bind_null(stmt_, i));
    return *this;
  }

  /// True when a row is available.
  bool step() {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw error(where_ + ": " + sqlite3_errmsg(db_));
  }
  void run() {
    while (step()) {
    }
  }

  std::int64_t i64(int col) const { return sqlite3_column_int64(stmt_, col); }
  bool is_null(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  std::string str(int col) const {
    const auto* p = static_cast<const char*>(sqlite3_column_blob(stmt_, col));
    const int n = sqlite3_column_bytes(stmt_, col);
    return p ? std::string(p, static_cast<std::size_t>(n)) : std::string();
  }

  void reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

 private:
  void check(int rc) {
    if (rc != SQLITE_OK) throw error(where_ + ": binding a parameter: " + sqlite3_errmsg(db_));
  }
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  const std::string& where_;
};

/// One connection with a statement cache. Not thread safe: the owner serialises access.
class connection {
 public:
  connection(const std::string& path, const std::string& where) : where_(where) {
    const int rc =
        sqlite3_open_v2(path.c_str(), &db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
      sqlite3_close_v2(db_);
      throw error(where_ + ": cannot open: " + msg);
    }
    sqlite3_extended_result_codes(db_, 1);
  }
  ~connection() {
    cache_.clear();
    sqlite3_close_v2(db_);
  }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  void exec(const std::string& sql) {
    char* msg = nullptr;
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &msg) != SQLITE_OK) {
      std::string text = msg ? msg : sqlite3_errmsg(db_);
      sqlite3_free(msg);
      throw error(where_ + ": " + text);
    }
  }

  /// The cached statement for `sql`, reset when the returned guard is destroyed.
  class use_guard {
   public:
    explicit use_guard(statement& s) : s_(s) {}
    ~use_guard() { s_.reset(); }
    use_guard(const use_guard&) = delete;
    use_guard& operator=(const use_guard&) = delete;
    statement* operator->() { return &s_; }
    statement& operator*() { return s_; }

   private:
    statement& s_;
  };
  use_guard use(std::string_view sql) {
    auto it = cache_.find(sql);
    if (it == cache_.end()) {
      std::string key(sql);
      auto stmt = std::make_unique<statement>(db_, key, where_);
      it = cache_.emplace(std::move(key), std::move(stmt)).first;
    }
    return use_guard(*it->second);
  }

  std::int64_t changes() const { return sqlite3_changes64(db_); }
  std::int64_t last_rowid() const { return sqlite3_last_insert_rowid(db_); }
  sqlite3* raw() const { return db_; }

 private:
  sqlite3* db_ = nullptr;
  const std::string& where_;
  // Looked up by the SQL text without building a std::string per call.
  string_map<std::unique_ptr<statement>> cache_;
};

message read_message(statement& s) {
  message m;
  m.id = s.str(0);
  m.sequence = s.i64(1);
  m.subscription_id = s.str(2);
  m.event_id = s.str(3);
  m.event_name = s.str(4);
  m.url = s.str(5);
  m.http_method = s.str(6);
  m.body = s.str(7);
  m.ordered = s.i64(8) != 0;
  m.status = parse_message_status(s.str(9)).value_or(message_status::pending);
  m.attempts = static_cast<int>(s.i64(10));
  m.created_at = from_ns(s.i64(11));
  m.next_attempt_at = from_ns(s.i64(12));
  m.updated_at = from_ns(s.i64(13));
  m.last_status = static_cast<int>(s.i64(14));
  m.last_error = s.str(15);
  return m;
}

attempt_record read_attempt(statement& s) {
  attempt_record a;
  a.message_id = s.str(0);
  a.subscription_id = s.str(1);
  a.event_id = s.str(2);
  a.event_name = s.str(3);
  a.url = s.str(4);
  a.http_method = s.str(5);
  a.attempt = static_cast<int>(s.i64(6));
  a.started_at = from_ns(s.i64(7));
  a.duration = std::chrono::microseconds(s.i64(8));
  a.status_code = static_cast<int>(s.i64(9));
  a.error = s.str(10);
  a.request_length = static_cast<std::size_t>(s.i64(11));
  a.response_length = static_cast<std::size_t>(s.i64(12));
  a.response_head = s.str(13);
  a.success = s.i64(14) != 0;
  return a;
}

/// `sqlite:PATH[?synchronous=full|normal]`: splits the options off the path.
struct sqlite_location {
  std::string path;
  bool sync_full = true;
};

sqlite_location parse_location(const std::string& spec) {
  sqlite_location loc;
  const auto q = spec.find('?');
  loc.path = spec.substr(0, q);
  if (loc.path.empty()) throw error("sqlite store: the file path is empty");
  if (loc.path == ":memory:") {
    throw error("sqlite store: ':memory:' is not a durable file; use the store URI 'memory:'");
  }
  if (q == std::string::npos) return loc;
  std::string_view rest = std::string_view(spec).substr(q + 1);
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    const std::string_view kv = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    const auto eq = kv.find('=');
    const std::string_view key = kv.substr(0, eq);
    const std::string_view value = eq == std::string_view::npos ? "" : kv.substr(eq + 1);
    if (key == "synchronous") {
      if (value == "full") {
        loc.sync_full = true;
      } else if (value == "normal") {
        loc.sync_full = false;
      } else {
        throw error("sqlite store " + loc.path + ": option synchronous: '" + std::string(value) +
                    "' is not 'full' or 'normal'");
      }
    } else {
      throw error("sqlite store " + loc.path + ": unknown option '" + std::string(key) + "'");
    }
  }
  return loc;
}

/// One statement over several rows, prepared for chunks of 16, 4 and 1 rows: every
/// statement run costs SQLite a dozen allocations (its cursors and record buffers), whatever
/// the number of rows it writes.
class multi_row_sql {
 public:
  static constexpr std::size_t kSizes[] = {16, 4, 1};
  /// `head` + "(?F+1, ..., ?F+columns<row_tail>), (...)" + `tail`, where F is `first` (the
  /// parameters before the rows').
  multi_row_sql(const std::string& head, int columns, const std::string& tail, int first = 0,
                const std::string& row_tail = "")
      : columns_(columns), first_(first) {
    for (std::size_t k = 0; k < std::size(kSizes); ++k) {
      std::string sql = head;
      int p = first;
      for (std::size_t r = 0; r < kSizes[k]; ++r) {
        sql += r == 0 ? "(" : ", (";
        for (int c = 0; c < columns; ++c) {
          if (c > 0) sql += ", ";
          sql += "?" + std::to_string(++p);
        }
        sql += row_tail + ")";
      }
      text_[k] = sql + tail;
    }
  }
  /// The largest chunk size that `left` rows fill.
  static std::size_t rows_for(std::size_t left) {
    for (auto k : kSizes)
      if (left >= k) return k;
    return 1;
  }
  const std::string& text(std::size_t rows) const {
    for (std::size_t k = 0; k < std::size(kSizes); ++k)
      if (kSizes[k] == rows) return text_[k];
    return text_[std::size(kSizes) - 1];
  }
  int columns() const { return columns_; }
  int first() const { return first_; }

 private:
  int columns_;
  int first_;
  std::string text_[std::size(kSizes)];
};

class sqlite_store final : public delivery_store {
 public:
  sqlite_store(const std::string& spec, const store_options& options)
      : options_(options), log_(options.logger ? options.logger : store_logger()) {
    const sqlite_location loc = parse_location(spec);
    where_ = "sqlite store " + loc.path;
    sync_full_ = loc.sync_full;
    if (options_.request_timeout <= milliseconds(0)) {
      throw error(where_ + ": request_timeout must be positive");
    }
    take_lock(loc.path);
    // Bodies, URLs (tokens in query strings) and response heads are in the file: a new one is
    // readable by its owner only, and SQLite gives its -wal and -shm files the same mode.
    if (loc.path != ":memory:") {
      const int fd = ::open(loc.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd >= 0) ::close(fd);
    }
    writer_ = std::make_unique<connection>(loc.path, where_);
    configure(*writer_);
    migrate();  // with the checks on: a migration that copies rows is checked
    // The schema's CHECK on messages.status is evaluated, for `IN (...)`, with a temporary
    // table built for every row written: a third of the writer's CPU per message. hookline
    // writes only the three literal statuses, so its writer skips the check (the constraint
    // stays in the schema for every other writer).
    writer_->exec("PRAGMA ignore_check_constraints = ON");
    reader_ = std::make_unique<connection>(loc.path, where_);
    configure(*reader_);
    if (exclusive_at_open_) {
      // Nobody else has the file open, so every lease belongs to a process that is gone.
      writer_->exec(
          "UPDATE messages SET lease_owner = NULL, lease_until = NULL "
          "WHERE status = 'pending' AND lease_owner IS NOT NULL");
      released_at_open_ = true;
    }
    committer_ = std::make_unique<group_committer>(
        [this](std::vector<std::shared_ptr<write_op>>& ops) { run_batch(ops); }, log_, 2048,
        kMaxUnrecordedResults);
    pruner_ = std::make_unique<retention_pruner>(*this, options_.retention, log_);
  }

  ~sqlite_store() override {
    pruner_.reset();
    committer_->stop();
    reader_.reset();
    writer_.reset();
  }

  std::uint64_t commits() const { return committer_->commits(); }
  bool released_at_open() const { return released_at_open_; }

  void enqueue(std::vector<message>& batch) override { insert(batch, nullptr); }

  std::vector<bool> enqueue_claimed(std::vector<message>& batch,
                                    const enqueue_lease& lease) override {
    return insert(batch, &lease);
  }

  // With `lease`, the messages leased_by_publisher() picks are stored as claimed; returns which
  // were (not one whose id was already stored).
  std::vector<bool> insert(std::vector<message>& batch, const enqueue_lease* lease) {
    std::vector<bool> leased;
    if (batch.empty()) return leased;
    check_new_messages(batch, where_);
    write(true, "enqueue", [&] {
      // Chosen afresh when a failed group batch runs this write again on its own.
      if (lease != nullptr) leased = leased_by_publisher(batch, lease->count);
      // The status is a literal: the partial indexes' conditions are then known when the
      // statement is prepared.
      // OR IGNORE rather than ON CONFLICT(id) DO NOTHING: a statement of several rows that could
      // abort (on a NOT NULL column) makes SQLite keep a statement journal, a copy of each page
      // it changes, spilled to a temporary file past 64 KiB. Every value bound here is non-null,
      // so the only conflict it ignores is still an id already stored.
      static const multi_row_sql sql(
          "INSERT OR IGNORE INTO messages(id, subscription_id, event_id, event_name, url, "
          "http_method, body, ordered, attempts, created_at, next_attempt_at, updated_at, "
          "last_status, last_error, lease_owner, lease_until, status) VALUES",
          16, "", 0, ", 'pending'");
      for_each_chunk(
          batch.size(), sql, [](statement&) {},
          [&](statement& s, int b, std::size_t i) {
            auto& m = batch[i];
            m.status = message_status::pending;
            if (m.updated_at == time_point{}) m.updated_at = m.created_at;
            s.bind(b + 1, m.id).bind(b + 2, m.subscription_id).bind(b + 3, m.event_id);
            s.bind(b + 4, m.event_name).bind(b + 5, m.url).bind(b + 6, m.http_method);
            s.bind_blob(b + 7, m.body).bind(b + 8, m.ordered).bind(b + 9, m.attempts);
            s.bind(b + 10, to_ns(m.created_at)).bind(b + 11, to_ns(m.next_attempt_at));
            s.bind(b + 12, to_ns(m.updated_at)).bind(b + 13, m.last_status);
            s.bind(b + 14, m.last_error);
            if (!leased.empty() && leased[i]) {
              s.bind(b + 15, lease->worker_id).bind(b + 16, to_ns(lease->until));
            }  // else both stay NULL (bindings are cleared after every use)
          },
          [&](std::size_t first, std::size_t rows) {
            number_inserted(batch, leased, first, rows);
          });
    });
    return leased;
  }

  // After a multi-row insert of batch[first, first + rows): each message's sequence. Not
  // `RETURNING sequence`: SQLite buffers returned rows in a temporary table. The rows inserted
  // got consecutive rowids ending at the connection's last one; a message whose id was already
  // stored (an enqueue retried by the host) keeps the stored position and is not ours to
  // deliver.
  void number_inserted(std::vector<message>& batch, std::vector<bool>& leased, std::size_t first,
                       std::size_t rows) {
    const std::int64_t inserted = writer_->changes();
    const std::int64_t last = writer_->last_rowid();
    if (inserted == static_cast<std::int64_t>(rows)) {
      for (std::size_t r = 0; r < rows; ++r)
        batch[first + r].sequence = last - static_cast<std::int64_t>(rows - 1 - r);
      return;
    }
    // Rows inserted now have sequences above every row stored before the statement.
    const std::int64_t before = inserted > 0 ? last - inserted : INT64_MAX;
    for (std::size_t r = 0; r < rows; ++r) {
      auto& m = batch[first + r];
      auto q = writer_->use("SELECT sequence FROM messages WHERE id = ?1");
      q->bind(1, m.id);
      m.sequence = q->step() ? q->i64(0) : 0;
      bool ours = m.sequence > before;
      // The same id twice in one statement: only its first row was inserted.
      for (std::size_t e = 0; ours && e < r; ++e)
        if (batch[first + e].sequence == m.sequence) ours = false;
      if (!ours && !leased.empty()) leased[first + r] = false;
    }
  }

  std::vector<message> claim(const claim_request& req) override {
    check_lease(req);
    std::vector<message> out;
    if (req.max == 0) return out;
    write(false, "claim", [&] {
      out.clear();
      // Read the due rows, then lease them one by one by rowid, in the same transaction. Not
      // `UPDATE ... WHERE sequence IN (SELECT ...) RETURNING`: SQLite builds two temporary
      // tables for that (the IN list and the returned rows), each with its own page cache.
      {
        static const std::string pick =
            std::string("SELECT ") + kMessageColumns +
            " FROM messages c WHERE c.status = 'pending' AND " DUE("c") " <= ?1 " ORDERED_HEAD(
                "c") "ORDER BY " DUE("c") ", c.sequence LIMIT ?2";
        auto s = writer_->use(pick);
        s->bind(1, to_ns(req.now)).bind(2, req.max);
        while (s->step()) out.push_back(read_message(*s));
      }
      const std::int64_t until = to_ns(req.now + req.lease);
      static const multi_row_sql lease(
          "UPDATE messages SET lease_owner = ?1, lease_until = ?2 WHERE sequence IN (", 1, ")", 2);
      for_each_chunk(
          out.size(), lease, [&](statement& s) { s.bind(1, req.worker_id).bind(2, until); },
          [&](statement& s, int b, std::size_t i) { s.bind(b + 1, out[i].sequence); },
          [](std::size_t, std::size_t) {});
    });
    std::sort(out.begin(), out.end(), [](const message& a, const message& b) {
      if (a.next_attempt_at != b.next_attempt_at) return a.next_attempt_at < b.next_attempt_at;
      return a.sequence < b.sequence;
    });
    return out;
  }

  void complete(const std::string& id, const attempt_record& a) override {
    post("complete", [this, id, a] { write_complete(id, a); });
  }

  void reschedule(const std::string& id, time_point next, const attempt_record& a) override {
    post("reschedule", [this, id, next, a] { write_reschedule(id, next, a); });
  }

  /// What record_results() writes after its message updates: the attempts to insert and the
  /// statistics per subscription.
  struct result_sink {
    std::vector<logged_attempt> attempts;
    std::map<std::string, stats_delta> stats;
  };

  // One committer operation for the whole batch, its attempts inserted several rows per
  // statement, and one statistics update per subscription. The message updates stay one
  // statement each: `UPDATE ... FROM (VALUES ...)` materialises its rows in a temporary table
  // whose fresh pages cost more (page faults) than the statements it saves.
  void record_results(std::vector<attempt_result>& results) override {
    if (results.empty()) return;
    const std::size_t n = results.size();
    post(
        "record_results",
        [this, batch = std::move(results)] {
          result_sink sink;
          sink.attempts.reserve(batch.size());
          for (const auto& r : batch) {
            if (r.retry_at) {
              write_reschedule(r.message_id, *r.retry_at, r.attempt, &sink, r.worker_id);
            } else {
              write_complete(r.message_id, r.attempt, &sink);
            }
          }
          insert_attempts(sink.attempts);
          for (const auto& [subscription_id, d] : sink.stats) add_stats(subscription_id, d);
        },
        n);
    results.clear();
  }

  void write_complete(const std::string& id, const attempt_record& a, result_sink* sink = nullptr) {
    const std::int64_t attempt_id = take_attempt_id();
    if (a.success && a.attempt == 1 && a.error.empty()) {
      // Its first attempt delivered it: kept in the row, unless the row already has attempts
      // (another worker's), the request went elsewhere than the row says (the subscription's
      // url or method changed since the message was made: the row holds no copy of its own) or
      // the message is gone; then the statements below record it.
      auto s = writer_->use(
          "UPDATE messages SET status = 'delivered', lease_owner = NULL, lease_until = NULL, "
          "attempts = 1, last_status = ?3, last_error = '', updated_at = ?4, "
          "first_attempt_id = ?2, first_started_at = ?5, first_duration_us = ?6, "
          "first_status_code = ?3, first_request_length = ?7, first_response_length = ?8, "
          "first_response_head = ?9 "
          "WHERE id = ?1 AND attempts = 0 AND first_attempt_id IS NULL AND url = ?10 AND "
          "http_method = ?11");
      s->bind(1, id).bind(2, attempt_id).bind(3, a.status_code).bind(4, to_ns(attempt_end(a)));
      s->bind(5, to_ns(a.started_at)).bind(6, static_cast<std::int64_t>(a.duration.count()));
      s->bind(7, a.request_length).bind(8, a.response_length).bind(9, a.response_head);
      s->bind(10, a.url).bind(11, a.http_method);
      s->run();
      if (writer_->changes() > 0) {
        count_in_stats(a, sink);
        return;
      }
    }
    auto s = writer_->use(
        "UPDATE messages SET status = 'delivered', lease_owner = NULL, lease_until = NULL, "
        "attempts = CASE WHEN ?2 > 0 THEN max(attempts, ?2) ELSE attempts + 1 END, "
        "last_status = ?3, last_error = ?4, updated_at = ?5 WHERE id = ?1");
    s->bind(1, id).bind(2, a.attempt).bind(3, a.status_code).bind(4, a.error);
    s->bind(5, to_ns(attempt_end(a)));
    s->run();
    record_if_known(id, a, sink, attempt_id);
  }

  // With a `worker`, only while it holds the lease (the attempt is recorded either way).
  void write_reschedule(const std::string& id, time_point next, const attempt_record& a,
                        result_sink* sink = nullptr, const std::string& worker = {}) {
    const std::int64_t attempt_id = take_attempt_id();  // the log's order is the results'
    auto s = writer_->use(
        "UPDATE messages SET next_attempt_at = ?5, lease_owner = NULL, lease_until = NULL, "
        "attempts = CASE WHEN ?2 > 0 THEN max(attempts, ?2) ELSE attempts + 1 END, "
        "last_status = ?3, last_error = CASE WHEN ?4 = '' THEN 'HTTP ' || ?3 ELSE ?4 END, "
        "updated_at = ?6 WHERE id = ?1 AND status = 'pending' AND "
        "(?7 = '' OR lease_owner = ?7)");
    s->bind(1, id).bind(2, a.attempt).bind(3, a.status_code).bind(4, a.error);
    s->bind(5, to_ns(next)).bind(6, to_ns(attempt_end(a))).bind(7, worker);
    s->run();
    record_if_known(id, a, sink, attempt_id);
  }

  // Right after the UPDATE of message `id`: its attempt is recorded when the message exists
  // (updated, or no longer pending), not for an unknown id (like the other stores).
  // With a sink the attempt is only collected (record_results() inserts them together).
  // `attempt_id`: the id already taken for it (0: take one when it is inserted).
  void record_if_known(const std::string& id, const attempt_record& a, result_sink* sink = nullptr,
                       std::int64_t attempt_id = 0) {
    if (writer_->changes() == 0) {
      auto q = writer_->use("SELECT 1 FROM messages WHERE id = ?1");
      q->bind(1, id);
      if (!q->step()) return;
    }
    if (sink != nullptr) {
      sink->attempts.push_back({&a, attempt_id});
    } else {
      const logged_attempt one[] = {{&a, attempt_id}};
      insert_attempts(one);
    }
    count_in_stats(a, sink);
  }

  // Adds the attempt to its subscription's statistics: collected in `sink` (record_results()
  // writes them once per subscription), or written now.
  void count_in_stats(const attempt_record& a, result_sink* sink) {
    if (sink != nullptr) {
      sink->stats[a.subscription_id].add(a);
      return;
    }
    stats_delta d;
    d.add(a);
    add_stats(a.subscription_id, d);
  }

  void dead_letter(const std::string& id, const std::string& reason,
                   const attempt_record* a) override {
    post_dead_letter(id, {}, reason, a);
  }

  void dead_letter_if_held(const std::string& id, const std::string& worker_id,
                           const std::string& reason, const attempt_record* a) override {
    post_dead_letter(id, worker_id, reason, a);
  }

  // With a `worker`, only while it holds the lease (the attempt is recorded either way).
  void post_dead_letter(const std::string& id, const std::string& worker, const std::string& reason,
                        const attempt_record* a) {
    std::optional<attempt_record> copy;
    if (a) copy = *a;
    post("dead_letter", [this, id, worker, reason, copy] {
      auto s = writer_->use(
          "UPDATE messages SET status = 'dead', lease_owner = NULL, lease_until = NULL, "
          "attempts = CASE WHEN ?2 IS NULL THEN attempts WHEN ?2 > 0 THEN max(attempts, ?2) "
          "ELSE attempts + 1 END, last_status = coalesce(?3, last_status), last_error = ?4, "
          "updated_at = ?5 WHERE id = ?1 AND status = 'pending' AND "
          "(?6 = '' OR lease_owner = ?6)");
      s->bind(1, id).bind(4, reason).bind(6, worker);
      if (copy) {
        s->bind(2, copy->attempt).bind(3, copy->status_code).bind(5, to_ns(attempt_end(*copy)));
      } else {
        s->bind_null(2).bind_null(3).bind(5, to_ns(std::chrono::system_clock::now()));
      }
      s->run();
      if (copy) record_if_known(id, *copy);
    });
  }

  void release(const std::string& id, time_point next) override { post_release(id, next, {}); }

  void release_if_held(const std::string& id, const std::string& worker_id,
                       time_point next) override {
    post_release(id, next, worker_id);
  }

  // Without `worker`, whoever holds the lease; with it, only that worker's.
  void post_release(const std::string& id, time_point next, std::optional<std::string> worker) {
    post("release", [this, id, next, worker = std::move(worker)] {
      auto s = writer_->use(
          worker ? "UPDATE messages SET next_attempt_at = ?2, lease_owner = NULL, "
                   "lease_until = NULL WHERE id = ?1 AND status = 'pending' AND lease_owner = ?3"
                 : "UPDATE messages SET next_attempt_at = ?2, lease_owner = NULL, "
                   "lease_until = NULL WHERE id = ?1 AND status = 'pending'");
      s->bind(1, id).bind(2, to_ns(next));
      if (worker) s->bind(3, *worker);
      s->run();
    });
  }

  std::size_t release_worker(const std::string& worker_id) override {
    std::size_t n = 0;
    write(false, "release_worker", [&] {
      auto s = writer_->use(
          "UPDATE messages SET lease_owner = NULL, lease_until = NULL "
          "WHERE status = 'pending' AND lease_owner = ?1");
      s->bind(1, worker_id);
      s->run();
      n = static_cast<std::size_t>(writer_->changes());
    });
    return n;
  }

  bool redeliver(const std::string& id, time_point now) override {
    bool found = false;
    write(true, "redeliver", [&] {
      // A replay starts a fresh retry schedule; the attempt log keeps the history: a first
      // attempt kept in the row moves to the attempts table (with its id, so its place in the
      // log stays), leaving the row free for the next first attempt.
      auto m = writer_->use(std::string("INSERT INTO attempts(") + kAttemptColumns +
                            ", id) SELECT " + kInlineAttemptColumns +
                            " FROM messages WHERE id = ?1 AND status <> 'pending' AND "
                            "first_attempt_id IS NOT NULL");
      m->bind(1, id);
      m->run();
      auto s = writer_->use(
          "UPDATE messages SET status = 'pending', next_attempt_at = ?2, updated_at = ?2, "
          "attempts = 0, lease_owner = NULL, lease_until = NULL, first_attempt_id = NULL "
          "WHERE id = ?1 AND status <> 'pending'");
      s->bind(1, id).bind(2, to_ns(now));
      s->run();
      if (writer_->changes() > 0) {
        found = true;
        return;
      }
      // Already pending: make it due now unless a worker holds it.
      auto q = writer_->use(
          "UPDATE messages SET next_attempt_at = ?2 WHERE id = ?1 AND status = 'pending' "
          "AND (lease_until IS NULL OR lease_until <= ?2)");
      q->bind(1, id).bind(2, to_ns(now));
      q->run();
      auto e = writer_->use("SELECT 1 FROM messages WHERE id = ?1");
      e->bind(1, id);
      found = e->step();
    });
    return found;
  }

  std::size_t recover(const std::string& subscription_id, time_point since,
                      time_point now) override {
    std::size_t n = 0;
    write(true, "recover", [&] {
      auto s = writer_->use(
          "UPDATE messages SET status = 'pending', next_attempt_at = ?3, updated_at = ?3, "
          "attempts = 0, lease_owner = NULL, lease_until = NULL "
          "WHERE subscription_id = ?1 AND status = 'dead' AND created_at >= ?2");
      s->bind(1, subscription_id).bind(2, to_ns(since)).bind(3, to_ns(now));
      s->run();
      n = static_cast<std::size_t>(writer_->changes());
    });
    return n;
  }

  std::optional<message> get(const std::string& id) override {
    return read([&]() -> std::optional<message> {
      auto s =
          reader_->use(std::string("SELECT ") + kMessageColumns + " FROM messages WHERE id = ?1");
      s->bind(1, id);
      if (!s->step()) return std::nullopt;
      return read_message(*s);
    });
  }

  std::vector<message> query(const message_query& q) override {
    return read([&] {
      std::string sql = std::string("SELECT ") + kMessageColumns + " FROM messages WHERE 1 = 1";
      // The status as a literal: the partial indexes serve only a query that names it.
      if (q.status) sql += " AND status = '" + std::string(to_string(*q.status)) + "'";
      if (q.subscription_id) sql += " AND subscription_id = ?2";
      if (q.since) sql += " AND created_at >= ?3";
      sql += " ORDER BY sequence LIMIT ?4";
      auto s = reader_->use(sql);
      if (q.subscription_id) s->bind(2, *q.subscription_id);
      if (q.since) s->bind(3, to_ns(*q.since));
      s->bind(4, limit(q.limit));
      std::vector<message> out;
      while (s->step()) out.push_back(read_message(*s));
      return out;
    });
  }

  std::vector<attempt_record> attempts(const attempt_query& q) override {
    return read([&] {
      // The attempts table and the first attempts kept in message rows, merged by id: the
      // most recent `limit` matches, oldest first.
      std::string sql = std::string("SELECT ") + kAttemptColumns + ", id FROM attempts WHERE 1 = 1";
      if (q.message_id) sql += " AND message_id = ?1";
      if (q.subscription_id) sql += " AND subscription_id = ?2";
      if (q.since) sql += " AND started_at >= ?3";
      sql += std::string(" UNION ALL SELECT ") + kInlineAttemptColumns +
             " FROM messages WHERE first_attempt_id IS NOT NULL";
      if (q.message_id) sql += " AND id = ?1";
      if (q.subscription_id) sql += " AND subscription_id = ?2";
      if (q.since) sql += " AND first_started_at >= ?3";
      sql += " ORDER BY 16 DESC LIMIT ?4";
      auto s = reader_->use(sql);
      if (q.message_id) s->bind(1, *q.message_id);
      if (q.subscription_id) s->bind(2, *q.subscription_id);
      if (q.since) s->bind(3, to_ns(*q.since));
      s->bind(4, limit(q.limit));
      std::vector<attempt_record> out;
      while (s->step()) out.push_back(read_attempt(*s));
      std::reverse(out.begin(), out.end());
      return out;
    });
  }

  std::size_t count_pending(time_point /*now*/) override {
    return read([&] {
      // Through the partial index of pending messages only.
      auto s = reader_->use("SELECT count(*) FROM messages WHERE status = 'pending'");
      return s->step() ? static_cast<std::size_t>(s->i64(0)) : std::size_t{0};
    });
  }

  store_counts counts(time_point now) override {
    return read([&] {
      store_counts c;
      auto s = reader_->use(
          "SELECT (SELECT count(*) FROM messages WHERE status = 'pending'), "
          "(SELECT count(*) FROM messages WHERE status = 'delivered'), "
          "(SELECT count(*) FROM messages WHERE status = 'dead'), "
          "(SELECT count(*) FROM messages WHERE status = 'pending' AND lease_until > ?1)");
      s->bind(1, to_ns(now));
      if (s->step()) {
        c.pending = static_cast<std::size_t>(s->i64(0));
        c.delivered = static_cast<std::size_t>(s->i64(1));
        c.dead = static_cast<std::size_t>(s->i64(2));
        c.in_flight = static_cast<std::size_t>(s->i64(3));
      }
      return c;
    });
  }

  subscription_stats stats(const std::string& subscription_id) override {
    return read([&] {
      subscription_stats st;
      auto s = reader_->use(
          "SELECT calls, status_1xx, status_2xx, status_3xx, status_4xx, status_5xx, failures, "
          "errors, request_bytes, response_bytes FROM subscription_stats "
          "WHERE subscription_id = ?1");
      s->bind(1, subscription_id);
      if (s->step()) {
        auto z = [&](int c) { return static_cast<std::size_t>(s->i64(c)); };
        st.calls = z(0);
        st.status_1xx = z(1);
        st.status_2xx = z(2);
        st.status_3xx = z(3);
        st.status_4xx = z(4);
        st.status_5xx = z(5);
        st.failures = z(6);
        st.errors = z(7);
        st.request_bytes = static_cast<std::uint64_t>(s->i64(8));
        st.response_bytes = static_cast<std::uint64_t>(s->i64(9));
      }
      return st;
    });
  }

  // The earliest time a pending message can be claimed (an ordered one only at the head of its
  // subscription): when it is due, or when its lease runs out. One step into messages_due.
  std::optional<time_point> next_due(time_point /*now*/) override {
    return read([&]() -> std::optional<time_point> {
      auto s = reader_->use(
          "SELECT " DUE("c") " FROM messages c WHERE c.status = 'pending' " ORDERED_HEAD(
              "c") "ORDER BY " DUE("c") ", c.sequence LIMIT 1");
      if (!s->step()) return std::nullopt;
      return from_ns(s->i64(0));
    });
  }

  void save_state(const subscription_state& st) override {
    if (st.subscription_id.empty()) throw error(where_ + ": save_state: subscription_id is empty");
    write(true, "save_state", [&] {
      auto s = writer_->use(
          "INSERT INTO subscription_state(subscription_id, disabled, reason, failing_since) "
          "VALUES(?1, ?2, ?3, ?4) ON CONFLICT(subscription_id) DO UPDATE SET "
          "disabled = excluded.disabled, reason = excluded.reason, "
          "failing_since = excluded.failing_since");
      s->bind(1, st.subscription_id).bind(2, st.disabled).bind(3, st.reason);
      if (st.failing_since) {
        s->bind(4, to_ns(*st.failing_since));
      } else {
        s->bind_null(4);
      }
      s->run();
    });
  }

  std::vector<subscription_state> load_states() override {
    return read([&] {
      std::vector<subscription_state> out;
      auto s = reader_->use(
          "SELECT subscription_id, disabled, reason, failing_since FROM subscription_state "
          "ORDER BY subscription_id");
      while (s->step()) {
        subscription_state st;
        st.subscription_id = s->str(0);
        st.disabled = s->i64(1) != 0;
        st.reason = s->str(2);
        if (!s->is_null(3)) st.failing_since = from_ns(s->i64(3));
        out.push_back(std::move(st));
      }
      return out;
    });
  }

  std::size_t prune(time_point before) override {
    std::size_t total = 0;
    const std::int64_t cut = to_ns(before);
    // Delivered messages first, with any first attempt kept in their rows (counted as an
    // attempt pruned, as it would be from the attempts table), then old attempts.
    for (const char* sql :
         {"DELETE FROM messages WHERE sequence IN (SELECT sequence FROM messages "
          "WHERE status = 'delivered' AND updated_at < ?1 LIMIT ?2) "
          "RETURNING first_attempt_id IS NOT NULL",
          "DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE started_at < ?1 "
          "LIMIT ?2) RETURNING 0"}) {
      for (;;) {
        std::int64_t n = 0, inline_attempts = 0;
        write(false, "prune", [&] {
          n = inline_attempts = 0;  // a failed group batch runs this write again on its own
          auto s = writer_->use(sql);
          s->bind(1, cut).bind(2, kPruneChunk);
          while (s->step()) {
            ++n;
            inline_attempts += s->i64(0);
          }
        });
        total += static_cast<std::size_t>(n + inline_attempts);
        if (n < kPruneChunk) break;
      }
    }
    return total;
  }

 private:
  void configure(connection& c) {
    sqlite3_busy_timeout(c.raw(), 10000);
    c.exec("PRAGMA journal_mode = WAL");
    c.exec(sync_full_ ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
    c.exec("PRAGMA foreign_keys = OFF");
    current_sync_full_ = sync_full_;
  }

  void migrate() {
    writer_->exec("BEGIN IMMEDIATE");
    try {
      writer_->exec(
          "CREATE TABLE IF NOT EXISTS schema_version(version INTEGER PRIMARY KEY, "
          "applied_at INTEGER NOT NULL)");
      std::int64_t current = 0;
      {
        auto s = writer_->use("SELECT coalesce(max(version), 0) FROM schema_version");
        if (s->step()) current = s->i64(0);
      }
      if (current > sqlite_schema_version) {
        throw error(where_ + ": schema version " + std::to_string(current) +
                    " is newer than this hookline understands (" +
                    std::to_string(sqlite_schema_version) + ")");
      }
      for (auto v = current + 1; v <= sqlite_schema_version; ++v) {
        writer_->exec(kMigrations[v - 1]);
        auto s = writer_->use("INSERT INTO schema_version(version, applied_at) VALUES(?1, ?2)");
        s->bind(1, v).bind(2, to_ns(std::chrono::system_clock::now()));
        s->run();
      }
      writer_->exec("COMMIT");
    } catch (...) {
      sqlite3_exec(writer_->raw(), "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
  }

  // A shared flock on PATH.lock marks "this file is in use" for as long as the store is open; the
  // kernel drops it when the process dies, however it dies. Whoever gets it exclusively at open
  // knows no other process uses the file.
  void take_lock(const std::string& path) {
    const std::string lock_path = path + ".lock";
    lock_.fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_.fd < 0) {
      throw error(where_ + ": cannot open lock file " + lock_path + ": " + std::strerror(errno));
    }
    if (::flock(lock_.fd, LOCK_EX | LOCK_NB) == 0) {
      exclusive_at_open_ = true;
    }
    // Downgrade (or wait briefly for another process finishing its own open).
    for (int i = 0; i < 500; ++i) {
      if (::flock(lock_.fd, LOCK_SH | LOCK_NB) == 0) return;
      if (errno != EWOULDBLOCK && errno != EINTR) break;
      std::this_thread::sleep_for(milliseconds(10));
    }
    log_->warn(
        "{}: could not take a shared lock on {}; leases left by a crashed process "
        "will only be released when they expire",
        where_, lock_path);
    exclusive_at_open_ = false;
  }

  void check_lease(const claim_request& req) const {
    if (req.lease <= options_.request_timeout) {
      throw error(where_ + ": claim: lease of " + std::to_string(req.lease.count()) +
                  " ms must be longer than the request timeout of " +
                  std::to_string(options_.request_timeout.count()) + " ms");
    }
  }

  static std::int64_t limit(std::size_t n) {
    return n == 0 ? -1 : static_cast<std::int64_t>(std::min<std::size_t>(n, INT64_MAX));
  }

  template <class F>
  void write(bool durable, const char* what, F&& f) {
    auto op = std::make_shared<write_op>();
    op->run = std::forward<F>(f);
    op->durable = durable;
    op->what = what;
    committer_->submit_and_wait(std::move(op));
  }

  template <class F>
  void post(const char* what, F&& f, std::size_t weight = 1) {
    auto op = std::make_shared<write_op>();
    op->run = std::forward<F>(f);
    op->what = what;
    op->weight = weight;
    committer_->submit(std::move(op));
  }

  template <class F>
  std::invoke_result_t<F&> read(F&& f) {
    committer_->barrier();
    std::lock_guard lock(reader_mutex_);
    struct end_read {
      connection& c;
      ~end_read() { sqlite3_exec(c.raw(), "COMMIT", nullptr, nullptr, nullptr); }
    };
    // One read transaction so multi-statement reads see one snapshot.
    reader_->exec("BEGIN");
    end_read guard{*reader_};
    return f();
  }

  // Inserts the attempts in order, up to 16 rows per statement, each with its id (taken now
  // for those that have none yet).
  void insert_attempts(std::span<const logged_attempt> all) {
    static const multi_row_sql sql(
        // OR IGNORE so that the statement cannot abort and keeps no statement journal (see
        // insert()): every column is bound non-null, so the only row it could ignore is one whose
        // id is taken, which the check below turns into a failed batch (run again with ids read
        // afresh) rather than a lost attempt.
        std::string("INSERT OR IGNORE INTO attempts(") + kAttemptColumns + ", id) VALUES", 16, "");
    for_each_chunk(
        all.size(), sql, [](statement&) {},
        [&](statement& s, int base, std::size_t i) {
          const attempt_record& a = *all[i].record;
          s.bind(base + 1, a.message_id).bind(base + 2, a.subscription_id);
          s.bind(base + 3, a.event_id).bind(base + 4, a.event_name).bind(base + 5, a.url);
          s.bind(base + 6, a.http_method).bind(base + 7, a.attempt);
          s.bind(base + 8, to_ns(a.started_at));
          s.bind(base + 9, static_cast<std::int64_t>(a.duration.count()));
          s.bind(base + 10, a.status_code).bind(base + 11, a.error);
          s.bind(base + 12, a.request_length).bind(base + 13, a.response_length);
          s.bind(base + 14, a.response_head).bind(base + 15, a.success);
          s.bind(base + 16, all[i].id != 0 ? all[i].id : take_attempt_id());
        },
        [&](std::size_t, std::size_t rows) {
          if (writer_->changes() != static_cast<std::int64_t>(rows)) {
            throw error(where_ + ": attempt log: an attempt id was already taken");
          }
        });
  }

  // The next id of the attempt log, one sequence over the attempts table and the first
  // attempts kept in message rows. Read once per transaction (the writer holds the write lock,
  // so no other process takes ids meanwhile), then counted here.
  std::int64_t take_attempt_id() {
    if (next_attempt_id_ == 0) {
      auto s = writer_->use(
          "SELECT max(coalesce((SELECT max(id) FROM attempts), 0), "
          "coalesce((SELECT max(first_attempt_id) FROM messages "
          "WHERE first_attempt_id IS NOT NULL), 0)) + 1");
      next_attempt_id_ = s->step() ? s->i64(0) : 1;
    }
    return next_attempt_id_++;
  }

  // Runs `sql` for rows [0, n): as many full chunks as fit, then smaller ones. shared(s) binds
  // the parameters before the rows'; bind_row(s, base, i) binds row i's as ?base+1.. ;
  // after(chunk_start, chunk_rows) runs after each statement (while changes() is its count).
  template <class Shared, class BindRow, class After>
  void for_each_chunk(std::size_t n, const multi_row_sql& sql, Shared&& shared, BindRow&& bind_row,
                      After&& after) {
    std::size_t i = 0;
    while (i < n) {
      const std::size_t rows = multi_row_sql::rows_for(n - i);
      auto s = writer_->use(sql.text(rows));
      shared(*s);
      for (std::size_t r = 0; r < rows; ++r)
        bind_row(*s, sql.first() + static_cast<int>(r) * sql.columns(), i + r);
      s->run();
      after(i, rows);
      i += rows;
    }
  }
  template <class BindRow>
  void for_each_chunk(std::size_t n, const multi_row_sql& sql, BindRow&& bind_row) {
    for_each_chunk(
        n, sql, [](statement&) {}, std::forward<BindRow>(bind_row),
        [](std::size_t, std::size_t) {});
  }

  void add_stats(const std::string& subscription_id, const stats_delta& d) {
    auto s = writer_->use(
        "INSERT INTO subscription_stats(subscription_id, calls, status_1xx, status_2xx, "
        "status_3xx, status_4xx, status_5xx, failures, errors, request_bytes, response_bytes) "
        "VALUES(?1, ?11, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(subscription_id) DO "
        "UPDATE SET calls = calls + excluded.calls, status_1xx = status_1xx + excluded.status_1xx, "
        "status_2xx = status_2xx + excluded.status_2xx, "
        "status_3xx = status_3xx + excluded.status_3xx, "
        "status_4xx = status_4xx + excluded.status_4xx, "
        "status_5xx = status_5xx + excluded.status_5xx, "
        "failures = failures + excluded.failures, errors = errors + excluded.errors, "
        "request_bytes = request_bytes + excluded.request_bytes, "
        "response_bytes = response_bytes + excluded.response_bytes");
    s->bind(1, subscription_id).bind(2, d.s1).bind(3, d.s2).bind(4, d.s3).bind(5, d.s4);
    s->bind(6, d.s5).bind(7, d.failures).bind(8, d.errors);
    s->bind(9, d.request_bytes).bind(10, d.response_bytes).bind(11, d.calls);
    s->run();
  }

  // Runs on the committer thread. Writes that do not need to be durable (claims, completions)
  // commit without an fsync: in WAL mode such a commit survives a process crash, and the next
  // durable commit's fsync makes every earlier one durable too because the WAL is sequential.
  // Power loss can undo only such non-durable writes, which means a redelivery, never a loss.
  void run_batch(std::vector<std::shared_ptr<write_op>>& ops) {
    const bool durable =
        sync_full_ && std::any_of(ops.begin(), ops.end(), [](auto& o) { return o->durable; });
    if (durable != current_sync_full_) {
      writer_->use(durable ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL")->run();
      current_sync_full_ = durable;
    }
    try {
      transaction(ops);
    } catch (...) {
      if (ops.size() == 1) throw;
      // Isolate the failing write: the others still commit, each in its own transaction.
      for (auto& op : ops) {
        std::vector<std::shared_ptr<write_op>> one{op};
        try {
          transaction(one);
        } catch (...) {
          op->error = std::current_exception();
        }
      }
    }
  }

  void transaction(std::vector<std::shared_ptr<write_op>>& ops) {
    // Prepared once, like every other statement: sqlite3_exec would parse them per batch.
    writer_->use("BEGIN IMMEDIATE")->run();
    next_attempt_id_ = 0;  // read again inside this transaction
    try {
      for (auto& op : ops) op->run();
      writer_->use("COMMIT")->run();
    } catch (...) {
      sqlite3_exec(writer_->raw(), "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
  }

  store_options options_;
  std::shared_ptr<spdlog::logger> log_;
  std::string where_;
  bool sync_full_ = true;
  bool current_sync_full_ = true;
  struct fd_guard {
    int fd = -1;
    ~fd_guard() {
      if (fd >= 0) ::close(fd);  // drops the flock
    }
  } lock_;
  std::int64_t next_attempt_id_ = 0;  // committer thread; 0: not read in this transaction
  bool exclusive_at_open_ = false;
  bool released_at_open_ = false;
  std::unique_ptr<connection> writer_;  // used only by the committer thread after open
  std::unique_ptr<connection> reader_;
  std::mutex reader_mutex_;
  std::unique_ptr<group_committer> committer_;
  std::unique_ptr<retention_pruner> pruner_;
};

}  // namespace

std::uint64_t sqlite_store_commits(const delivery_store& store) {
  const auto* s = dynamic_cast<const sqlite_store*>(&store);
  if (!s) throw error("sqlite_store_commits: not an SQLite store");
  return s->commits();
}

bool sqlite_store_released_stale_leases(const delivery_store& store) {
  const auto* s = dynamic_cast<const sqlite_store*>(&store);
  if (!s) throw error("sqlite_store_released_stale_leases: not an SQLite store");
  return s->released_at_open();
}

std::shared_ptr<delivery_store> make_sqlite_store(const std::string& path,
                                                  const store_options& options) {
  return std::make_shared<sqlite_store>(path, options);
}

}  // namespace hookline::detail
