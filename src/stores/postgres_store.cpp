// Shared outbox for many workers on many machines: claims with FOR UPDATE SKIP LOCKED and leases,
// LISTEN/NOTIFY wake-ups, reconnect with backoff, idempotent retries.
#include "stores/postgres_store.hpp"

#include "hookline/json.hpp"

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "hookline/error.hpp"
#include "hookline/stores/postgres_subscriptions.hpp"
#include "stores/factories.hpp"
#include "stores/sql_common.hpp"

namespace hookline::detail {
namespace {

using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

// How long one call keeps reconnecting and retrying before it gives up with an error.
constexpr auto kRetryBudget = std::chrono::seconds(30);
constexpr auto kBackoffStart = milliseconds(50);
constexpr auto kBackoffMax = milliseconds(2000);
constexpr std::size_t kPoolSize = 4;
constexpr std::size_t kInsertChunk = 500;  // rows per INSERT (14 parameters each)
constexpr int kPruneChunk = 5000;

const char* const kMigrations[] = {
    // 1: the outbox, the attempt log, subscription state, statistics and the shared registry.
    R"sql(
CREATE TABLE messages(
  id TEXT PRIMARY KEY,
  sequence BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
  subscription_id TEXT NOT NULL,
  event_id TEXT NOT NULL,
  event_name TEXT NOT NULL,
  url TEXT NOT NULL,
  http_method TEXT NOT NULL,
  body BYTEA NOT NULL,
  ordered BOOLEAN NOT NULL DEFAULT false,
  status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
  attempts INTEGER NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  next_attempt_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  last_status INTEGER NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT '',
  lease_owner TEXT,
  lease_until BIGINT);
CREATE INDEX messages_claim ON messages(status, next_attempt_at);
CREATE INDEX messages_head ON messages(subscription_id, status, sequence);
CREATE INDEX messages_created ON messages(created_at);
CREATE INDEX messages_status_updated ON messages(status, updated_at);
CREATE INDEX messages_lease_owner ON messages(lease_owner) WHERE lease_owner IS NOT NULL;
CREATE TABLE attempts(
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  attempt_key TEXT NOT NULL UNIQUE,
  message_id TEXT NOT NULL,
  subscription_id TEXT NOT NULL,
  event_id TEXT NOT NULL,
  event_name TEXT NOT NULL,
  url TEXT NOT NULL,
  http_method TEXT NOT NULL,
  attempt INTEGER NOT NULL,
  started_at BIGINT NOT NULL,
  duration_us BIGINT NOT NULL,
  status_code INTEGER NOT NULL,
  error TEXT NOT NULL,
  request_length BIGINT NOT NULL,
  response_length BIGINT NOT NULL,
  response_head TEXT NOT NULL,
  success BOOLEAN NOT NULL);
CREATE INDEX attempts_message ON attempts(message_id, id);
CREATE INDEX attempts_subscription ON attempts(subscription_id, started_at);
CREATE INDEX attempts_started ON attempts(started_at);
CREATE TABLE subscription_state(
  subscription_id TEXT PRIMARY KEY,
  disabled BOOLEAN NOT NULL,
  reason TEXT NOT NULL,
  failing_since BIGINT);
CREATE TABLE subscription_stats(
  subscription_id TEXT PRIMARY KEY,
  calls BIGINT NOT NULL DEFAULT 0,
  status_1xx BIGINT NOT NULL DEFAULT 0,
  status_2xx BIGINT NOT NULL DEFAULT 0,
  status_3xx BIGINT NOT NULL DEFAULT 0,
  status_4xx BIGINT NOT NULL DEFAULT 0,
  status_5xx BIGINT NOT NULL DEFAULT 0,
  failures BIGINT NOT NULL DEFAULT 0,
  errors BIGINT NOT NULL DEFAULT 0,
  request_bytes BIGINT NOT NULL DEFAULT 0,
  response_bytes BIGINT NOT NULL DEFAULT 0);
CREATE TABLE subscriptions(
  id TEXT PRIMARY KEY,
  json TEXT NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
)sql",
    // 2: next_due() finds the earliest lease end without scanning every pending message.
    R"sql(
CREATE INDEX messages_lease_until ON messages(lease_until) WHERE lease_until IS NOT NULL;
)sql",
    // 3: the ordered-head check looks only at pending ordered messages (as the other stores do)
    // through an index that holds nothing else.
    R"sql(
CREATE INDEX messages_ordered_head ON messages(subscription_id, sequence)
  WHERE ordered AND status = 'pending';
)sql",
};
static_assert(std::size(kMigrations) == postgres_schema_version);

constexpr const char* kMessageColumns =
    "id, sequence, subscription_id, event_id, event_name, url, http_method, body, ordered, "
    "status, attempts, created_at, next_attempt_at, updated_at, last_status, last_error";

constexpr const char* kAttemptColumns =
    "message_id, subscription_id, event_id, event_name, url, http_method, attempt, started_at, "
    "duration_us, status_code, error, request_length, response_length, response_head, success";

// An ordered message is claimable only when no earlier ordered message of its subscription is
// pending (as in the other stores), found in messages_ordered_head.
#define HOOKLINE_ORDERED_HEAD(alias)                         \
  "AND (NOT " alias                                          \
  ".ordered OR NOT EXISTS (SELECT 1 FROM messages p "        \
  "WHERE p.subscription_id = " alias                         \
  ".subscription_id AND p.ordered AND p.status = 'pending' " \
  "AND p.sequence < " alias ".sequence)) "

// Inserts the attempt ($1 key, $2..$16 fields) of a known message ($18) unless a retried batch
// already did, and adds it to the subscription's counters only when it was inserted: retries
// never count twice.
constexpr const char* kAttemptCte =
    "WITH a AS (INSERT INTO attempts(attempt_key, message_id, subscription_id, event_id, "
    "event_name, url, http_method, attempt, started_at, duration_us, status_code, error, "
    "request_length, response_length, response_head, success) SELECT $1, $2, $3, $4, $5, $6, "
    "$7, $8::int, $9::bigint, $10::bigint, $11::int, $12, $13::bigint, $14::bigint, $15, "
    "$16::boolean WHERE EXISTS (SELECT 1 FROM messages WHERE id = $18) "
    "ON CONFLICT (attempt_key) DO NOTHING RETURNING subscription_id, "
    "status_code, success, request_length, response_length), "
    "s AS (INSERT INTO subscription_stats AS t(subscription_id, calls, status_1xx, status_2xx, "
    "status_3xx, status_4xx, status_5xx, failures, errors, request_bytes, response_bytes) "
    "SELECT subscription_id, 1, (status_code BETWEEN 100 AND 199)::int, "
    "(status_code BETWEEN 200 AND 299)::int, (status_code BETWEEN 300 AND 399)::int, "
    "(status_code BETWEEN 400 AND 499)::int, (status_code BETWEEN 500 AND 599)::int, "
    "(NOT success)::int, (status_code = 0)::int, request_length, response_length FROM a "
    "ON CONFLICT (subscription_id) DO UPDATE SET calls = t.calls + 1, "
    "status_1xx = t.status_1xx + excluded.status_1xx, "
    "status_2xx = t.status_2xx + excluded.status_2xx, "
    "status_3xx = t.status_3xx + excluded.status_3xx, "
    "status_4xx = t.status_4xx + excluded.status_4xx, "
    "status_5xx = t.status_5xx + excluded.status_5xx, failures = t.failures + excluded.failures, "
    "errors = t.errors + excluded.errors, "
    "request_bytes = t.request_bytes + excluded.request_bytes, "
    "response_bytes = t.response_bytes + excluded.response_bytes) ";

