#pragma once
// hookline: embeddable webhook dispatch. This is the umbrella header and the hub facade.
// Thread safety: every hub method is thread safe; hooks are called from the dispatcher thread
// and must not call stop() or destroy the hub.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/logger.h>

#include "hookline/clock.hpp"
#include "hookline/error.hpp"
#include "hookline/event.hpp"
#include "hookline/filter.hpp"
#include "hookline/json.hpp"
#include "hookline/payload.hpp"
#include "hookline/registry.hpp"
#include "hookline/retry.hpp"
#include "hookline/signing.hpp"
#include "hookline/store.hpp"
#include "hookline/subscription.hpp"

namespace hookline {

/// The library version, e.g. "0.1.0".
std::string_view version();

/// What publish() does when `queue_capacity` messages are pending (in any store).
enum class overflow_policy {
  block,  ///< wait until the dispatcher makes room
  reject  ///< throw queue_full_error; nothing from that call is enqueued
};

class queue_full_error : public error {
 public:
  using error::error;
};

struct circuit_breaker_options {
  bool enabled = true;
  std::size_t failure_streak = 10;                ///< consecutive failures that open the breaker
  double failure_rate = 0.7;                      ///< or this failure rate ...
  std::size_t min_requests = 10;                  ///< ... over at least this many requests ...
  duration window = std::chrono::minutes(5);      ///< ... in this window
  duration cool_down = std::chrono::seconds(30);  ///< then one probe is let through
};

/// hub() refuses values that cannot work (a zero timeout or concurrency, a jitter outside 0..1,
/// a negative delay, ...) with a hookline::error that names the field.
struct delivery_options {
  retry_policy retry;
  duration connect_timeout = std::chrono::seconds(5);
  duration request_timeout = std::chrono::seconds(15);
  std::size_t max_in_flight = 512;        ///< requests in flight in total
  std::size_t endpoint_concurrency = 16;  ///< requests in flight per endpoint (URL)
  circuit_breaker_options breaker;
  /// Disable a subscription that has failed continuously for this long (0 = never).
  duration auto_disable_after = std::chrono::hours(24 * 5);
  /// SSRF guard: loopback, private, link-local, ... addresses are refused unless allowed.
  bool allow_private_networks = false;
  std::vector<std::string> allowed_cidrs;  ///< always permitted, e.g. "10.1.0.0/16"
  bool verify_tls = true;
  std::string ca_file;                     ///< extra CA bundle (PEM), optional
  std::string proxy;                       ///< e.g. "http://proxy:3128", optional
  std::size_t max_response_bytes = 20000;  ///< kept in the attempt log
  std::string user_agent;  ///< default "hookline/<version>"; CR, LF or NUL is an error
};

/// Called on the dispatcher thread, one at a time, until stop() or the destructor returns: the
/// destructor lets requests in flight finish for a moment and reports them. State a hook uses
/// must outlive the hub (declare the hub after it in a class, or call stop() first). A hook must
/// not call stop() or destroy the hub; what it throws is logged and ignored.
struct hooks {
  std::function<void(const attempt_record&)> on_attempt;
  std::function<void(const message&)> on_delivered;
  std::function<void(const message&, const std::string& reason)> on_dead;
  std::function<void(const std::string& subscription_id, const std::string& reason)>
      on_subscription_disabled;
};

struct options {
  /// `memory:`, `sqlite:PATH` or `postgres:CONNINFO`; ignored when `store_instance` is set.
  std::string store = "memory:";
  std::shared_ptr<delivery_store> store_instance;
  store_options store_settings;
  registry_options registry;
  delivery_options delivery;
  hookline::hooks hooks;
  /// Run the dispatcher (false = publish only, e.g. `hookline publish`).
  bool dispatch = true;
  /// Unique per process; used for leases. Default: host name + pid + random suffix.
  std::string worker_id;
  std::string repository;  ///< `repository` in the default body; default: the host name
  std::size_t queue_capacity = 1000000;  ///< pending messages publish() lets wait, in any store
  overflow_policy overflow = overflow_policy::block;
  /// Default: the logger registered in spdlog as "hookline", else one without sinks. The hub's
  /// store (one it opens from `store`) logs through it too.
  std::shared_ptr<spdlog::logger> logger;
  std::shared_ptr<hookline::clock> clock;  ///< default: the system clock
};

struct publish_result {
  std::vector<std::string> message_ids;  ///< one per matching subscription
};

struct hub_counters {
  std::uint64_t published = 0;  ///< events
  std::uint64_t messages = 0;   ///< messages created
  std::uint64_t delivered = 0;
  std::uint64_t dead = 0;
  std::uint64_t attempts = 0;
  std::uint64_t retries = 0;
  std::uint64_t rejected = 0;  ///< publish calls refused (queue full)
};

/// The facade: owns the registry, the store and the dispatcher.
class hub {
 public:
  explicit hub(options opts = {});
  /// Stops with a short drain (see stop()), during which hooks may still run; safe at any time.
  ~hub();
  hub(const hub&) = delete;
  hub& operator=(const hub&) = delete;

  hookline::registry& subscriptions();
  delivery_store& store();

  /// Matches, creates one message per matching subscription, enqueues, wakes the dispatcher.
  /// Returns once the messages are stored (committed, for a durable store). Never waits on the
  /// network. A known event name is written in the catalog's spelling ("create" as "Create").
  /// Throws hookline::error after stop(), and for an event without a name or named "All"
  /// (naming it; nothing of the batch is enqueued then).
  publish_result publish(const event& e);
  publish_result publish(std::span<const event> events);
  /// sensenet's FireWebHook: sends `e` to one subscription, bypassing its filter (not its
  /// enabled flag). Returns the message id. Throws hookline::error for an unknown id.
  std::string fire(std::string_view subscription_id, const event& e);

  /// Makes a delivered or dead message pending again. False if unknown.
  bool redeliver(const std::string& message_id);
  /// Re-queues every dead message of a subscription created since `since`.
  std::size_t recover(const std::string& subscription_id, time_point since);

  /// Blocks until nothing is pending (or `timeout`); true when drained.
  bool wait_idle(duration timeout);
  /// Stops intake, lets in-flight requests finish within `drain_timeout`, releases the rest (they
  /// stay pending in the store). Idempotent.
  void stop(duration drain_timeout = std::chrono::seconds(5));

  hub_counters counters() const;
  const options& settings() const;

 private:
  class impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace hookline
