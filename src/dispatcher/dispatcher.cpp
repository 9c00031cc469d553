#include "dispatcher/dispatcher.hpp"

#include <pthread.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>

#include "dispatcher/request.hpp"
#include "signer.hpp"

namespace hookline::detail {

namespace {

using steady = std::chrono::steady_clock;
using std::chrono::duration_cast;
using std::chrono::milliseconds;

constexpr milliseconds max_poll{100};  // longest real wait, so a manual clock never deadlocks
constexpr std::size_t max_claim = 256;
constexpr std::size_t poll_engine_limit = 256;
// How long the oldest handed-over message waits before due messages in the store get a share of
// the room (turn()).
constexpr milliseconds inbox_backlog{100};
// A fast endpoint may queue here what it sends in this long (queue_limit()).
constexpr milliseconds queue_drain{250};
// An endpoint silent for longer than this (and ten times its usual answer time) while it has
// requests out gives back the handed-over messages waiting for it.
constexpr milliseconds stall_floor{500};
// Requests handed to the transport per running slot, in total and per endpoint. The transport
// runs at most max_in_flight (endpoint_concurrency per endpoint) at once and starts the next
// waiting one the moment a slot frees, so the slots stay busy while this thread handles
// completions and prepares requests (it may be waiting for a core).
constexpr std::size_t submit_depth = 2;

std::string iso(time_point t) {
  return format_iso8601(t);
}

}  // namespace

dispatcher::dispatcher(dispatcher_context ctx)
    : ctx_(std::move(ctx)), shared_(std::make_shared<shared>()), rng_(std::random_device{}()) {
  const auto& d = ctx_.delivery;
  // A claimed message waits at most hold_ in its endpoint's queue here (then it is given back).
  // Handed to the transport, it waits at most two request timeouts for its endpoint (the
  // requests admitted ahead of it each wait at most one for a global slot and run at most one),
  // one for a global slot, and runs at most one: the lease outlasts all of that.
  hold_ = duration_cast<milliseconds>(d.request_timeout + std::chrono::seconds(5));
  lease_ = hold_ + duration_cast<milliseconds>(d.request_timeout * 4 + std::chrono::seconds(5));
  flight_cap_ = std::max<std::size_t>(1, d.max_in_flight) * submit_depth;
  // One more round of messages is claimed ahead and waits in the endpoint queues, so a slow
  // claim (a store busy committing) does not leave the transport without work.
  claim_cap_ = flight_cap_ + std::max<std::size_t>(1, d.max_in_flight);
  endpoint_cap_ = std::max<std::size_t>(1, d.endpoint_concurrency) * submit_depth;
  // Publishers of this process hand their messages over directly (stored leased to this worker,
  // no claim): up to one more claim's worth, at least 1,024, wait here for room.
  handoff_cap_ = claim_cap_ + std::max<std::size_t>(claim_cap_, 1024);
  queue_cap_ = std::max<std::size_t>(32, d.endpoint_concurrency * 2);
  claim_limit_ = std::clamp<std::size_t>(d.max_in_flight, 1, max_claim);
  // An open breaker never holds a message longer than its retry schedule would have: with
  // sub-second schedules (tests, `--retry-schedule 0.2,...`) a 30 s cool-down would stall them.
  breaker_options_ = d.breaker;
  if (!d.retry.schedule.empty()) {
    const auto longest = *std::max_element(d.retry.schedule.begin(), d.retry.schedule.end());
    if (longest.count() > 0 && longest < breaker_options_.cool_down)
      breaker_options_.cool_down = longest;
  }
  for (const auto& s : ctx_.store->load_states())
    if (!s.disabled && s.failing_since) failing_[s.subscription_id] = {*s.failing_since, true};

  transport_options to;
  to.allow_private_networks = d.allow_private_networks;
  to.allowed_cidrs = d.allowed_cidrs;
  to.verify_tls = d.verify_tls;
  to.ca_file = d.ca_file;
  to.proxy = d.proxy;
  to.max_response_bytes = d.max_response_bytes;
  to.user_agent = ctx_.user_agent;
  to.max_connections = std::max<std::size_t>(d.max_in_flight, 16);
  to.max_running = std::max<std::size_t>(1, d.max_in_flight);
  // perform + poll visits every running transfer per wake-up but costs fewer system calls per
  // request, and is 10-20 % faster up to a few hundred transfers (measurements.md); the cap on
  // requests in flight bounds what it visits. Beyond that the sharded epoll engine scales.
  to.engine = d.max_in_flight <= poll_engine_limit ? loop_engine::poll : loop_engine::epoll;
  shared* sh = shared_.get();
  transport_ = std::make_unique<transport>(
      std::move(to), transport::batch_completion([sh](std::vector<http_response>&& batch) {
        std::lock_guard lock(sh->mutex);
        // The loop takes all completions at once: only a batch that finds none waiting needs
        // to wake it.
        const bool was_empty = sh->completions.empty();
        if (was_empty) {
          sh->completions.swap(batch);
        } else {
          for (auto& r : batch) sh->completions.push_back(std::move(r));
        }
        if (was_empty) sh->cv.notify_one();
      }),
      ctx_.logger);
  ctx_.clock->on_advance([weak = std::weak_ptr<shared>(shared_)] {
    if (auto s = weak.lock()) {
      std::lock_guard lock(s->mutex);
      s->woken = true;
      s->cv.notify_one();
    }
  });
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "hookline-disp");  // for top, perf and gdb
    run();
  });
}

dispatcher::~dispatcher() {
  stop(std::chrono::milliseconds(0));
}

void dispatcher::wake() {
  std::lock_guard lock(shared_->mutex);
  shared_->woken = true;
  shared_->store_changed = true;
  shared_->cv.notify_one();
}

void dispatcher::give_back(const std::string& id, time_point at) {
  ctx_.store->release_if_held(id, ctx_.worker_id, at);
  note_store_due(at);
}

