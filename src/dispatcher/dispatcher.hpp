#pragma once
// The delivery loop. Thread safety: wake(), stop(), in_flight() and idle() are thread safe; the
// loop itself runs on one thread it owns, completions arrive from the transport's thread.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "dispatcher/circuit_breaker.hpp"
#include "hookline/hookline.hpp"
#include "transport/transport.hpp"

namespace hookline::detail {

class signer;

struct dispatch_counters {
  std::atomic<std::uint64_t> delivered{0};
  std::atomic<std::uint64_t> dead{0};
  std::atomic<std::uint64_t> attempts{0};
  std::atomic<std::uint64_t> retries{0};
};

/// Everything the dispatcher borrows from the hub.
struct dispatcher_context {
  hookline::registry* subscriptions = nullptr;
  std::shared_ptr<delivery_store> store;
  std::shared_ptr<hookline::clock> clock;
  std::shared_ptr<spdlog::logger> logger;
  hookline::hooks hooks;
  delivery_options delivery;
  std::string worker_id;
  std::string user_agent;
  dispatch_counters* counters = nullptr;
  /// Called when messages leave the pending state (room for publishers that wait).
  std::function<void(std::size_t)> on_finished;
  /// Called after every loop turn that changed something (wait_idle watchers).
  std::function<void()> on_progress;
  /// True when a persisted state says `sub` was disabled in an earlier run (the first call
  /// disables it in the registry); sets `reason`.
  std::function<bool(const std::shared_ptr<const subscription>& sub, std::string& reason)>
      take_saved_disabled;
};

class dispatcher {
 public:
  explicit dispatcher(dispatcher_context ctx);
  ~dispatcher();
  dispatcher(const dispatcher&) = delete;
  dispatcher& operator=(const dispatcher&) = delete;

  void wake();
  /// Room for up to `n` messages the caller is about to publish and hand over with hand_off():
  /// returns how many it may store leased to this worker (0 while stopping or full).
  std::size_t reserve(std::size_t n);
  /// Gives back `n` reserved places that were not used.
  void unreserve(std::size_t n);
  /// Messages stored leased to this worker (enqueue_claimed()) with a lease that started at
  /// `leased_at`, for `reserved` places taken by reserve(): they are sent without a claim.
  /// Returns what it did not take (after stop() has finished): the caller releases those.
  [[nodiscard]] std::vector<message> hand_off(std::vector<message> messages, std::size_t reserved,
                                              time_point leased_at);
  /// How long a claim (and a message stored leased by hand_off's caller) is leased.
  std::chrono::milliseconds lease() const { return lease_; }
  /// Stops claiming, lets in-flight requests finish for up to `drain_timeout`, cancels the rest
  /// (released to the store without an attempt) and joins. Idempotent.
  void stop(duration drain_timeout);
  /// Requests in flight plus messages claimed and waiting for their endpoint.
  std::size_t busy() const { return busy_.load(); }

 private:
  struct flight {
    message msg;
    std::shared_ptr<const subscription> sub;
    std::string endpoint;
    time_point started{};
    bool probe = false;
  };
  struct waiting {
    message msg;
    std::shared_ptr<const subscription> sub;
    time_point claimed{};
  };
  struct endpoint {
    std::uint64_t id = 0;       // the transport's group
    std::size_t in_flight = 0;  // handed to the transport (waiting there or running)
    bool failing = false;       // the last outcome looked unhealthy
    std::deque<waiting> queue;  // claimed, waiting for a slot or a token
    // Handed over by a publisher of this process while the queue was full: they wait here for
    // room in the queue (pump()) instead of going back to the store. Bounded by handoff_cap_.
    std::deque<waiting> overflow;
    circuit_breaker breaker;
    token_bucket bucket;
    double latency_ms = 0;              // moving average of completed requests, 0 = none yet
    std::multiset<time_point> started;  // of the requests in flight
    time_point deferred_until{};        // when the last message sent back to the store is due
    time_point last_used{};
    time_point last_answer{};  // of its last completed request (the hub's clock)
  };

