#pragma once
// Thread safety: every delivery_store implementation is safe to call from several threads at
// once (the hub publishes from host threads while the dispatcher claims and completes).

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace spdlog {
class logger;
}

namespace hookline {

using time_point = std::chrono::system_clock::time_point;

enum class message_status { pending, delivered, dead };
std::string_view to_string(message_status s);
std::optional<message_status> parse_message_status(std::string_view s);

/// One delivery: one event for one subscription. Its id is the `webhook-id`, stable across
/// retries, restarts and replays.
struct message {
  std::string id;
  std::string subscription_id;
  std::string event_id;
  std::string event_name;
  std::string url;          ///< the endpoint, copied at publish time
  std::string http_method;  ///< copied at publish time
  std::string body;         ///< rendered at publish time; the bytes that are signed and sent
  bool ordered = false;     ///< deliver after every earlier message of its subscription
  message_status status = message_status::pending;
  int attempts = 0;
  time_point created_at{};
  time_point next_attempt_at{};  ///< when it is due (pending only)
  time_point updated_at{};
  int last_status = 0;        ///< HTTP status of the last attempt, 0 if none
  std::string last_error;     ///< why the last attempt failed / why it is dead
  std::int64_t sequence = 0;  ///< store-assigned, increasing in enqueue order
};

/// One HTTP attempt, as recorded in the attempt log.
struct attempt_record {
  std::string message_id;
  std::string subscription_id;
  std::string event_id;
  std::string event_name;
  std::string url;
  std::string http_method;
  int attempt = 0;  ///< 1-based
  time_point started_at{};
  std::chrono::microseconds duration{0};
  int status_code = 0;  ///< 0 when no response was received
  std::string error;    ///< empty when an HTTP response was received and accepted
  std::size_t request_length = 0;
  std::size_t response_length = 0;
  std::string response_head;  ///< the start of the response body, bounded
  bool success = false;
};

/// One finished attempt for delivery_store::record_results(): delivered when `retry_at` is
/// empty, else still pending and due again at `retry_at`.
///
/// With a `worker_id`, a retry moves the message only while that worker still holds its lease:
/// a worker whose lease ran out while it was sending, and whose message another worker has
/// claimed since, leaves the other's lease and retry time alone (a third worker would otherwise
/// send it while the second still is). Its attempt is recorded either way. A delivery always
/// counts: whoever holds the lease, the message is delivered.
struct attempt_result {
  std::string message_id;
  std::optional<time_point> retry_at;
  attempt_record attempt;
  std::string worker_id{};  ///< empty: whoever holds the lease
};

struct claim_request {
  std::size_t max = 64;
  time_point now{};
  std::chrono::milliseconds lease{60000};
  std::string worker_id;
};

/// For enqueue_claimed(): the publishing process delivers some of the new messages itself, so
/// they are stored already leased to its worker and never need a claim.
struct enqueue_lease {
  std::string worker_id;
  time_point until{};  ///< the lease's end
  std::size_t count =
      0;  ///< how many: the first `count` messages of the batch that are not ordered
};

struct message_query {
  std::optional<message_status> status;
  std::optional<std::string> subscription_id;
  std::optional<time_point> since;  ///< created_at >= since
  std::size_t limit = 1000;
};

struct attempt_query {
  std::optional<std::string> message_id;
  std::optional<std::string> subscription_id;
  std::optional<time_point> since;
  std::size_t limit = 1000;
};

struct store_counts {
  std::size_t pending = 0;
  std::size_t delivered = 0;
  std::size_t dead = 0;
  std::size_t in_flight = 0;  ///< pending with a live lease
};

/// Per-subscription statistics (sensenet's, with failures included).
struct subscription_stats {
  std::size_t calls = 0;  ///< attempts
  std::size_t status_1xx = 0, status_2xx = 0, status_3xx = 0, status_4xx = 0, status_5xx = 0;
  std::size_t failures = 0;  ///< attempts that did not succeed (including network errors)
  std::size_t errors = 0;    ///< attempts without an HTTP response
  std::uint64_t request_bytes = 0, response_bytes = 0;
  double success_rate() const { return calls ? double(status_2xx) / double(calls) : 0.0; }
};

/// Subscription state the dispatcher changes and that must survive restarts.
struct subscription_state {
  std::string subscription_id;
  bool disabled = false;
  std::string reason;
  std::optional<time_point> failing_since;  ///< start of the current failure streak
};

/// The durable outbox. Implementations: memory, SQLite, PostgreSQL (make_store()).
class delivery_store {
 public:
  virtual ~delivery_store() = default;