std::optional<time_point> dispatcher::store_due(time_point now) {
  const auto t = steady::now();
  if (!due_known_ || t >= next_probe_) {
    due_cache_ = ctx_.store->next_due(now);
    due_known_ = true;
    next_probe_ = t + max_poll;
  }
  return due_cache_;
}

void dispatcher::note_store_due(time_point at) {
  if (due_known_ && (!due_cache_ || at < *due_cache_)) due_cache_ = at;
}

std::size_t dispatcher::reserve(std::size_t n) {
  auto& sh = *shared_;
  std::lock_guard lock(sh.mutex);
  if (sh.stopping) return 0;
  const std::size_t used = sh.held + sh.reserved + sh.handed.size();
  const std::size_t k = used >= handoff_cap_ ? 0 : std::min(n, handoff_cap_ - used);
  sh.reserved += k;
  return k;
}

void dispatcher::unreserve(std::size_t n) {
  auto& sh = *shared_;
  std::lock_guard lock(sh.mutex);
  sh.reserved -= std::min(n, sh.reserved);
  sh.cv.notify_all();  // stop() may wait for the reservations to end
}

std::vector<message> dispatcher::hand_off(std::vector<message> messages, std::size_t reserved,
                                          time_point leased_at) {
  auto& sh = *shared_;
  std::lock_guard lock(sh.mutex);
  sh.reserved -= std::min(reserved, sh.reserved);
  if (sh.finished) {
    sh.cv.notify_all();
    return messages;  // stop() has given up waiting: the caller gives them back
  }
  sh.handed.reserve(sh.handed.size() + messages.size());
  for (auto& m : messages) sh.handed.push_back({std::move(m), leased_at});
  sh.woken = true;
  sh.cv.notify_all();
  return {};
}

void dispatcher::stop(duration drain_timeout) {
  std::lock_guard guard(stop_mutex_);
  if (stopped_) return;
  {
    std::lock_guard lock(shared_->mutex);
    shared_->stopping = true;
    shared_->drain_deadline = steady::now() + drain_timeout;
    shared_->cv.notify_one();
  }
  if (thread_.joinable()) thread_.join();
  transport_.reset();
  // A publisher that reserved places before `stopping` may still be committing: wait for it
  // (bounded), then give back what it handed over after the loop's last look, so that nothing
  // stays leased to this worker until its lease runs out.
  std::vector<handed_message> late;
  {
    std::unique_lock lock(shared_->mutex);
    shared_->cv.wait_for(lock, std::chrono::seconds(5), [&] { return shared_->reserved == 0; });
    late.swap(shared_->handed);
    shared_->finished = true;  // later hand-overs go back to their publisher
  }
  const auto now = ctx_.clock->now();
  for (const auto& h : late) {
    try {
      ctx_.store->release_if_held(h.msg.id, ctx_.worker_id, now);
    } catch (const std::exception& e) {
      ctx_.logger->error("dispatcher: giving back {}: {}", h.msg.id, e.what());
    }
  }
  stopped_ = true;
}

template <class F>
void dispatcher::call_hook(const char* name, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    ctx_.logger->error("hook {} threw: {}", name, e.what());
  } catch (...) {
    ctx_.logger->error("hook {} threw a non-standard exception", name);
  }
}

void dispatcher::run() {
  auto& sh = *shared_;
  bool transport_stopped = false;
  steady::time_point hard_deadline{};
  while (true) {
    std::vector<http_response> done;
    std::vector<handed_message> handed;
    bool stopping = false;
    steady::time_point drain_deadline;
    {
      std::lock_guard lock(sh.mutex);
      done.swap(sh.completions);
      handed.swap(sh.handed);
      if (sh.store_changed) due_known_ = false;  // a publish that was not handed over, a replay
      sh.store_changed = false;
      sh.held =
          in_flight_ + waiting_ + parked_count_ + overflow_count_ + inbox_.size() + handed.size();
      sh.woken = false;
      stopping = sh.stopping;
      drain_deadline = sh.drain_deadline;
    }
    for (auto& m : handed) inbox_.push_back(std::move(m));
    const auto now = ctx_.clock->now();
    draining_ = stopping;
    bool failed = false;
    try {
      // One response whose handling throws (a failing store) must not strand the others.
      std::exception_ptr first_error;
      for (auto& r : done) {
        try {
          handle(std::move(r), now);
        } catch (...) {
          if (!first_error) first_error = std::current_exception();
        }
      }
      if (first_error) std::rethrow_exception(first_error);
      record_results(now);
      if (stopping) {
        drain_local(now);
      } else {
        turn(now);
      }
    } catch (const std::exception& e) {
      failed = true;
      // A store that lost its database keeps failing; one line a second is enough.
      if (steady::now() - last_error_log_ > std::chrono::seconds(1)) {
        ctx_.logger->error("dispatcher: {}", e.what());
        last_error_log_ = steady::now();
      }
    }
    // Everything this turn started goes to the transport at once: one lock, one wake-up.
    if (!outbox_.empty()) transport_->submit(std::move(outbox_));
    busy_.store(in_flight_ + waiting_ + parked_count_ + overflow_count_ + inbox_.size());
    if (!done.empty() && ctx_.on_progress) ctx_.on_progress();

    milliseconds wait = max_poll;
    if (stopping) {
      if (in_flight_ == 0) break;
      const auto t = steady::now();
      if (!transport_stopped && t >= drain_deadline) {
        transport_->stop();  // what is left completes as cancelled and is released
        transport_stopped = true;
        hard_deadline = t + std::chrono::seconds(5);
      }
      if (transport_stopped && t >= hard_deadline) {
        ctx_.logger->error("dispatcher: {} requests did not finish after cancel", in_flight_);
        break;
      }
      if (!transport_stopped)
        wait =
            std::clamp(duration_cast<milliseconds>(drain_deadline - t), milliseconds(1), max_poll);
    } else if (failed) {
      wait = milliseconds(250);
    } else {
      const auto at = next_wake(now);
      wait = at <= now
                 ? milliseconds(0)
                 : std::min(max_poll, duration_cast<milliseconds>(at - now) + milliseconds(1));
      bool news = false;  // arrived since the top of this turn: no NOTIFY would announce it
      {
        std::lock_guard lock(sh.mutex);
        news = sh.woken || !sh.completions.empty() || !sh.handed.empty() || sh.reserved > 0;
      }
      if (wait.count() > 0 && in_flight_ == 0 && waiting_ == 0 && overflow_count_ == 0 && !news) {
        // Nothing here can complete, so listening for another process's NOTIFY costs no local
        // latency except a publish from this process while we listen (bounded by `wait`).
        const auto t0 = steady::now();
        try {
          if (ctx_.store->wait_for_notification(wait)) {
            due_known_ = false;  // another process published
            continue;
          }
        } catch (const std::exception& e) {
          ctx_.logger->error("dispatcher: waiting for notifications: {}", e.what());
        }
        wait -= std::min(wait, duration_cast<milliseconds>(steady::now() - t0));
      }
    }
    if (wait.count() <= 0) continue;
    std::unique_lock lock(sh.mutex);
    sh.cv.wait_for(lock, wait,
                   [&] { return sh.woken || !sh.completions.empty() || sh.stopping != stopping; });
  }
  try {
    record_results(ctx_.clock->now());  // what the last turn left, if a store error stopped it
    // Handed over too late to go: back to the store (reserve() refuses once stopping).
    std::vector<handed_message> late;
    {
      std::lock_guard lock(sh.mutex);
      late.swap(sh.handed);
    }
    for (auto& h : late) inbox_.push_back(std::move(h));
    const auto now = ctx_.clock->now();
    while (!inbox_.empty()) {
      const auto id = std::move(inbox_.front().msg.id);
      inbox_.pop_front();
      give_back(id, now);
    }
  } catch (const std::exception& e) {
    ctx_.logger->error("dispatcher: {}", e.what());
  }
  busy_.store(0);
  if (ctx_.on_progress) ctx_.on_progress();
}