/// The connection went away or the server asked us to retry: reconnect and run the call again.
class transient_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Query parameters, all sent as text except binary ones (bytea).
class params {
 public:
  params& add(std::string v) {
    values_.push_back(std::move(v));
    nulls_.push_back(false);
    formats_.push_back(0);
    return *this;
  }
  params& add(std::string_view v) { return add(std::string(v)); }
  params& add(const char* v) { return add(std::string(v)); }
  params& add(std::int64_t v) { return add(std::to_string(v)); }
  params& add(int v) { return add(std::to_string(v)); }
  params& add(std::size_t v) { return add(std::to_string(v)); }
  params& add(bool v) { return add(std::string(v ? "true" : "false")); }
  params& add_binary(std::string v) {
    add(std::move(v));
    formats_.back() = 1;
    return *this;
  }
  params& add_null() {
    values_.emplace_back();
    nulls_.push_back(true);
    formats_.push_back(0);
    return *this;
  }
  int size() const { return static_cast<int>(values_.size()); }
  void pointers(std::vector<const char*>& v, std::vector<int>& lengths) const {
    v.resize(values_.size());
    lengths.resize(values_.size());
    for (std::size_t i = 0; i < values_.size(); ++i) {
      v[i] = nulls_[i] ? nullptr : values_[i].data();
      lengths[i] = static_cast<int>(values_[i].size());
    }
  }
  const int* formats() const { return formats_.data(); }

 private:
  std::vector<std::string> values_;
  std::vector<bool> nulls_;
  std::vector<int> formats_;
};

class result {
 public:
  explicit result(PGresult* r) : r_(r) {}
  ~result() { PQclear(r_); }
  result(result&& o) noexcept : r_(std::exchange(o.r_, nullptr)) {}
  result(const result&) = delete;
  result& operator=(const result&) = delete;
  int rows() const { return PQntuples(r_); }
  bool is_null(int row, int col) const { return PQgetisnull(r_, row, col) != 0; }
  std::string str(int row, int col) const {
    return std::string(PQgetvalue(r_, row, col),
                       static_cast<std::size_t>(PQgetlength(r_, row, col)));
  }
  std::int64_t i64(int row, int col) const {
    return is_null(row, col) ? 0 : std::stoll(PQgetvalue(r_, row, col));
  }
  /// Rows an INSERT/UPDATE/DELETE touched.
  std::int64_t affected() const {
    const char* t = PQcmdTuples(r_);
    return *t ? std::stoll(t) : 0;
  }
  bool boolean(int row, int col) const { return PQgetvalue(r_, row, col)[0] == 't'; }
  /// A bytea column in text format ("\x" + hex).
  std::string bytes(int row, int col) const {
    const char* p = PQgetvalue(r_, row, col);
    const auto n = static_cast<std::size_t>(PQgetlength(r_, row, col));
    if (n < 2 || p[0] != '\\' || p[1] != 'x') return std::string(p, n);
    auto nibble = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return c - 'A' + 10;
    };
    std::string out;
    out.reserve((n - 2) / 2);
    for (std::size_t i = 2; i + 1 < n; i += 2) {
      out.push_back(static_cast<char>(nibble(p[i]) * 16 + nibble(p[i + 1])));
    }
    return out;
  }

 private:
  PGresult* r_;
};

bool is_transient_state(const char* state) {
  if (state == nullptr) return true;  // no server answer: the connection failed
  const std::string_view s(state);
  return s.starts_with("08") ||                           // connection exception
         s == "57P01" || s == "57P02" || s == "57P03" ||  // shutdown, crash, cannot connect now
         s == "40001" || s == "40P01";                    // serialization failure, deadlock
}

/// One libpq connection. Not thread safe: its owner serialises access.
class connection {
 public:
  connection(std::string conninfo, const std::string& where)
      : conninfo_(std::move(conninfo)), where_(where) {}
  ~connection() { drop(); }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  /// Connects if needed; throws transient_error when the server cannot be reached.
  void ensure() {
    if (conn_ && PQstatus(conn_) == CONNECTION_OK) return;
    drop();
    if (keywords_.empty()) choose_defaults();
    std::vector<const char*> values = default_values_;
    values.push_back(conninfo_.c_str());
    values.push_back(nullptr);
    conn_ = PQconnectdbParams(keywords_.data(), values.data(), /*expand_dbname=*/1);
    if (PQstatus(conn_) != CONNECTION_OK) {
      std::string msg = PQerrorMessage(conn_);
      drop();
      while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
      throw transient_error("cannot connect: " + msg);
    }
    // libpq prints server notices to stderr by default; a library must stay quiet.
    PQsetNoticeProcessor(
        conn_, [](void*, const char*) {}, nullptr);
    ++generation_;
    if (on_connect_) on_connect_(*this);
  }
  void drop() {
    if (conn_) PQfinish(conn_);
    conn_ = nullptr;
    prepared_.clear();  // prepared statements live and die with the server session
  }

  // Defaults for what the conninfo, the environment and a service file leave unset: over TCP a
  // server that went silent (a partition, a dead host) fails a call in about 30 s instead of
  // blocking it for the kernel's many minutes. A unix socket ignores them.
  void choose_defaults() {
    struct setting {
      const char* key;
      const char* value;
      const char* env;
    };
    static constexpr setting defaults[] = {{"connect_timeout", "10", "PGCONNECT_TIMEOUT"},
                                           {"keepalives", "1", nullptr},
                                           {"keepalives_idle", "30", nullptr},
                                           {"keepalives_interval", "10", nullptr},
                                           {"keepalives_count", "3", nullptr},
                                           {"tcp_user_timeout", "30000", nullptr}};
    std::set<std::string> given;
    if (PQconninfoOption* opts = PQconninfoParse(conninfo_.c_str(), nullptr)) {
      for (auto* o = opts; o->keyword; ++o)
        if (o->val && *o->val) given.insert(o->keyword);
      PQconninfoFree(opts);
    }
    const bool service = given.contains("service") || std::getenv("PGSERVICE");
    for (const auto& d : defaults) {
      if (service || given.contains(d.key) || (d.env && std::getenv(d.env))) continue;
      // tcp_user_timeout came with libpq 12; an older one refuses the whole connection.
      if (std::string_view(d.key) == "tcp_user_timeout" && PQlibVersion() < 120000) continue;
      keywords_.push_back(d.key);
      default_values_.push_back(d.value);
    }
    keywords_.push_back("dbname");  // last: expanded from the conninfo
    keywords_.push_back(nullptr);
  }
  bool connected() const { return conn_ && PQstatus(conn_) == CONNECTION_OK; }
  PGconn* raw() const { return conn_; }
  std::uint64_t generation() const { return generation_; }
  void set_on_connect(std::function<void(connection&)> f) { on_connect_ = std::move(f); }

  result exec(const std::string& sql, const params& p = {}) {
    std::vector<const char*> values;
    std::vector<int> lengths;
    p.pointers(values, lengths);
    return check(PQexecParams(conn_, sql.c_str(), p.size(), nullptr, values.data(), lengths.data(),
                              p.formats(), 0));
  }