  /// Stores new pending messages (assigning `sequence`); durable when it returns. A message
  /// whose id is stored already, or comes earlier in the batch, is stored once: it keeps that
  /// message's place (its `sequence` is set to it) and content, so an enqueue the host retries is
  /// harmless. A message without an id or a subscription_id is refused (error naming it) and
  /// nothing of the batch is stored.
  virtual void enqueue(std::vector<message>& batch) = 0;
  /// Like enqueue(), with the first `lease.count` messages that are not ordered stored (in the
  /// same transaction) as claimed by `lease.worker_id` until `lease.until`. Returns, per message
  /// of the batch, whether it was stored so leased (a message whose id was already stored is
  /// not); empty when none was. An ordered message is never leased here: it goes when it is the
  /// head of its subscription. The default stores none leased: they are claimed as usual.
  virtual std::vector<bool> enqueue_claimed(std::vector<message>& batch,
                                            const enqueue_lease& lease) {
    (void)lease;
    enqueue(batch);
    return {};
  }
  /// Leases up to `max` due pending messages (next_attempt_at <= now, no live lease), oldest due
  /// first. An ordered message is only returned when no earlier pending message of its
  /// subscription exists.
  virtual std::vector<message> claim(const claim_request& req) = 0;
  /// The attempt succeeded: status delivered, lease released, attempt recorded.
  virtual void complete(const std::string& id, const attempt_record& a) = 0;
  /// Retry later: still pending, due at `next`, lease released, attempt recorded.
  virtual void reschedule(const std::string& id, time_point next, const attempt_record& a) = 0;
  /// complete() or reschedule() for each result, in order, with one lock or transaction where
  /// the store can (the dispatcher hands over every result of one loop turn at once), a retry
  /// only while the result's worker holds the lease (see attempt_result). May move from
  /// `results`. The default calls complete() and reschedule() one by one, without that check.
  virtual void record_results(std::vector<attempt_result>& results);
  /// Give up: status dead with `reason`; `a` (if any) recorded.
  virtual void dead_letter(const std::string& id, const std::string& reason,
                           const attempt_record* a) = 0;
  /// Like dead_letter(), only while `worker_id` still holds the lease (`a` is recorded either
  /// way): a worker whose lease ran out and went to another worker leaves the message to the
  /// other, whose attempt decides. The dispatcher gives up this way. The default calls
  /// dead_letter().
  virtual void dead_letter_if_held(const std::string& id, const std::string& worker_id,
                                   const std::string& reason, const attempt_record* a) {
    (void)worker_id;
    dead_letter(id, reason, a);
  }
  /// Releases a lease without an attempt (stop, or the endpoint is busy): due again at `next`.
  virtual void release(const std::string& id, time_point next) = 0;
  /// Like release(), only while `worker_id` still holds the lease: a worker whose lease ran out
  /// and went to another worker leaves the other's lease, and the retry time the other set,
  /// alone. The dispatcher releases this way. The default calls release().
  virtual void release_if_held(const std::string& id, const std::string& worker_id,
                               time_point next) {
    (void)worker_id;
    release(id, next);
  }
  /// Releases every lease held by `worker_id` (a clean stop, or a predecessor known dead).
  virtual std::size_t release_worker(const std::string& worker_id) = 0;
  /// Makes a delivered or dead message pending again, due at `now`. False if unknown.
  virtual bool redeliver(const std::string& id, time_point now) = 0;
  /// Makes every dead message of a subscription created since `since` pending; returns the count.
  virtual std::size_t recover(const std::string& subscription_id, time_point since,
                              time_point now) = 0;
  virtual std::optional<message> get(const std::string& id) = 0;
  virtual std::vector<message> query(const message_query& q) = 0;
  virtual std::vector<attempt_record> attempts(const attempt_query& q) = 0;
  /// Every count; the SQL stores count delivered and dead rows too, which grows with retention.
  virtual store_counts counts(time_point now) = 0;
  /// counts().pending alone, at a cost that grows only with the pending messages (the hub asks
  /// it for backpressure and wait_idle()). The default calls counts().
  virtual std::size_t count_pending(time_point now) { return counts(now).pending; }
  virtual subscription_stats stats(const std::string& subscription_id) = 0;
  /// The earliest next_attempt_at among unleased pending messages (the dispatcher sleeps until
  /// then or until woken).
  virtual std::optional<time_point> next_due(time_point now) = 0;
  /// Blocks up to `timeout` for work published by another process (PostgreSQL LISTEN/NOTIFY);
  /// stores without cross-process wake-ups return at once with false.
  virtual bool wait_for_notification(std::chrono::milliseconds timeout) {
    (void)timeout;
    return false;
  }
  virtual void save_state(const subscription_state& s) = 0;
  virtual std::vector<subscription_state> load_states() = 0;
  /// Deletes delivered messages and attempts older than `before`; returns rows removed.
  virtual std::size_t prune(time_point before) = 0;
};

/// A store that passes every call on to the same member of another store. Derive from it to
/// wrap a store (a gate, metrics, tracing) and override what the wrapper changes: every member
/// of delivery_store is forwarded, the ones with a default too (enqueue_claimed(),
/// record_results(), dead_letter_if_held(), release_if_held(), count_pending(),
/// wait_for_notification()), so a wrapper never falls back to a default and loses what the inner
/// store does better (hand-over at publish, one transaction per batch of results, leases that
/// only their holder releases or moves).
/// Mind the pairs: the hub and the dispatcher call enqueue_claimed() as well as enqueue(),
/// record_results() rather than complete() and reschedule(), dead_letter_if_held() rather than
/// dead_letter(), release_if_held() rather than release(), and count_pending() rather than
/// counts(); a wrapper that watches one member of a pair must override the other too. Thread
/// safety: as the inner store.
class forwarding_store : public delivery_store {
 public:
  /// Throws hookline::error when `inner` is null.
  explicit forwarding_store(std::shared_ptr<delivery_store> inner);