void dispatcher::turn(time_point now) {
  const auto t = steady::now();
  if (t - last_sweep_ > std::chrono::seconds(30)) {
    sweep(now);
    last_sweep_ = t;
  }
  pump(now);
  // What pump() started goes now: the check below and the claims may wait on the store.
  if (!outbox_.empty()) transport_->submit(std::move(outbox_));
  // Handed-over messages and due messages in the store share the room in time order. Once the
  // oldest handed-over message has waited here a while (publishing outruns delivery), and the
  // store has a message due before it (a retry, an ordered message, what did not fit, another
  // process's message), the inbox takes at most half of the room, so sustained publishing cannot
  // starve them. Not before, and the store is asked again only when the periodic look is due or
  // an ordered subscription moved on: asking may wait for its writer, and a publish that did not
  // fit (which invalidates the cached answer) is newer than the inbox anyway.
  std::size_t inbox_limit = std::numeric_limits<std::size_t>::max();
  if (!inbox_.empty() && inbox_.front().leased_at + inbox_backlog <= now &&
      t >= claim_pause_until_ && in_flight_ + waiting_ < claim_cap_ &&
      ctx_.subscriptions->current()->size() != 0 &&
      (due_known_ || t >= next_probe_ || ordered_moved_)) {
    ordered_moved_ = false;
    const auto due = store_due(now);
    if (due && *due <= now && *due < inbox_.front().msg.next_attempt_at) {
      const std::size_t room = claim_cap_ - (in_flight_ + waiting_);
      inbox_limit = room / 2;
    }
  }
  take_inbox(now, inbox_limit);
  // What take_inbox() started goes now: the claims below may wait on the store.
  if (!outbox_.empty()) transport_->submit(std::move(outbox_));
  // With no subscriptions every claimed message would die as "subscription removed": a hub
  // opened on a store with pending messages waits until the host has loaded its subscriptions.
  // Once it has had some, an empty registry means they were removed, and their messages die.
  if (!had_subscriptions_) {
    if (ctx_.subscriptions->current()->size() == 0) return;
    had_subscriptions_ = true;
  }
  for (int round = 0; round < 8 && in_flight_ + waiting_ < claim_cap_ && t >= claim_pause_until_;
       ++round) {
    const auto due = store_due(now);
    if (!due || *due > now) break;
    claim_request req;
    req.max = std::min(claim_cap_ - (in_flight_ + waiting_), claim_limit_);
    req.now = now;
    req.lease = lease_;
    req.worker_id = ctx_.worker_id;
    auto batch = ctx_.store->claim(req);
    if (batch.empty()) {
      // Due but not claimable (leased elsewhere): do not spin on it.
      claim_pause_until_ = t + milliseconds(50);
      due_known_ = false;
      break;
    }
    const auto snap = ctx_.subscriptions->current();
    const auto deferrals_before = deferrals_;
    const auto n = batch.size();
    for (auto& m : batch) {
      // Our own request for it is still under way, its lease ran out meanwhile: the claim has
      // renewed the lease to this worker, and that request's result settles the message.
      if (flying_ids_.contains(m.id)) continue;
      route(std::move(m), snap, now);
    }
    const auto deferred = deferrals_ - deferrals_before;
    // Claiming what cannot go only churns the store: shrink the claims while most of them are
    // sent back, grow them again when they go out.
    if (deferred * 2 > n)
      claim_limit_ = std::max<std::size_t>(8, claim_limit_ / 2);
    else
      claim_limit_ = std::min(std::min(max_claim, claim_cap_), claim_limit_ * 2);
    if (deferred == n) {
      claim_pause_until_ = t + milliseconds(50);
      break;
    }
    if (n < req.max) {
      due_known_ = false;  // nothing else is due now; ask when something will be
      break;
    }
  }
}