  /// Like exec, for the hot statements: parsed and planned once per session.
  result exec_prepared(const std::string& sql, const params& p = {}) {
    auto it = prepared_.find(sql);
    if (it == prepared_.end()) {
      std::string name = "hl" + std::to_string(prepared_.size());
      check(PQprepare(conn_, name.c_str(), sql.c_str(), 0, nullptr));
      it = prepared_.emplace(sql, std::move(name)).first;
    }
    std::vector<const char*> values;
    std::vector<int> lengths;
    p.pointers(values, lengths);
    return check(PQexecPrepared(conn_, it->second.c_str(), p.size(), values.data(), lengths.data(),
                                p.formats(), 0));
  }

  // Pipeline mode: the committer sends a whole batch (BEGIN, its statements, COMMIT) and reads
  // the results after one sync, so a batch costs one round trip instead of one per statement.
  void pipeline_begin() {
    if (PQenterPipelineMode(conn_) != 1) throw transient_error(PQerrorMessage(conn_));
    expected_ = 0;
    new_prepared_.clear();
  }
  void pipeline_send(const std::string& sql, const params& p) {
    std::string name;
    if (auto it = prepared_.find(sql); it != prepared_.end()) {
      name = it->second;
    } else if (auto nt = new_prepared_.find(sql); nt != new_prepared_.end()) {
      name = nt->second;
    } else {
      name = "hl" + std::to_string(prepared_.size() + new_prepared_.size());
      if (PQsendPrepare(conn_, name.c_str(), sql.c_str(), 0, nullptr) != 1) {
        throw transient_error(PQerrorMessage(conn_));
      }
      ++expected_;
      new_prepared_.emplace(sql, name);
    }
    std::vector<const char*> values;
    std::vector<int> lengths;
    p.pointers(values, lengths);
    if (PQsendQueryPrepared(conn_, name.c_str(), p.size(), values.data(), lengths.data(),
                            p.formats(), 0) != 1) {
      throw transient_error(PQerrorMessage(conn_));
    }
    ++expected_;
  }
  void pipeline_send_plain(const char* sql) {
    if (PQsendQueryParams(conn_, sql, 0, nullptr, nullptr, nullptr, nullptr, 0) != 1) {
      throw transient_error(PQerrorMessage(conn_));
    }
    ++expected_;
  }
  /// Sends the pipeline and checks every result; throws the first failure.
  void pipeline_end() {
    if (PQpipelineSync(conn_) != 1) throw transient_error(PQerrorMessage(conn_));
    std::optional<std::string> failure;
    bool transient = false;
    for (std::size_t i = 0; i < expected_; ++i) {
      PGresult* r = PQgetResult(conn_);
      if (r == nullptr) throw transient_error("connection lost: " + last_error());
      const auto st = PQresultStatus(r);
      if (st == PGRES_FATAL_ERROR && !failure) {
        const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        std::string msg = PQresultErrorMessage(r);
        while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
        failure = msg;
        transient = PQstatus(conn_) != CONNECTION_OK || is_transient_state(state);
      }
      PQclear(r);
      if (PGresult* end = PQgetResult(conn_)) PQclear(end);  // each query ends with NULL
    }
    PGresult* sync = PQgetResult(conn_);
    const bool synced = sync && PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
    PQclear(sync);
    if (!synced) throw transient_error("pipeline out of step: " + last_error());
    PQexitPipelineMode(conn_);
    if (failure) {
      if (transient) throw transient_error(*failure);
      throw error(where_ + ": " + *failure);
    }
    prepared_.merge(new_prepared_);
  }

  /// Several statements without parameters (migrations).
  void exec_script(const std::string& sql) { check(PQexec(conn_, sql.c_str())); }

 private:
  std::string last_error() const {
    std::string msg = conn_ ? PQerrorMessage(conn_) : "";
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    return msg;
  }

  result check(PGresult* r) {
    result res(r);
    const auto st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return res;
    const char* state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
    std::string msg = r ? PQresultErrorMessage(r) : PQerrorMessage(conn_);
    if (msg.empty()) msg = PQerrorMessage(conn_);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    if (PQstatus(conn_) != CONNECTION_OK || is_transient_state(state)) {
      throw transient_error(msg);
    }
    throw error(where_ + ": " + msg);
  }

 public:
  /// Rolls back an open transaction after a failed statement; drops the connection if even
  /// that fails.
  void abandon_transaction() {
    if (!conn_) return;
    if (PQstatus(conn_) != CONNECTION_OK || PQpipelineStatus(conn_) != PQ_PIPELINE_OFF) {
      drop();
      return;
    }
    if (PQtransactionStatus(conn_) == PQTRANS_IDLE) return;
    PGresult* r = PQexec(conn_, "ROLLBACK");
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) drop();
  }

 private:
  std::string conninfo_;
  std::vector<const char*> keywords_;        // defaults, then "dbname", then nullptr
  std::vector<const char*> default_values_;  // one per default keyword
  const std::string& where_;
  PGconn* conn_ = nullptr;
  std::uint64_t generation_ = 0;
  std::function<void(connection&)> on_connect_;
  std::unordered_map<std::string, std::string> prepared_;      // sql -> statement name
  std::unordered_map<std::string, std::string> new_prepared_;  // prepared in this pipeline
  std::size_t expected_ = 0;                                   // results the pipeline owes us
};

/// Runs `f(conn)` until it succeeds, reconnecting with backoff (50 ms doubling to 2 s) while the
/// server is away, for at most kRetryBudget. Only for calls that are safe to repeat: every write
/// here is idempotent (ON CONFLICT on message ids and attempt keys), so a retry after an unknown
/// commit outcome does no harm.
template <class F>
std::invoke_result_t<F&, connection&> with_retry(connection& c, const std::string& where,
                                                 const char* what, spdlog::logger& log, F&& f) {
  const auto deadline = steady::now() + kRetryBudget;
  auto delay = kBackoffStart;
  for (int attempt = 1;; ++attempt) {
    try {
      c.ensure();
      return f(c);
    } catch (const transient_error& e) {
      c.abandon_transaction();
      c.drop();
      if (steady::now() + delay >= deadline) {
        throw error(where + ": " + what + ": database unavailable for " +
                    std::to_string(kRetryBudget.count()) + " s: " + e.what());
      }
      if (attempt == 1) log.warn("{}: {}: {}; reconnecting", where, what, e.what());
      std::this_thread::sleep_for(delay);
      delay = std::min(delay * 2, kBackoffMax);
    } catch (...) {
      c.abandon_transaction();
      throw;
    }
  }
}

/// BEGIN ... COMMIT around f.
template <class F>
void transaction(connection& c, F&& f) {
  c.exec("BEGIN");
  f();
  c.exec("COMMIT");
}

message read_message(const result& r, int row) {
  message m;
  m.id = r.str(row, 0);
  m.sequence = r.i64(row, 1);
  m.subscription_id = r.str(row, 2);
  m.event_id = r.str(row, 3);
  m.event_name = r.str(row, 4);
  m.url = r.str(row, 5);
  m.http_method = r.str(row, 6);
  m.body = r.bytes(row, 7);
  m.ordered = r.boolean(row, 8);
  m.status = parse_message_status(r.str(row, 9)).value_or(message_status::pending);
  m.attempts = static_cast<int>(r.i64(row, 10));
  m.created_at = from_ns(r.i64(row, 11));
  m.next_attempt_at = from_ns(r.i64(row, 12));
  m.updated_at = from_ns(r.i64(row, 13));
  m.last_status = static_cast<int>(r.i64(row, 14));
  m.last_error = r.str(row, 15);
  return m;
}