  void run();
  void turn(time_point now);
  void handle(http_response&& r, time_point now);
  /// `claimed`: when the message was claimed, if earlier than `now` (a parked message).
  /// `handed`: handed over by a publisher (not claimed from the store).
  void route(message m, const std::shared_ptr<const snapshot>& snap, time_point now,
             std::optional<time_point> claimed = std::nullopt, bool handed = false);
  void offer(const std::string& key, endpoint& ep, waiting w, time_point now, bool handed);
  /// True when `ep` has had requests out and no answer for far longer than it takes to answer.
  bool stalled(const endpoint& ep, time_point now) const;
  /// True when `ep`'s overflow may hold what it holds and `more` handed-over messages.
  bool can_hold(const endpoint& ep, time_point now, std::size_t more) const;
  /// How far apart messages sent back to the store for `ep` are due: one slot's turn.
  duration send_back_step(const endpoint& ep, time_point now) const;
  bool try_send(const std::string& key, endpoint& ep, waiting& w, time_point now);
  /// Back to the store, due about when `ep` should have room for it.
  void send_back_later(endpoint& ep, waiting& w, time_point now);
  /// How long a request to `ep` takes now, in milliseconds (0 while unknown).
  double expected_latency_ms(const endpoint& ep, time_point now) const;
  /// How many messages may wait in `ep`'s queue: what it sends in queue_drain at its expected
  /// latency, at least queue_cap_.
  std::size_t queue_limit(const endpoint& ep, time_point now) const;
  void pump(time_point now);
  /// True (and `w` dead) when w's subscription was disabled or removed while it waited: a 410,
  /// the failure timer or the host stopped it. `snap` is fetched on first use.
  bool withdrawn(const waiting& w, std::shared_ptr<const snapshot>& snap, time_point now);
  void defer(waiting& w, time_point at);
  void finish_ordered(const std::string& subscription_id, time_point now);
  /// The subscription has no message in flight any more (and its next may now be claimable).
  void ordered_idle(const std::string& subscription_id);
  /// The subscription has no message in flight any more; its parked ones go back to the store,
  /// due at `at`.
  void release_ordered(const std::string& subscription_id, time_point at);
  void dead(const message& m, const std::string& reason, const attempt_record* a);
  /// Records results_ in the store, then counts and announces delivered_ and lets the next
  /// message of an ordered subscription go.
  void record_results(time_point now);
  void note_failure(const subscription& sub, const std::string& reason, time_point now,
                    bool& disabled);
  void note_success(const std::string& subscription_id);
  /// The registry holds the subscription now, enabled.
  bool enabled_now(const std::string& subscription_id) const;
  void disable(const std::string& subscription_id, const std::string& reason);
  void sweep(time_point now);
  /// Keeps a request the transport handed back, so that the next one reuses its buffers.
  void keep_for_reuse(http_request&& req);
  /// sub's secrets keyed once (cached by subscription id), or null when it has none.
  signer* keys_for(const std::shared_ptr<const subscription>& sub);
  void drain_local(time_point now);
  /// Releases a message to the store, due at `at`.
  void give_back(const std::string& id, time_point at);
  /// The store's next_due(), asked again only when it may have changed: after wake() (a publish
  /// not handed over, a replay), a notification, a claim that found less than it asked for, and
  /// at least every max_poll (other processes' writes); this worker's own releases and retries
  /// are noted as they are made. Saves a store round trip (for SQLite, waiting for the writes
  /// queued ahead) on every turn.
  std::optional<time_point> store_due(time_point now);
  void note_store_due(time_point at);
  /// Routes up to `limit` handed-over messages while there is room.
  void take_inbox(time_point now, std::size_t limit);
  time_point next_wake(time_point now);
  template <class F>
  void call_hook(const char* name, F&& f);

  dispatcher_context ctx_;
  std::chrono::milliseconds lease_;
  std::chrono::milliseconds hold_;  // longest wait in an endpoint's queue before giving it back
  std::size_t queue_cap_;
  circuit_breaker_options breaker_options_;
  std::unique_ptr<transport> transport_;

  struct handed_message {
    message msg;
    time_point leased_at{};  // the hold counts from here, like a claim's
  };