void dispatcher::take_inbox(time_point now, std::size_t limit) {
  if (inbox_.empty()) return;
  const auto snap = ctx_.subscriptions->current();
  for (std::size_t n = 0; n < limit && !inbox_.empty() && in_flight_ + waiting_ < claim_cap_; ++n) {
    handed_message h = std::move(inbox_.front());
    inbox_.pop_front();
    // Leased since it was stored: the hold counts from then, like a claim's.
    route(std::move(h.msg), snap, now, std::min(h.leased_at, now), true);
  }
}

void dispatcher::route(message m, const std::shared_ptr<const snapshot>& snap, time_point now,
                       std::optional<time_point> claimed, bool handed) {
  if (draining_) {
    give_back(m.id, now);  // stopping: nothing new starts
    return;
  }
  auto sub = snap->find(m.subscription_id);
  if (!sub) {
    dead(m, "subscription removed", nullptr);
    return;
  }
  if (!sub->enabled) {
    dead(m, "subscription disabled", nullptr);
    return;
  }
  std::string saved_reason;
  if (ctx_.take_saved_disabled && ctx_.take_saved_disabled(sub, saved_reason)) {
    dead(m, "subscription disabled: " + saved_reason, nullptr);
    return;
  }
  if (m.ordered) {
    if (ordered_busy_.count(m.subscription_id) != 0) {
      // Only possible after a replay moved an older message to the head: hold it until the
      // message in flight finishes, so one at a time still holds.
      parked_[m.subscription_id].push_back({std::move(m), claimed.value_or(now)});
      ++parked_count_;
      return;
    }
    ordered_busy_.insert(m.subscription_id);
  }
  const std::string key = sub->url;
  auto [it, created] = endpoints_.try_emplace(key);
  auto& ep = it->second;
  if (created) {
    ep.breaker.configure(breaker_options_);
    ep.id = next_endpoint_id_++;
  }
  offer(key, ep, waiting{std::move(m), std::move(sub), claimed.value_or(now)}, now, handed);
}

void dispatcher::offer(const std::string& key, endpoint& ep, waiting w, time_point now,
                       bool handed) {
  if (w.claimed + hold_ <= now) {
    defer(w, now);  // held (parked) long enough that its lease is at risk: give it back
    return;
  }
  if (ep.queue.empty() && try_send(key, ep, w, now)) return;
  if (ep.breaker.is_open(now)) {
    defer(w, ep.breaker.open_until());
    return;
  }
  // A handed-over message is already here: while its endpoint answers, it waits for room
  // rather than going to the store and back. On a loaded machine a fast endpoint's queue limit
  // falls and rises with the time the process gets a core; sending what did not fit back to the
  // store (due after everything sent back before it) left the endpoint idle for seconds.
  ep.bucket.configure(w.sub->rate_limit, now);  // for can_hold(), before any send set it
  if (handed && (!ep.overflow.empty() || ep.queue.size() >= queue_limit(ep, now)) &&
      can_hold(ep, now, 1)) {
    ep.overflow.push_back(std::move(w));
    ++overflow_count_;
    waiting_endpoints_.insert(key);
    return;
  }
  if (ep.queue.size() < queue_limit(ep, now)) {
    ep.queue.push_back(std::move(w));
    ++waiting_;
    waiting_endpoints_.insert(key);
    return;
  }
  send_back_later(ep, w, now);
}

bool dispatcher::can_hold(const endpoint& ep, time_point now, std::size_t more) const {
  // Not a rate-limited endpoint, nor one too slow to send its queue and overflow well within
  // hold_: what waits here longer only uses the hand-over room and goes back in the end.
  if (ep.bucket.rate() > 0 || stalled(ep, now)) return false;
  const double slots = double(std::max<std::size_t>(1, ctx_.delivery.endpoint_concurrency));
  const double backlog = double(ep.queue.size() + ep.overflow.size() + more);
  return backlog * ep.latency_ms / slots <
         std::chrono::duration<double, std::milli>(hold_).count() / 2;
}

bool dispatcher::stalled(const endpoint& ep, time_point now) const {
  if (ep.started.empty()) return false;
  const auto quiet = now - std::max(ep.last_answer, *ep.started.begin());
  return quiet > std::max<duration>(
                     stall_floor, duration_cast<duration>(std::chrono::duration<double, std::milli>(
                                      10.0 * ep.latency_ms)));
}

void dispatcher::send_back_later(endpoint& ep, waiting& w, time_point now) {
  // The endpoint's queue is full: back to the store, due about when the endpoint should have
  // room: after its queue, and one slot's turn after the last message sent back while that one
  // is still ahead, so they do not all return at once. Not after every message ever sent back:
  // during a long burst the queue never empties, and that count pushed the due times ever
  // further out (seconds, for a local endpoint on a loaded machine, which then sat idle).
  const auto queued = static_cast<std::int64_t>(ep.queue.size() + ep.overflow.size());
  time_point at;
  if (!ep.bucket.available(now)) {
    const auto step =
        duration_cast<duration>(std::chrono::duration<double>(1.0 / ep.bucket.rate()));
    at = std::max(ep.bucket.next_token(now) + step * queued, ep.deferred_until + step);
  } else {
    const auto step = send_back_step(ep, now);
    at = std::max(now + step * (queued + 1), ep.deferred_until + step);
    at = std::clamp<time_point>(at, now + milliseconds(10), now + lease_);
  }
  ep.deferred_until = at;
  defer(w, at);
}