attempt_record read_attempt(const result& r, int row) {
  attempt_record a;
  a.message_id = r.str(row, 0);
  a.subscription_id = r.str(row, 1);
  a.event_id = r.str(row, 2);
  a.event_name = r.str(row, 3);
  a.url = r.str(row, 4);
  a.http_method = r.str(row, 5);
  a.attempt = static_cast<int>(r.i64(row, 6));
  a.started_at = from_ns(r.i64(row, 7));
  a.duration = std::chrono::microseconds(r.i64(row, 8));
  a.status_code = static_cast<int>(r.i64(row, 9));
  a.error = r.str(row, 10);
  a.request_length = static_cast<std::size_t>(r.i64(row, 11));
  a.response_length = static_cast<std::size_t>(r.i64(row, 12));
  a.response_head = r.str(row, 13);
  a.success = r.boolean(row, 14);
  return a;
}

/// A PostgreSQL text[] literal.
std::string text_array(const std::vector<std::string>& items) {
  std::string out = "{";
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i) out += ',';
    out += '"';
    for (char ch : items[i]) {
      if (ch == '"' || ch == '\\') out += '\\';
      out += ch;
    }
    out += '"';
  }
  out += '}';
  return out;
}

params attempt_params(const std::string& key, const attempt_record& a) {
  params p;
  p.add(key).add(a.message_id).add(a.subscription_id).add(a.event_id).add(a.event_name);
  p.add(a.url).add(a.http_method).add(a.attempt).add(to_ns(a.started_at));
  p.add(static_cast<std::int64_t>(a.duration.count())).add(a.status_code).add(a.error);
  p.add(a.request_length).add(a.response_length).add(a.response_head).add(a.success);
  return p;
}

/// Creates or upgrades the schema. An advisory lock serialises workers starting at once.
void migrate(connection& c, const std::string& where) {
  transaction(c, [&] {
    c.exec("SELECT pg_advisory_xact_lock(hashtext('hookline:' || current_schema()))");
    c.exec(
        "CREATE TABLE IF NOT EXISTS schema_version(version INTEGER PRIMARY KEY, "
        "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())");
    auto r = c.exec("SELECT coalesce(max(version), 0) FROM schema_version");
    const auto current = r.i64(0, 0);
    if (current > postgres_schema_version) {
      throw error(where + ": schema version " + std::to_string(current) +
                  " is newer than this hookline understands (" +
                  std::to_string(postgres_schema_version) + ")");
    }
    for (auto v = current + 1; v <= postgres_schema_version; ++v) {
      c.exec_script(kMigrations[v - 1]);
      c.exec("INSERT INTO schema_version(version) VALUES($1::int)", params().add(v));
    }
  });
}

std::string describe(const std::string& conninfo) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
  if (err) PQfreemem(err);
  if (!opts) return "postgres store (unparsable connection string)";
  std::string out;
  for (PQconninfoOption* o = opts; o->keyword; ++o) {
    if (!o->val || !*o->val) continue;
    const std::string_view k(o->keyword);
    if (k == "host" || k == "hostaddr" || k == "port" || k == "dbname" || k == "user") {
      if (!out.empty()) out += ' ';
      out += std::string(k) + "=" + o->val;
    }
  }
  PQconninfoFree(opts);
  return "postgres store (" + (out.empty() ? std::string("defaults") : out) + ")";
}

void check_conninfo(const std::string& conninfo, const std::string& where) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
  if (err) PQfreemem(err);  // may quote the string, password included: not repeated
  if (!opts) throw error(where + ": the connection string cannot be parsed");
  PQconninfoFree(opts);
}

class postgres_store final : public delivery_store {
 public:
  postgres_store(const std::string& conninfo, const store_options& options)
      : options_(options),
        log_(options.logger ? options.logger : store_logger()),
        where_(describe(conninfo)) {
    check_conninfo(conninfo, where_);
    if (options_.request_timeout <= milliseconds(0)) {
      throw error(where_ + ": request_timeout must be positive");
    }
    for (std::size_t i = 0; i < kPoolSize; ++i) {
      pool_.push_back(std::make_unique<slot>(conninfo, where_));
    }
    committer_conn_ = std::make_unique<connection>(conninfo, where_);
    listener_ = std::make_unique<connection>(conninfo, where_);
    listener_->set_on_connect(
        [](connection& c) { c.exec(std::string("LISTEN ") + postgres_channel); });
    // Fail fast on a wrong address or credentials: one attempt, no retry loop.
    {
      auto& c = pool_[0]->conn;
      try {
        c.ensure();
      } catch (const transient_error& e) {
        throw error(where_ + ": " + e.what());
      }
      migrate(c, where_);
      schema_ = c.exec("SELECT current_schema()").str(0, 0);
    }
    committer_ = std::make_unique<group_committer>(
        [this](std::vector<std::shared_ptr<write_op>>& ops) { run_batch(ops); }, log_, 256);
    pruner_ = std::make_unique<retention_pruner>(*this, options_.retention, log_);
  }