  const std::shared_ptr<delivery_store>& inner() const { return inner_; }

  void enqueue(std::vector<message>& batch) override;
  std::vector<bool> enqueue_claimed(std::vector<message>& batch,
                                    const enqueue_lease& lease) override;
  std::vector<message> claim(const claim_request& req) override;
  void complete(const std::string& id, const attempt_record& a) override;
  void reschedule(const std::string& id, time_point next, const attempt_record& a) override;
  void record_results(std::vector<attempt_result>& results) override;
  void dead_letter(const std::string& id, const std::string& reason,
                   const attempt_record* a) override;
  void dead_letter_if_held(const std::string& id, const std::string& worker_id,
                           const std::string& reason, const attempt_record* a) override;
  void release(const std::string& id, time_point next) override;
  void release_if_held(const std::string& id, const std::string& worker_id,
                       time_point next) override;
  std::size_t release_worker(const std::string& worker_id) override;
  bool redeliver(const std::string& id, time_point now) override;
  std::size_t recover(const std::string& subscription_id, time_point since,
                      time_point now) override;
  std::optional<message> get(const std::string& id) override;
  std::vector<message> query(const message_query& q) override;
  std::vector<attempt_record> attempts(const attempt_query& q) override;
  store_counts counts(time_point now) override;
  std::size_t count_pending(time_point now) override;
  subscription_stats stats(const std::string& subscription_id) override;
  std::optional<time_point> next_due(time_point now) override;
  bool wait_for_notification(std::chrono::milliseconds timeout) override;
  void save_state(const subscription_state& s) override;
  std::vector<subscription_state> load_states() override;
  std::size_t prune(time_point before) override;

 private:
  std::shared_ptr<delivery_store> inner_;
};

struct store_options {
  /// Delivered messages and attempts older than this are pruned (dead ones only when replayed).
  std::chrono::hours retention{24 * 30};
  /// The request timeout the store's leases must outlast (make_store refuses a shorter lease).
  std::chrono::milliseconds request_timeout{15000};
  /// Where the store reports reconnects, dropped results and pruning. Default: the logger
  /// registered as "hookline" in spdlog, else none. A hub passes its own `options::logger`.
  std::shared_ptr<spdlog::logger> logger;
};

/// Opens a store from a URI: `memory:`, `sqlite:PATH`, `postgres:CONNINFO`. Throws
/// hookline::error naming the URI (never a password in it) on failure.
std::shared_ptr<delivery_store> make_store(std::string_view uri, const store_options& options = {});

/// A store URI as it may be shown: a conninfo `password=...` or a URI's `user:secret@` masked.
std::string redact_store_uri(std::string_view uri);

}  // namespace hookline