duration dispatcher::send_back_step(const endpoint& ep, time_point now) const {
  // The measured answer time while the endpoint answers: the age of the oldest request in
  // flight includes its wait for a slot, about twice that for a busy healthy endpoint.
  const double latency_ms =
      ep.latency_ms > 0 && !stalled(ep, now) ? ep.latency_ms : expected_latency_ms(ep, now);
  const double slots = double(std::max<std::size_t>(1, ctx_.delivery.endpoint_concurrency));
  return duration_cast<duration>(std::chrono::duration<double, std::milli>(latency_ms / slots));
}

double dispatcher::expected_latency_ms(const endpoint& ep, time_point now) const {
  // The moving average, or longer while the oldest request in flight has been waiting longer:
  // an endpoint that stopped answering has no new latency to show for it.
  double latency_ms = ep.latency_ms;
  if (!ep.started.empty())
    latency_ms = std::max(
        latency_ms, std::chrono::duration<double, std::milli>(now - *ep.started.begin()).count());
  return latency_ms;
}

std::size_t dispatcher::queue_limit(const endpoint& ep, time_point now) const {
  // An endpoint that answers quickly drains a long queue in moments: it may hold what it sends
  // in queue_drain, up to all the room claims have. Otherwise a burst for one fast endpoint
  // went back to the store, and each claim that found only its messages paused claiming: the
  // endpoint sat idle most of the time (1,300 messages/s to a local nginx). A rate-limited or
  // not yet measured endpoint keeps the fixed cap. An endpoint that answers with errors keeps
  // its queue too (each answer is an attempt; its circuit breaker sends the queue back when it
  // opens), and one that stops answering looks slow at once (below).
  if (ep.latency_ms <= 0 || ep.bucket.rate() > 0) return queue_cap_;
  // An endpoint that stops answering has no new latency to show for it: the time since its
  // last answer (or since its oldest request went, if later) tells. Not the age of the oldest
  // request alone: a request waits in the transport for a slot first, which doubles it for an
  // endpoint that answers well.
  double latency_ms = ep.latency_ms;
  if (!ep.started.empty()) {
    const auto quiet = now - std::max(ep.last_answer, *ep.started.begin());
    latency_ms = std::max(latency_ms, std::chrono::duration<double, std::milli>(quiet).count());
  }
  const double slots = double(std::max<std::size_t>(1, ctx_.delivery.endpoint_concurrency));
  const double per_drain =
      slots * std::chrono::duration<double, std::milli>(queue_drain).count() / latency_ms;
  return std::max(queue_cap_, static_cast<std::size_t>(std::min(per_drain, double(claim_cap_))));
}

bool dispatcher::try_send(const std::string& key, endpoint& ep, waiting& w, time_point now) {
  const auto& d = ctx_.delivery;
  if (in_flight_ >= flight_cap_) return false;
  // Requests wait in the transport only for an endpoint whose last answer was healthy: after a
  // failure each one waits for the outcome of the last, so a breaker opens before more go.
  if (ep.in_flight >=
      (ep.failing ? std::max<std::size_t>(1, d.endpoint_concurrency) : endpoint_cap_))
    return false;
  if (!ep.breaker.allows(now)) return false;
  ep.bucket.configure(w.sub->rate_limit, now);
  if (!ep.bucket.try_take(now)) return false;
  const auto ts = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  http_request req;
  if (!spare_requests_.empty()) {
    req = std::move(spare_requests_.back());
    spare_requests_.pop_back();
    spare_bytes_ -= std::min(spare_bytes_, req.body.capacity() + req.url.capacity());
  }
  try {
    build_request(req, w.msg, *w.sub, ts, d, keys_for(w.sub));
  } catch (const std::exception& e) {
    dead(w.msg, std::string("cannot build the request: ") + e.what(), nullptr);
    if (w.msg.ordered) finish_ordered(w.msg.subscription_id, now);
    return true;
  }
  req.token = next_token_++;
  req.group = ep.id;
  req.group_limit = std::max<std::size_t>(1, d.endpoint_concurrency);
  flight f;
  f.probe = ep.breaker.on_start(now);
  f.msg = std::move(w.msg);
  f.sub = std::move(w.sub);
  f.endpoint = key;
  f.started = now;
  ++ep.in_flight;
  ++in_flight_;
  ep.last_used = now;
  ep.started.insert(now);
  const auto placed = flights_.emplace(req.token, std::move(f)).first;
  flying_ids_.insert(placed->second.msg.id);
  outbox_.push_back(std::move(req));
  return true;
}

void dispatcher::keep_for_reuse(http_request&& req) {
  // As many as can be in flight at once, and none holding a large body: the pool saves
  // allocations, it must not hold on to memory.
  if (spare_requests_.size() >= std::min(flight_cap_, max_spare_requests) ||
      req.body.capacity() > max_spare_body || req.url.empty())
    return;
  const std::size_t bytes = req.body.capacity() + req.url.capacity();
  if (spare_bytes_ + bytes > max_spare_bytes) return;
  spare_bytes_ += bytes;
  spare_requests_.push_back(std::move(req));
}

signer* dispatcher::keys_for(const std::shared_ptr<const subscription>& sub) {
  if (sub->secrets.empty()) return nullptr;
  auto& entry = signers_[sub->id];
  // A replaced subscription is a new object: its secrets may have changed (rotation).
  if (entry.sub != sub) {
    entry.keys = std::make_unique<signer>(sub->secrets);  // throws for a malformed secret
    entry.sub = sub;
  }
  return entry.keys.get();
}

void dispatcher::defer(waiting& w, time_point at) {
  ++deferrals_;
  give_back(w.msg.id, at);
  // Its parked successors go back too; the store hands the head out first again.
  if (w.msg.ordered) release_ordered(w.msg.subscription_id, at);
}

void dispatcher::ordered_idle(const std::string& subscription_id) {
  ordered_busy_.erase(subscription_id);
  due_known_ = false;  // the subscription's next message may have become its head
  ordered_moved_ = true;
}