  ~postgres_store() override {
    pruner_.reset();
    committer_->stop();
  }

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
    for (auto& m : batch) {
      m.status = message_status::pending;
      if (m.updated_at == time_point{}) m.updated_at = m.created_at;
    }
    run("enqueue", [&](connection& c) {
      // A retry after a lost connection starts from the same choice.
      leased = lease != nullptr ? leased_by_publisher(batch, lease->count) : std::vector<bool>();
      transaction(c, [&] {
        for (std::size_t start = 0; start < batch.size(); start += kInsertChunk) {
          const std::size_t end = std::min(batch.size(), start + kInsertChunk);
          insert_chunk(c, batch, start, end, lease, leased);
        }
        c.exec_prepared("SELECT pg_notify($1, $2)", params().add(postgres_channel).add(schema_));
      });
    });
    return leased;
  }

  std::vector<message> claim(const claim_request& req) override {
    if (req.lease <= options_.request_timeout) {
      throw error(where_ + ": claim: lease of " + std::to_string(req.lease.count()) +
                  " ms must be longer than the request timeout of " +
                  std::to_string(options_.request_timeout.count()) +
                  " ms, or a message could be sent twice at once");
    }
    if (req.max == 0) return {};
    committer_->barrier();
    auto out = run("claim", [&](connection& c) {
      auto r = c.exec_prepared(
          std::string("UPDATE messages m SET lease_owner = $1, lease_until = "
                      "$2::bigint WHERE m.id IN (SELECT c.id FROM messages c "
                      "WHERE c.status = 'pending' AND c.next_attempt_at <= $3::bigint "
                      "AND (c.lease_until IS NULL OR c.lease_until <= $3::bigint) ") +
              HOOKLINE_ORDERED_HEAD("c") +
              "ORDER BY c.next_attempt_at, c.sequence LIMIT $4::bigint "
              "FOR UPDATE SKIP LOCKED) RETURNING " +
              kMessageColumns,
          params()
              .add(req.worker_id)
              .add(to_ns(req.now + req.lease))
              .add(to_ns(req.now))
              .add(req.max));
      std::vector<message> got;
      for (int i = 0; i < r.rows(); ++i) got.push_back(read_message(r, i));
      return got;
    });
    std::sort(out.begin(), out.end(), [](const message& a, const message& b) {
      if (a.next_attempt_at != b.next_attempt_at) return a.next_attempt_at < b.next_attempt_at;
      return a.sequence < b.sequence;
    });
    return out;
  }

  void complete(const std::string& id, const attempt_record& a) override {
    post("complete", [this, id, a, key = random_key()] {
      auto p = attempt_params(key, a);
      p.add(to_ns(attempt_end(a))).add(id);
      batch_send(std::string(kAttemptCte) +
                     "UPDATE messages SET status = 'delivered', lease_owner = NULL, "
                     "lease_until = NULL, attempts = CASE WHEN $8::int > 0 THEN "
                     "GREATEST(attempts, $8::int) ELSE attempts + 1 END, "
                     "last_status = $11::int, last_error = $12, updated_at = $17::bigint "
                     "WHERE id = $18",
                 p);
    });
  }

  void reschedule(const std::string& id, time_point next, const attempt_record& a) override {
    post_reschedule(id, next, a, {});
  }

  // Each result is its own committer operation; the committer sends those that queue up in
  // one pipeline and transaction.
  void record_results(std::vector<attempt_result>& results) override {
    for (auto& r : results) {
      if (r.retry_at) {
        post_reschedule(r.message_id, *r.retry_at, r.attempt, r.worker_id);
      } else {
        complete(r.message_id, r.attempt);
      }
    }
    results.clear();
  }

  // With a `worker`, only while it holds the lease (the attempt is recorded either way).
  void post_reschedule(const std::string& id, time_point next, const attempt_record& a,
                       const std::string& worker) {
    post("reschedule", [this, id, next, a, worker, key = random_key()] {
      auto p = attempt_params(key, a);
      p.add(to_ns(attempt_end(a))).add(id).add(to_ns(next)).add(worker);
      batch_send(std::string(kAttemptCte) +
                     "UPDATE messages SET next_attempt_at = $19::bigint, "
                     "lease_owner = NULL, lease_until = NULL, attempts = CASE WHEN "
                     "$8::int > 0 THEN GREATEST(attempts, $8::int) ELSE attempts + 1 END, "
                     "last_status = $11::int, last_error = CASE WHEN $12 = '' THEN "
                     "'HTTP ' || $11 ELSE $12 END, updated_at = $17::bigint "
                     "WHERE id = $18 AND status = 'pending' AND "
                     "($20::text = '' OR lease_owner = $20::text)",
                 p);
    });
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
    if (!a) {
      post("dead_letter", [this, id, worker, reason, now = std::chrono::system_clock::now()] {
        batch_send(
            "UPDATE messages SET status = 'dead', lease_owner = NULL, lease_until = NULL, "
            "last_error = $2, updated_at = $3::bigint WHERE id = $1 AND status = 'pending' "
            "AND ($4::text = '' OR lease_owner = $4::text)",
            params().add(id).add(reason).add(to_ns(now)).add(worker));
      });
      return;
    }
    post("dead_letter", [this, id, worker, reason, a = *a, key = random_key()] {
      auto p = attempt_params(key, a);
      p.add(to_ns(attempt_end(a))).add(id).add(reason).add(worker);
      batch_send(std::string(kAttemptCte) +
                     "UPDATE messages SET status = 'dead', lease_owner = NULL, "
                     "lease_until = NULL, attempts = CASE WHEN $8::int > 0 THEN "
                     "GREATEST(attempts, $8::int) ELSE attempts + 1 END, "
                     "last_status = $11::int, last_error = $19, updated_at = $17::bigint "
                     "WHERE id = $18 AND status = 'pending' AND "
                     "($20::text = '' OR lease_owner = $20::text)",
                 p);
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
      std::string sql =
          "UPDATE messages SET next_attempt_at = $2::bigint, lease_owner = NULL, "
          "lease_until = NULL WHERE id = $1 AND status = 'pending'";
      auto p = params().add(id).add(to_ns(next));
      if (worker) {
        sql += " AND lease_owner = $3";
        p.add(*worker);
      }
      batch_send(sql, p);
    });
  }

  std::size_t release_worker(const std::string& worker_id) override {
    committer_->barrier();
    return run("release_worker", [&](connection& c) {
      auto r = c.exec(
          "UPDATE messages SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
          params().add(worker_id));
      return static_cast<std::size_t>(r.affected());
    });
  }

  bool redeliver(const std::string& id, time_point now) override {
    committer_->barrier();
    return run("redeliver", [&](connection& c) {
      // A replay starts a fresh retry schedule; the attempt log keeps the history. A pending
      // message is made due now unless a worker holds it.
      auto r = c.exec(
          "UPDATE messages SET status = 'pending', next_attempt_at = $2::bigint, "
          "updated_at = CASE WHEN status = 'pending' THEN updated_at ELSE $2::bigint END, "
          "attempts = CASE WHEN status = 'pending' THEN attempts ELSE 0 END, "
          "lease_owner = CASE WHEN status = 'pending' THEN lease_owner END, "
          "lease_until = CASE WHEN status = 'pending' THEN lease_until END "
          "WHERE id = $1 AND (status <> 'pending' OR lease_until IS NULL OR "
          "lease_until <= $2::bigint) RETURNING 1",
          params().add(id).add(to_ns(now)));
      if (r.rows() > 0) return true;
      return c.exec("SELECT 1 FROM messages WHERE id = $1", params().add(id)).rows() > 0;
    });
  }

  std::size_t recover(const std::string& subscription_id, time_point since,
                      time_point now) override {
    committer_->barrier();
    return run("recover", [&](connection& c) {
      auto r = c.exec(
          "UPDATE messages SET status = 'pending', next_attempt_at = $3::bigint, "
          "updated_at = $3::bigint, attempts = 0, lease_owner = NULL, lease_until = NULL "
          "WHERE subscription_id = $1 AND status = 'dead' AND created_at >= $2::bigint",
          params().add(subscription_id).add(to_ns(since)).add(to_ns(now)));
      return static_cast<std::size_t>(r.affected());
    });
  }

  std::optional<message> get(const std::string& id) override {
    committer_->barrier();
    return run("get", [&](connection& c) -> std::optional<message> {
      auto r =
          c.exec_prepared(std::string("SELECT ") + kMessageColumns + " FROM messages WHERE id = $1",
                          params().add(id));
      if (r.rows() == 0) return std::nullopt;
      return read_message(r, 0);
    });
  }

  std::vector<message> query(const message_query& q) override {
    committer_->barrier();
    return run("query", [&](connection& c) {
      std::string sql = std::string("SELECT ") + kMessageColumns + " FROM messages WHERE true";
      params p;
      if (q.status) {
        p.add(to_string(*q.status));
        sql += " AND status = $" + std::to_string(p.size());
      }
      if (q.subscription_id) {
        p.add(*q.subscription_id);
        sql += " AND subscription_id = $" + std::to_string(p.size());
      }
      if (q.since) {
        p.add(to_ns(*q.since));
        sql += " AND created_at >= $" + std::to_string(p.size()) + "::bigint";
      }
      sql += " ORDER BY sequence";
      if (q.limit > 0) {
        p.add(q.limit);
        sql += " LIMIT $" + std::to_string(p.size()) + "::bigint";
      }
      auto r = c.exec(sql, p);
      std::vector<message> out;
      for (int i = 0; i < r.rows(); ++i) out.push_back(read_message(r, i));
      return out;
    });
  }

  std::vector<attempt_record> attempts(const attempt_query& q) override {
    committer_->barrier();
    return run("attempts", [&](connection& c) {
      std::string sql = std::string("SELECT ") + kAttemptColumns + " FROM attempts WHERE true";
      params p;
      if (q.message_id) {
        p.add(*q.message_id);
        sql += " AND message_id = $" + std::to_string(p.size());
      }
      if (q.subscription_id) {
        p.add(*q.subscription_id);
        sql += " AND subscription_id = $" + std::to_string(p.size());
      }
      if (q.since) {
        p.add(to_ns(*q.since));
        sql += " AND started_at >= $" + std::to_string(p.size()) + "::bigint";
      }
      // The most recent `limit` matches, oldest first.
      sql += " ORDER BY id DESC";
      if (q.limit > 0) {
        p.add(q.limit);
        sql += " LIMIT $" + std::to_string(p.size()) + "::bigint";
      }
      auto r = c.exec(sql, p);
      std::vector<attempt_record> out;
      for (int i = r.rows() - 1; i >= 0; --i) out.push_back(read_attempt(r, i));
      return out;
    });
  }

  std::size_t count_pending(time_point /*now*/) override {
    committer_->barrier();
    return run("count_pending", [&](connection& c) {
      // An index range on status (messages_claim or messages_status_updated), not counts()'s
      // table scan.
      auto r = c.exec_prepared("SELECT count(*) FROM messages WHERE status = 'pending'", params());
      return static_cast<std::size_t>(r.i64(0, 0));
    });
  }

  store_counts counts(time_point now) override {
    committer_->barrier();
    return run("counts", [&](connection& c) {
      auto r = c.exec_prepared(
          "SELECT count(*) FILTER (WHERE status = 'pending'), "
          "count(*) FILTER (WHERE status = 'delivered'), "
          "count(*) FILTER (WHERE status = 'dead'), "
          "count(*) FILTER (WHERE status = 'pending' AND lease_until > $1::bigint) "
          "FROM messages",
          params().add(to_ns(now)));
      store_counts out;
      out.pending = static_cast<std::size_t>(r.i64(0, 0));
      out.delivered = static_cast<std::size_t>(r.i64(0, 1));
      out.dead = static_cast<std::size_t>(r.i64(0, 2));
      out.in_flight = static_cast<std::size_t>(r.i64(0, 3));
      return out;
    });
  }

  subscription_stats stats(const std::string& subscription_id) override {
    committer_->barrier();
    return run("stats", [&](connection& c) {
      auto r = c.exec(
          "SELECT calls, status_1xx, status_2xx, status_3xx, status_4xx, status_5xx, failures, "
          "errors, request_bytes, response_bytes FROM subscription_stats "
          "WHERE subscription_id = $1",
          params().add(subscription_id));
      subscription_stats st;
      if (r.rows() == 0) return st;
      auto z = [&](int col) { return static_cast<std::size_t>(r.i64(0, col)); };
      st.calls = z(0);
      st.status_1xx = z(1);
      st.status_2xx = z(2);
      st.status_3xx = z(3);
      st.status_4xx = z(4);
      st.status_5xx = z(5);
      st.failures = z(6);
      st.errors = z(7);
      st.request_bytes = static_cast<std::uint64_t>(r.i64(0, 8));
      st.response_bytes = static_cast<std::uint64_t>(r.i64(0, 9));
      return st;
    });
  }

  std::optional<time_point> next_due(time_point now) override {
    committer_->barrier();
    return run("next_due", [&](connection& c) -> std::optional<time_point> {
      // Claimable messages (an ordered one only at the head of its subscription), and leases
      // that run out, since an expired lease makes its message claimable again.
      auto r =
          c.exec_prepared(std::string("SELECT (SELECT min(c.next_attempt_at) FROM messages c "
                                      "WHERE c.status = 'pending' AND (c.lease_until IS NULL OR "
                                      "c.lease_until <= $1::bigint) ") +
                              HOOKLINE_ORDERED_HEAD("c") +
                              "), (SELECT min(lease_until) FROM messages WHERE status = 'pending' "
                              "AND lease_until > $1::bigint)",
                          params().add(to_ns(now)));
      std::optional<time_point> best;
      for (int col = 0; col < 2; ++col) {
        if (r.is_null(0, col)) continue;
        const time_point t = from_ns(r.i64(0, col));
        if (!best || t < *best) best = t;
      }
      return best;
    });
  }

  bool wait_for_notification(std::chrono::milliseconds timeout) override {
    std::lock_guard lock(listen_mutex_);
    const auto deadline = steady::now() + timeout;
    if (!listener_->connected()) {
      if (steady::now() < listen_retry_at_) {
        std::this_thread::sleep_for(
            std::min<steady::duration>(listen_retry_at_ - steady::now(), timeout));
        return false;
      }
      try {
        listener_->ensure();
        listen_delay_ = kBackoffStart;
      } catch (const std::exception& e) {
        listener_->drop();
        log_->warn("{}: LISTEN connection: {}", where_, e.what());
        listen_retry_at_ = steady::now() + listen_delay_;
        listen_delay_ = std::min(listen_delay_ * 2, kBackoffMax);
        return false;
      }
      // Notifications sent while we were away are lost: report a wake-up so the caller looks.
      return true;
    }
    PGconn* conn = listener_->raw();
    for (;;) {
      if (PQconsumeInput(conn) == 0) {
        listener_->drop();
        return true;
      }
      bool mine = false;
      while (PGnotify* n = PQnotifies(conn)) {
        if (n->extra && schema_ == n->extra) mine = true;
        PQfreemem(n);
      }
      if (mine) return true;
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - steady::now());
      if (left.count() <= 0) return false;
      pollfd pfd{PQsocket(conn), POLLIN, 0};
      const int rc = ::poll(&pfd, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 60000)));
      if (rc < 0 && errno != EINTR) {
        listener_->drop();
        return true;
      }
    }
  }

  void save_state(const subscription_state& st) override {
    if (st.subscription_id.empty()) throw error(where_ + ": save_state: subscription_id is empty");
    committer_->barrier();
    run("save_state", [&](connection& c) {
      params p;
      p.add(st.subscription_id).add(st.disabled).add(st.reason);
      if (st.failing_since) {
        p.add(to_ns(*st.failing_since));
      } else {
        p.add_null();
      }
      c.exec(
          "INSERT INTO subscription_state(subscription_id, disabled, reason, failing_since) "
          "VALUES($1, $2::boolean, $3, $4::bigint) ON CONFLICT (subscription_id) DO UPDATE SET "
          "disabled = excluded.disabled, reason = excluded.reason, "
          "failing_since = excluded.failing_since",
          p);
    });
  }

  std::vector<subscription_state> load_states() override {
    committer_->barrier();
    return run("load_states", [&](connection& c) {
      auto r = c.exec(
          "SELECT subscription_id, disabled, reason, failing_since FROM subscription_state "
          "ORDER BY subscription_id");
      std::vector<subscription_state> out;
      for (int i = 0; i < r.rows(); ++i) {
        subscription_state st;
        st.subscription_id = r.str(i, 0);
        st.disabled = r.boolean(i, 1);
        st.reason = r.str(i, 2);
        if (!r.is_null(i, 3)) st.failing_since = from_ns(r.i64(i, 3));
        out.push_back(std::move(st));
      }
      return out;
    });
  }

  std::size_t prune(time_point before) override {
    committer_->barrier();
    std::size_t total = 0;
    for (const char* sql :
         {"DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE status = 'delivered' "
          "AND updated_at < $1::bigint LIMIT $2::int)",
          "DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE started_at < "
          "$1::bigint LIMIT $2::int)"}) {
      for (;;) {
        const auto n = run("prune", [&](connection& c) {
          auto r = c.exec(sql, params().add(to_ns(before)).add(kPruneChunk));
          return r.affected();
        });
        total += static_cast<std::size_t>(n);
        if (n < kPruneChunk) break;
      }
    }
    return total;
  }

 private:
  struct slot {
    slot(const std::string& conninfo, const std::string& where) : conn(conninfo, where) {}
    std::mutex mutex;
    connection conn;
  };

  template <class F>
  std::invoke_result_t<F&, connection&> run(const char* what, F&& f) {
    // A free connection if there is one, else wait for one (round robin).
    std::unique_lock<std::mutex> lock;
    slot* s = nullptr;
    for (auto& candidate : pool_) {
      std::unique_lock<std::mutex> l(candidate->mutex, std::try_to_lock);
      if (l.owns_lock()) {
        lock = std::move(l);
        s = candidate.get();
        break;
      }
    }
    if (!s) {
      s = pool_[next_slot_.fetch_add(1) % pool_.size()].get();
      lock = std::unique_lock<std::mutex>(s->mutex);
    }
    return with_retry(s->conn, where_, what, *log_, f);
  }

  // `leased` (empty, or one flag per message of the batch): rows stored as claimed by
  // `lease->worker_id`; a row that was already stored is not, and its flag is cleared.
  void insert_chunk(connection& c, std::vector<message>& batch, std::size_t start, std::size_t end,
                    const enqueue_lease* lease, std::vector<bool>& leased) {
    std::string sql =
        "INSERT INTO messages(id, subscription_id, event_id, event_name, url, http_method, body, "
        "ordered, status, attempts, created_at, next_attempt_at, updated_at, last_status, "
        "last_error, lease_owner, lease_until) VALUES ";
    params p;
    for (std::size_t i = start; i < end; ++i) {
      const auto& m = batch[i];
      const int b = p.size();
      auto n = [&](int k) { return "$" + std::to_string(b + k); };
      if (i > start) sql += ", ";
      sql += "(" + n(1) + ", " + n(2) + ", " + n(3) + ", " + n(4) + ", " + n(5) + ", " + n(6) +
             ", " + n(7) + "::bytea, " + n(8) + "::boolean, 'pending', " + n(9) + "::int, " +
             n(10) + "::bigint, " + n(11) + "::bigint, " + n(12) + "::bigint, " + n(13) +
             "::int, " + n(14) + ", " + n(15) + ", " + n(16) + "::bigint)";
      p.add(m.id).add(m.subscription_id).add(m.event_id).add(m.event_name).add(m.url);
      p.add(m.http_method).add_binary(m.body).add(m.ordered).add(m.attempts);
      p.add(to_ns(m.created_at)).add(to_ns(m.next_attempt_at)).add(to_ns(m.updated_at));
      p.add(m.last_status).add(m.last_error);
      if (!leased.empty() && leased[i]) {
        p.add(lease->worker_id).add(to_ns(lease->until));
      } else {
        p.add_null().add_null();
      }
    }
    // An enqueue retried after a lost connection may find its rows committed already.
    sql += " ON CONFLICT (id) DO NOTHING RETURNING id, sequence";
    auto r = c.exec(sql, p);
    std::unordered_map<std::string, std::int64_t> seq;
    for (int i = 0; i < r.rows(); ++i) seq.emplace(r.str(i, 0), r.i64(i, 1));
    std::vector<std::string> missing;
    for (std::size_t i = start; i < end; ++i) {
      if (!seq.count(batch[i].id)) missing.push_back(batch[i].id);
    }
    if (!missing.empty()) {
      // Stored already. Still ours to deliver only when it carries exactly this lease: an
      // attempt of this same call whose commit was acknowledged too late (a lost connection).
      auto e = c.exec(
          "SELECT id, sequence, status = 'pending' AND lease_owner IS NOT DISTINCT FROM $2 AND "
          "lease_until IS NOT DISTINCT FROM $3::bigint FROM messages WHERE id = ANY($1::text[])",
          params()
              .add(text_array(missing))
              .add(lease != nullptr ? lease->worker_id : std::string())
              .add(lease != nullptr ? to_ns(lease->until) : std::int64_t{0}));
      std::unordered_map<std::string, bool> ours;
      for (int i = 0; i < e.rows(); ++i) {
        seq.emplace(e.str(i, 0), e.i64(i, 1));
        ours.emplace(e.str(i, 0), e.str(i, 2) == "t");
      }
      for (std::size_t i = start; i < end && !leased.empty(); ++i) {
        if (!leased[i] || seq.count(batch[i].id) == 0) continue;
        auto it = ours.find(batch[i].id);
        if (it != ours.end() && !it->second) leased[i] = false;
      }
    }
    for (std::size_t i = start; i < end && !leased.empty(); ++i) {
      if (leased[i] && seq.count(batch[i].id) == 0) leased[i] = false;  // not stored at all
    }
    for (std::size_t i = start; i < end; ++i) {
      auto it = seq.find(batch[i].id);
      if (it != seq.end()) batch[i].sequence = it->second;
    }
  }

  template <class F>
  void post(const char* what, F&& f) {
    auto op = std::make_shared<write_op>();
    op->run = std::forward<F>(f);
    op->what = what;
    committer_->submit(std::move(op));
  }

  void batch_send(const std::string& sql, const params& p) {
    committer_conn_->pipeline_send(sql, p);
  }

  // Committer thread: one transaction for the whole batch of completions; a failing write is
  // isolated by running the others alone.
  void run_batch(std::vector<std::shared_ptr<write_op>>& ops) {
    auto all = [&](connection& c) {
      c.pipeline_begin();
      c.pipeline_send_plain("BEGIN");
      for (auto& op : ops) op->run();
      c.pipeline_send_plain("COMMIT");
      c.pipeline_end();
    };
    try {
      with_retry(*committer_conn_, where_, "recording results", *log_, all);
    } catch (const error&) {
      if (ops.size() == 1) throw;
      for (auto& op : ops) {
        try {
          with_retry(*committer_conn_, where_, op->what, *log_, [&](connection& c) {
            c.pipeline_begin();
            c.pipeline_send_plain("BEGIN");
            op->run();
            c.pipeline_send_plain("COMMIT");
            c.pipeline_end();
          });
        } catch (...) {
          op->error = std::current_exception();
        }
      }
    }
  }

  store_options options_;
  std::shared_ptr<spdlog::logger> log_;
  std::string where_;
  std::string schema_;
  std::vector<std::unique_ptr<slot>> pool_;
  std::atomic<std::size_t> next_slot_{0};
  std::unique_ptr<connection> committer_conn_;  // committer thread only
  std::unique_ptr<connection> listener_;
  std::mutex listen_mutex_;
  steady::time_point listen_retry_at_{};
  milliseconds listen_delay_ = kBackoffStart;
  std::unique_ptr<group_committer> committer_;
  std::unique_ptr<retention_pruner> pruner_;
};