  // Shared with other threads. Held by shared_ptr so that a clock's wake callback, which may
  // outlive the dispatcher, only ever touches live state.
  struct shared {
    std::mutex mutex;
    std::condition_variable cv;
    std::vector<http_response> completions;
    std::vector<handed_message> handed;  // hand_off(), not yet taken by the loop
    std::size_t reserved = 0;            // places reserved and not yet handed over
    std::size_t held = 0;  // the loop's messages (in flight, queued, in inbox_) last turn
    bool woken = false;
    bool store_changed = false;  // wake(): the store may have new due messages
    bool finished = false;       // stop() is done with hand-overs
    bool stopping = false;
    std::chrono::steady_clock::time_point drain_deadline{};
  };
  std::shared_ptr<shared> shared_;
  std::atomic<std::size_t> busy_{0};
  std::mutex stop_mutex_;
  bool stopped_ = false;
  std::thread thread_;

  // Dispatcher thread only.
  std::unordered_map<std::uint64_t, flight> flights_;
  // Ids of the messages in flights_: a claim can hand back one of them when its lease ran out
  // while its request was under way (a stalled process); that one is not sent again. The views
  // point into flights_' nodes (stable until erased): no copy of the id per request.
  std::unordered_set<std::string_view> flying_ids_;
  std::deque<handed_message> inbox_;          // handed over by publishers, routed as room allows
  std::vector<http_request> outbox_;          // started this turn, submitted at its end
  std::vector<http_request> spare_requests_;  // handed back by the transport, for reuse
  static constexpr std::size_t max_spare_requests = 4096;
  static constexpr std::size_t max_spare_body = 64 * 1024;
  static constexpr std::size_t max_spare_bytes = 8 * 1024 * 1024;  // bodies and URLs kept, in all
  std::size_t spare_bytes_ = 0;
  std::vector<attempt_result> results_;  // of this turn's completions, recorded at once
  std::vector<message> delivered_;       // their delivered messages, announced once recorded
  struct keyed_subscription {
    std::shared_ptr<const subscription> sub;  // the version the keys were made from
    std::unique_ptr<signer> keys;
  };
  std::unordered_map<std::string, keyed_subscription> signers_;  // by subscription id
  std::unordered_map<std::string, endpoint> endpoints_;
  std::unordered_set<std::string> waiting_endpoints_;
  std::unordered_set<std::string> ordered_busy_;
  struct parked {
    message msg;
    time_point claimed{};
  };
  std::unordered_map<std::string, std::deque<parked>> parked_;
  struct failing {
    time_point since{};
    bool saved = false;
  };
  std::unordered_map<std::string, failing> failing_;
  // Subscriptions this dispatcher disabled, as the registry held them right after: a later
  // answer of a request sent before does not disable (and announce) them again.
  std::unordered_map<std::string, std::shared_ptr<const subscription>> disabled_here_;
  std::uint64_t next_token_ = 1;
  std::uint64_t next_endpoint_id_ = 1;
  std::size_t flight_cap_ = 1;    // requests handed to the transport, in total
  std::size_t claim_cap_ = 1;     // messages claimed and not finished (in flight or queued)
  std::size_t endpoint_cap_ = 1;  // and per endpoint
  std::size_t handoff_cap_ = 1;   // messages held here (claimed or handed over) in all
  bool draining_ = false;
  bool had_subscriptions_ = false;  // the registry has held a subscription since the start
  std::size_t in_flight_ = 0;
  std::size_t waiting_ = 0;
  std::mt19937_64 rng_;
  std::size_t parked_count_ = 0;
  std::size_t overflow_count_ = 0;  // in all endpoints' overflow lists
  std::size_t deferrals_ = 0;
  std::size_t claim_limit_ = 256;
  std::chrono::steady_clock::time_point claim_pause_until_{};
  bool due_known_ = false;
  bool ordered_moved_ = false;  // an ordered subscription's next message may be claimable
  std::optional<time_point> due_cache_;
  std::chrono::steady_clock::time_point next_probe_{};
  std::chrono::steady_clock::time_point last_sweep_{};
  std::chrono::steady_clock::time_point last_error_log_{};
};

}  // namespace hookline::detail