void dispatcher::release_ordered(const std::string& subscription_id, time_point at) {
  ordered_idle(subscription_id);
  auto it = parked_.find(subscription_id);
  if (it == parked_.end()) return;
  // Taken out first: a release that throws leaves no stale entry behind.
  auto waiting_ones = std::move(it->second);
  parked_count_ -= waiting_ones.size();
  parked_.erase(it);
  for (const auto& p : waiting_ones) give_back(p.msg.id, at);
}

bool dispatcher::withdrawn(const waiting& w, std::shared_ptr<const snapshot>& snap,
                           time_point now) {
  if (!snap) snap = ctx_.subscriptions->current();
  const auto current = snap->find(w.msg.subscription_id);
  if (current && current->enabled) return false;
  dead(w.msg, current ? "subscription disabled" : "subscription removed", nullptr);
  if (w.msg.ordered) release_ordered(w.msg.subscription_id, now);
  return true;
}

void dispatcher::pump(time_point now) {
  if (waiting_endpoints_.empty() || draining_) return;
  std::shared_ptr<const snapshot> snap;  // taken when the first queued message is about to go
  std::vector<std::string> keys(waiting_endpoints_.begin(), waiting_endpoints_.end());
  for (const auto& key : keys) {
    auto it = endpoints_.find(key);
    if (it == endpoints_.end()) {
      waiting_endpoints_.erase(key);
      continue;
    }
    auto& ep = it->second;
    const auto limit = queue_limit(ep, now);
    // The overflow first: an endpoint that stopped answering gives it all back (oldest due
    // first, one slot's turn apart, spread over at most half a lease, not after the endpoint's
    // earlier send-backs); one that has become too slow to send it well within hold_ (its first
    // answers measured, or a rate limit) gives back the newest until the rest fits.
    if (!ep.overflow.empty() && stalled(ep, now)) {
      const auto n = static_cast<std::int64_t>(ep.overflow.size());
      const auto step = std::min(send_back_step(ep, now), duration(lease_) / (2 * n));
      std::int64_t k = 0;
      for (auto& w : ep.overflow) defer(w, std::max(now + step * ++k, now + milliseconds(10)));
      overflow_count_ -= ep.overflow.size();
      ep.overflow.clear();
    }
    while (!ep.overflow.empty() && !can_hold(ep, now, 0)) {
      waiting w = std::move(ep.overflow.back());
      ep.overflow.pop_back();
      --overflow_count_;
      send_back_later(ep, w, now);
    }
    // An endpoint that stopped answering cannot keep the long queue it had while fast (its
    // expected latency grows with the age of its oldest request): the newest go back, so they
    // do not hold the room other endpoints need. Only once the queue is twice what it would
    // send in queue_drain: an endpoint a little slower than a moment ago must not churn its
    // queue through the store.
    if (ep.queue.size() > 2 * limit) {
      while (ep.queue.size() > limit) {
        waiting w = std::move(ep.queue.back());
        ep.queue.pop_back();
        --waiting_;
        send_back_later(ep, w, now);
      }
    }
    // Handed-over messages move up as the queue makes room, or go back when their lease is at
    // risk.
    while (!ep.overflow.empty() &&
           (ep.queue.size() < limit || ep.overflow.front().claimed + hold_ <= now)) {
      waiting w = std::move(ep.overflow.front());
      ep.overflow.pop_front();
      --overflow_count_;
      if (w.claimed + hold_ <= now) {
        defer(w, now);
      } else {
        ep.queue.push_back(std::move(w));
        ++waiting_;
      }
    }
    while (!ep.queue.empty()) {
      waiting w = std::move(ep.queue.front());
      ep.queue.pop_front();
      --waiting_;
      if (w.claimed + hold_ <= now) {
        // Held long enough that its lease is at risk: give it back rather than send it twice
        // (or declare dead a message another worker may hold by now).
        defer(w, now);
        continue;
      }
      if (withdrawn(w, snap, now)) continue;
      if (ep.breaker.is_open(now)) {
        defer(w, ep.breaker.open_until());
        continue;
      }
      if (!try_send(key, ep, w, now)) {
        ep.queue.push_front(std::move(w));
        ++waiting_;
        break;
      }
    }
    if (ep.queue.empty() && ep.overflow.empty()) waiting_endpoints_.erase(key);
  }
}

void dispatcher::finish_ordered(const std::string& subscription_id, time_point now) {
  ordered_idle(subscription_id);
  auto it = parked_.find(subscription_id);
  if (it == parked_.end()) return;
  parked next = std::move(it->second.front());
  it->second.pop_front();
  --parked_count_;
  if (it->second.empty()) parked_.erase(it);
  // It keeps its claim time: the lease has been running since then.
  route(std::move(next.msg), ctx_.subscriptions->current(), now, next.claimed);
}