/// A short-lived connection for the subscription registry functions.
template <class F>
auto with_registry(const std::string& conninfo, const char* what, F&& f) {
  const std::string where = describe(conninfo);
  check_conninfo(conninfo, where);
  connection c(conninfo, where);
  auto log = store_logger();
  with_retry(c, where, what, *log, [&](connection& conn) { migrate(conn, where); });
  return with_retry(c, where, what, *log, f);
}

}  // namespace

std::string describe_conninfo(const std::string& conninfo) {
  return describe(conninfo);
}

std::shared_ptr<delivery_store> make_postgres_store(const std::string& conninfo,
                                                    const store_options& options) {
  return std::make_shared<postgres_store>(conninfo, options);
}

}  // namespace hookline::detail

namespace hookline {

std::vector<nlohmann::json> load_postgres_subscriptions(const std::string& conninfo) {
  return detail::with_registry(conninfo, "loading subscriptions", [&](detail::connection& c) {
    auto r = c.exec("SELECT id, json FROM subscriptions ORDER BY id");
    std::vector<nlohmann::json> out;
    for (int i = 0; i < r.rows(); ++i) {
      try {
        out.push_back(nlohmann::json::parse(r.str(i, 1)));
      } catch (const nlohmann::json::exception& e) {
        throw error(detail::describe(conninfo) + ": subscription '" + r.str(i, 0) +
                    "' is not valid JSON: " + json_error_reason(e));
      }
    }
    return out;
  });
}

void save_postgres_subscription(const std::string& conninfo, const nlohmann::json& subscription) {
  if (!subscription.is_object()) throw error("subscription: must be a JSON object");
  auto it = subscription.find("id");
  if (it == subscription.end() || !it->is_string() || it->get<std::string>().empty()) {
    throw error("subscription: id: a non-empty string is required");
  }
  const std::string id = it->get<std::string>();
  const std::string text = subscription.dump();
  detail::with_registry(conninfo, "saving a subscription", [&](detail::connection& c) {
    // One statement, so the change and its notification commit together.
    c.exec(
        "WITH saved AS (INSERT INTO subscriptions(id, json) VALUES($1, $2) ON CONFLICT (id) DO "
        "UPDATE SET json = excluded.json, updated_at = now() RETURNING 1) "
        "SELECT pg_notify($3, current_schema()) FROM saved",
        detail::params().add(id).add(text).add(detail::subscriptions_channel));
  });
}

bool remove_postgres_subscription(const std::string& conninfo, const std::string& id) {
  return detail::with_registry(conninfo, "removing a subscription", [&](detail::connection& c) {
    return c.exec(
                "WITH gone AS (DELETE FROM subscriptions WHERE id = $1 RETURNING 1) "
                "SELECT pg_notify($2, current_schema()) FROM gone",
                detail::params().add(id).add(detail::subscriptions_channel))
               .rows() > 0;
  });
}

// ---------------------------------------------------------------------------------------------
// postgres_subscription_sync

class postgres_subscription_sync::impl {
 public:
  impl(registry& reg, std::string conninfo, options o)
      : reg_(reg),
        conninfo_(std::move(conninfo)),
        where_(detail::describe(conninfo_)),
        options_(std::move(o)),
        listener_(conninfo_, where_) {
    detail::check_conninfo(conninfo_, where_);
    listener_.set_on_connect([this](detail::connection& c) {
      c.exec(std::string("LISTEN ") + detail::subscriptions_channel);
      schema_ = c.exec("SELECT current_schema()").str(0, 0);
    });
    try {
      listener_.ensure();
    } catch (const std::exception& e) {
      throw error(where_ + ": subscriptions: " + e.what());
    }
    // The first load throws: a worker without its subscriptions should not start.
    load(/*rethrow=*/true);
    thread_ = std::thread([this] { run(); });
  }