void dispatcher::handle(http_response&& r, time_point now) {
  keep_for_reuse(std::move(r.request));
  auto it = flights_.find(r.token);
  if (it == flights_.end()) return;
  flying_ids_.erase(it->second.msg.id);
  flight f = std::move(it->second);
  flights_.erase(it);
  --in_flight_;
  auto ep_it = endpoints_.find(f.endpoint);
  endpoint* ep = ep_it == endpoints_.end() ? nullptr : &ep_it->second;
  if (ep != nullptr) {
    --ep->in_flight;
    if (auto s = ep->started.find(f.started); s != ep->started.end()) ep->started.erase(s);
  }

  const auto o = classify(r, now);
  if (o.k == outcome::kind::cancelled) {
    if (ep != nullptr) ep->breaker.on_cancel(f.probe);
    // Cancelled because the breaker opened: due when it lets a probe through.
    const bool open = ep != nullptr && ep->breaker.is_open(now);
    give_back(f.msg.id, open ? ep->breaker.open_until() : now);
    if (f.msg.ordered) finish_ordered(f.msg.subscription_id, now);
    return;
  }
  if (ep != nullptr) {
    const double ms = double(r.duration.count()) / 1000.0;
    ep->latency_ms = ep->latency_ms == 0 ? std::max(ms, 0.001) : 0.8 * ep->latency_ms + 0.2 * ms;
    ep->last_answer = now;
    if (r.kind == error_kind::refused || r.kind == error_kind::invalid) {
      ep->breaker.on_cancel(f.probe);  // never reached the endpoint: says nothing about it
    } else {
      ep->failing = o.unhealthy;
      if (ep->breaker.on_result(!o.unhealthy, f.probe, now)) {
        ctx_.logger->warn("endpoint {}: circuit breaker open until {} ({})",
                          loggable_url(f.endpoint), iso(ep->breaker.open_until()), o.reason);
        transport_->cancel_waiting(ep->id);  // what has not started yet waits for the probe
      }
    }
  }

  message& m = f.msg;
  attempt_record rec;
  rec.message_id = m.id;
  rec.subscription_id = m.subscription_id;
  rec.event_id = m.event_id;
  rec.event_name = m.event_name;
  rec.url = f.sub->url;
  rec.http_method = f.sub->http_method;
  rec.attempt = m.attempts + 1;
  rec.started_at = f.started;
  rec.duration = r.duration;
  rec.status_code = r.status;
  rec.error = o.reason;
  rec.request_length = r.request_length;
  rec.response_length = r.response_length;
  rec.response_head = std::move(r.body_head);
  rec.success = o.k == outcome::kind::success;
  ctx_.counters->attempts.fetch_add(1, std::memory_order_relaxed);
  if (ctx_.hooks.on_attempt) call_hook("on_attempt", [&] { ctx_.hooks.on_attempt(rec); });

  m.attempts = rec.attempt;
  m.last_status = r.status;
  m.updated_at = now;
  const auto& policy = ctx_.delivery.retry;
  switch (o.k) {
    case outcome::kind::success:
      if (results_.capacity() == 0) results_.reserve(32);  // a store may have moved it away
      results_.push_back({m.id, std::nullopt, std::move(rec)});
      m.status = message_status::delivered;
      m.last_error.clear();
      note_success(m.subscription_id);
      // Counted and announced once recorded; an ordered successor goes only after that too.
      delivered_.push_back(std::move(m));
      return;
    case outcome::kind::gone:
      dead(m, o.reason, &rec);
      disable(m.subscription_id, "the endpoint answered 410 Gone");
      break;
    case outcome::kind::permanent: {
      bool disabled = false;
      note_failure(*f.sub, o.reason, now, disabled);
      dead(m, o.reason, &rec);
      break;
    }
    case outcome::kind::retry: {
      bool disabled = false;
      note_failure(*f.sub, o.reason, now, disabled);
      if (disabled) {
        dead(m, "subscription disabled after failing continuously: " + o.reason, &rec);
        break;
      }
      const auto delay =
          policy.next_delay(static_cast<std::size_t>(rec.attempt), o.retry_after, rng_);
      const auto gave_up = [&] {
        return "gave up after " + std::to_string(rec.attempt) +
               (rec.attempt == 1 ? " attempt" : " attempts");
      };
      if (!delay) {
        dead(m, gave_up() + ": " + o.reason, &rec);
      } else if (policy.expired(m.created_at, now + *delay)) {
        dead(m, gave_up() + " (the next would exceed the maximum age): " + o.reason, &rec);
      } else {
        results_.push_back({m.id, now + *delay, std::move(rec), ctx_.worker_id});
        ctx_.counters->retries.fetch_add(1, std::memory_order_relaxed);
      }
      break;
    }
    case outcome::kind::cancelled:
      break;
  }
  if (m.ordered) finish_ordered(m.subscription_id, now);
}

void dispatcher::record_results(time_point now) {
  if (results_.empty() && delivered_.empty()) return;
  std::vector<message> delivered;
  delivered.swap(delivered_);
  // The next turn's delivered messages reuse this list's room.
  struct give_back_room {
    std::vector<message>& from;
    std::vector<message>& to;
    ~give_back_room() {
      from.clear();
      if (to.empty()) to.swap(from);
    }
  } room{delivered, delivered_};
  // A store that throws here leaves the messages leased: they go again when the lease runs out
  // (at-least-once), never lost.
  std::exception_ptr error;
  for (const auto& r : results_)
    if (r.retry_at) note_store_due(*r.retry_at);
  try {
    ctx_.store->record_results(results_);
  } catch (...) {
    error = std::current_exception();
  }
  results_.clear();
  if (!error) {
    ctx_.counters->delivered.fetch_add(delivered.size(), std::memory_order_relaxed);
    if (ctx_.on_finished && !delivered.empty()) ctx_.on_finished(delivered.size());
    if (ctx_.hooks.on_delivered)
      for (const auto& m : delivered)
        call_hook("on_delivered", [&] { ctx_.hooks.on_delivered(m); });
  }
  // Ordered subscriptions: after a recorded delivery the next message goes; after a failed
  // write the waiting ones go back to the store, which hands them out only after that head.
  // Every subscription is seen to even when one of them fails.
  for (const auto& m : delivered) {
    if (!m.ordered) continue;
    try {
      if (error) {
        release_ordered(m.subscription_id, now);
      } else {
        finish_ordered(m.subscription_id, now);
      }
    } catch (...) {
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

void dispatcher::dead(const message& m, const std::string& reason, const attempt_record* a) {
  ctx_.store->dead_letter_if_held(m.id, ctx_.worker_id, reason, a);
  ctx_.counters->dead.fetch_add(1, std::memory_order_relaxed);
  if (ctx_.on_finished) ctx_.on_finished(1);
  // A host with the hook reports dead messages itself; its log then does not say it twice.
  ctx_.logger->log(ctx_.hooks.on_dead ? spdlog::level::info : spdlog::level::warn,
                   "message {} for subscription {} is dead: {}", m.id, m.subscription_id, reason);
  if (ctx_.hooks.on_dead) {
    message copy = m;
    copy.status = message_status::dead;
    copy.last_error = reason;
    call_hook("on_dead", [&] { ctx_.hooks.on_dead(copy, reason); });
  }
}

void dispatcher::note_failure(const subscription& sub, const std::string& reason, time_point now,
                              bool& disabled) {
  const auto limit = ctx_.delivery.auto_disable_after;
  if (limit.count() <= 0) return;
  // A request that was under way when the subscription was disabled (or removed) says nothing
  // new, and must not overwrite the saved disabled state with a failing one.
  if (!enabled_now(sub.id)) return;
  auto it = failing_.find(sub.id);
  if (it == failing_.end()) {
    failing_[sub.id] = {now, true};
    ctx_.store->save_state({sub.id, false, {}, now});
    return;
  }
  if (now - it->second.since < limit) return;
  const auto since = it->second.since;
  failing_.erase(it);
  disable(sub.id, "failing continuously since " + iso(since) + ", last: " + reason);
  disabled = true;
}

bool dispatcher::enabled_now(const std::string& subscription_id) const {
  const auto current = ctx_.subscriptions->current()->find(subscription_id);
  return current && current->enabled;
}

void dispatcher::note_success(const std::string& subscription_id) {
  auto it = failing_.find(subscription_id);
  if (it == failing_.end()) return;
  failing_.erase(it);
  // As in note_failure(): a disabled subscription's saved state stays as it is.
  if (!enabled_now(subscription_id)) return;
  ctx_.store->save_state({subscription_id, false, {}, std::nullopt});
}

void dispatcher::disable(const std::string& subscription_id, const std::string& reason) {
  const auto current = ctx_.subscriptions->current()->find(subscription_id);
  if (!current) return;  // removed meanwhile: nothing left to disable
  // Requests already under way when it was disabled answer the same way: the host hears of it
  // once, unless the subscription was changed (or enabled again) since.
  if (auto done = disabled_here_.find(subscription_id);
      done != disabled_here_.end() && done->second == current)
    return;
  ctx_.subscriptions->set_enabled(subscription_id, false);
  // Its requests still waiting in the transport for a slot do not go either: cancelled, they
  // return to the store and die when claimed (another subscription's on the same URL go again).
  if (auto ep = endpoints_.find(current->url); ep != endpoints_.end())
    transport_->cancel_waiting(ep->second.id);
  ctx_.store->save_state({subscription_id, true, reason, std::nullopt});
  ctx_.logger->log(ctx_.hooks.on_subscription_disabled ? spdlog::level::info : spdlog::level::warn,
                   "subscription {} disabled: {}", subscription_id, reason);
  if (ctx_.hooks.on_subscription_disabled)
    call_hook("on_subscription_disabled",
              [&] { ctx_.hooks.on_subscription_disabled(subscription_id, reason); });
  disabled_here_[subscription_id] = ctx_.subscriptions->current()->find(subscription_id);
}

void dispatcher::sweep(time_point now) {
  const auto idle_for = std::max<duration>(ctx_.delivery.breaker.window, std::chrono::minutes(1));
  const auto snap = ctx_.subscriptions->current();
  for (auto it = signers_.begin(); it != signers_.end();) {
    if (snap->find(it->first) != it->second.sub)
      it = signers_.erase(it);
    else
      ++it;
  }
  std::erase_if(disabled_here_, [&](const auto& d) { return snap->find(d.first) != d.second; });
  for (auto it = endpoints_.begin(); it != endpoints_.end();) {
    const auto& ep = it->second;
    if (ep.in_flight == 0 && ep.queue.empty() && ep.overflow.empty() && ep.breaker.idle() &&
        ep.last_used + idle_for < now)
      it = endpoints_.erase(it);
    else
      ++it;
  }
}

void dispatcher::drain_local(time_point now) {
  for (const auto& key : waiting_endpoints_) {
    auto it = endpoints_.find(key);
    if (it == endpoints_.end()) continue;
    for (auto& w : it->second.queue) defer(w, now);
    it->second.queue.clear();
    for (auto& w : it->second.overflow) defer(w, now);
    it->second.overflow.clear();
  }
  waiting_endpoints_.clear();
  waiting_ = 0;
  overflow_count_ = 0;
  for (const auto& h : inbox_) give_back(h.msg.id, now);
  inbox_.clear();
  for (auto& [sub, q] : parked_)
    for (auto& p : q) give_back(p.msg.id, now);
  parked_.clear();
  parked_count_ = 0;
}

time_point dispatcher::next_wake(time_point now) {
  if (!inbox_.empty() && in_flight_ + waiting_ < claim_cap_) return now;
  time_point at = now + std::chrono::hours(1);
  if (in_flight_ + waiting_ < claim_cap_ && ctx_.subscriptions->current()->size() != 0) {
    if (steady::now() < claim_pause_until_) {
      at = std::min(at, now + milliseconds(50));
    } else if (auto due = store_due(now)) {
      at = std::min(at, *due);
    }
  }
  for (const auto& key : waiting_endpoints_) {
    auto it = endpoints_.find(key);
    if (it == endpoints_.end()) continue;
    const auto& ep = it->second;
    if (!ep.overflow.empty()) {
      at = std::min(at, ep.overflow.front().claimed + hold_);
      if (ep.queue.size() < queue_limit(ep, now)) return now;  // room to move them up
    }
    if (ep.queue.empty()) continue;
    at = std::min(at, ep.queue.front().claimed + hold_);
    if (!ep.bucket.available(now)) at = std::min(at, ep.bucket.next_token(now));
    if (ep.breaker.is_open(now)) at = std::min(at, ep.breaker.open_until());
  }
  return at;
}

}  // namespace hookline::detail