  ~impl() {
    stopping_ = true;
    if (thread_.joinable()) thread_.join();
  }

  std::uint64_t loads() const { return loads_.load(); }

 private:
  void load(bool rethrow) {
    load_report report;
    std::string failure;
    try {
      auto rows = load_postgres_subscriptions(conninfo_);
      std::set<std::string> disabled;
      if (options_.states)
        for (const auto& st : options_.states->load_states())
          if (st.disabled) disabled.insert(st.subscription_id);
      std::vector<subscription> subs;
      subs.reserve(rows.size());
      for (auto& row : rows) {
        auto sub = subscription_from_json(row);
        if (disabled.contains(sub.id)) sub.enabled = false;
        subs.push_back(std::move(sub));
      }
      report = reg_.replace_all(std::move(subs));
    } catch (const std::exception& e) {
      if (rethrow) throw;
      failure = e.what();
    }
    if (failure.empty()) ++loads_;
    if (options_.on_load) {
      try {
        options_.on_load(report, failure);
      } catch (...) {
      }
    }
  }

  void run() {
    using steady = std::chrono::steady_clock;
    auto next_poll = steady::now() + options_.poll;
    auto delay = detail::kBackoffStart;
    while (!stopping_) {
      bool changed = false;
      if (!listener_.connected()) {
        try {
          listener_.ensure();
          delay = detail::kBackoffStart;
          changed = true;  // what changed while we were away was not announced
        } catch (const std::exception&) {
          listener_.drop();
          sleep_for(delay);
          delay = std::min(delay * 2, detail::kBackoffMax);
          continue;
        }
      } else {
        PGconn* conn = listener_.raw();
        pollfd pfd{PQsocket(conn), POLLIN, 0};
        const int rc = ::poll(&pfd, 1, 200);  // also how often stopping_ is looked at
        if ((rc < 0 && errno != EINTR) || PQconsumeInput(conn) == 0) {
          listener_.drop();
          continue;
        }
        while (PGnotify* n = PQnotifies(conn)) {
          if (n->extra && schema_ == n->extra) changed = true;
          PQfreemem(n);
        }
      }
      if (steady::now() >= next_poll) changed = true;
      if (changed && !stopping_) {
        load(/*rethrow=*/false);
        next_poll = steady::now() + options_.poll;
      }
    }
  }

  void sleep_for(std::chrono::milliseconds d) {
    const auto until = std::chrono::steady_clock::now() + d;
    while (!stopping_ && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  registry& reg_;
  std::string conninfo_;
  std::string where_;
  options options_;
  detail::connection listener_;
  std::string schema_;
  std::atomic<bool> stopping_{false};
  std::atomic<std::uint64_t> loads_{0};
  std::thread thread_;
};

postgres_subscription_sync::postgres_subscription_sync(registry& reg, std::string conninfo,
                                                       options o)
    : impl_(std::make_unique<impl>(reg, std::move(conninfo), std::move(o))) {}
postgres_subscription_sync::~postgres_subscription_sync() = default;
std::uint64_t postgres_subscription_sync::loads() const {
  return impl_->loads();
}

}  // namespace hookline
