#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <unordered_map>

#include <spdlog/spdlog.h>

#include "dispatcher/dispatcher.hpp"
#include "dispatcher/ids.hpp"
#include "hookline/hookline.hpp"

#ifndef HOOKLINE_VERSION
#error "HOOKLINE_VERSION must be defined by the build"
#endif

namespace hookline {

std::string_view version() {
  return HOOKLINE_VERSION;
}

namespace {

/// Refuses delivery options that cannot work, naming the field, instead of clamping them silently.
void validate(const delivery_options& d) {
  if (d.user_agent.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos)
    throw error("delivery.user_agent: must not contain CR, LF or NUL (header injection)");
  // Every store refuses these alike (the SQL stores derive the lease from them).
  if (d.request_timeout.count() <= 0) throw error("delivery.request_timeout: must be positive");
  if (d.connect_timeout.count() <= 0) throw error("delivery.connect_timeout: must be positive");
  if (d.max_in_flight == 0) throw error("delivery.max_in_flight: must be at least 1");
  if (d.endpoint_concurrency == 0) throw error("delivery.endpoint_concurrency: must be at least 1");
  // Written so that NaN fails too.
  if (!(d.retry.jitter >= 0.0 && d.retry.jitter <= 1.0))
    throw error("delivery.retry.jitter: must be between 0 and 1, got " +
                std::to_string(d.retry.jitter));
  for (std::size_t i = 0; i < d.retry.schedule.size(); ++i)
    if (d.retry.schedule[i].count() < 0)
      throw error("delivery.retry.schedule[" + std::to_string(i) + "]: must not be negative");
  if (d.retry.max_age.count() < 0) throw error("delivery.retry.max_age: must not be negative");
  if (d.retry.retry_after_max.count() < 0)
    throw error("delivery.retry.retry_after_max: must not be negative");
  if (d.auto_disable_after.count() < 0)
    throw error("delivery.auto_disable_after: must not be negative (0 = never)");
  if (!(d.breaker.failure_rate >= 0.0 && d.breaker.failure_rate <= 1.0))
    throw error("delivery.breaker.failure_rate: must be between 0 and 1, got " +
                std::to_string(d.breaker.failure_rate));
  if (d.breaker.window.count() <= 0) throw error("delivery.breaker.window: must be positive");
  if (d.breaker.cool_down.count() < 0)
    throw error("delivery.breaker.cool_down: must not be negative");
}

}  // namespace

class hub::impl {
 public:
  explicit impl(options o) : opts_(std::move(o)) {
    validate(opts_.delivery);  // first, and for publish-only hubs too
    if (!opts_.logger) opts_.logger = spdlog::get("hookline");  // the host's, if it registered one
    if (!opts_.logger) opts_.logger = std::make_shared<spdlog::logger>("hookline");
    if (!opts_.clock) opts_.clock = std::make_shared<system_clock>();
    if (opts_.worker_id.empty()) opts_.worker_id = detail::default_worker_id();
    if (opts_.repository.empty()) opts_.repository = detail::host_name();
    if (opts_.store_instance) {
      store_ = opts_.store_instance;
    } else {
      auto settings = opts_.store_settings;
      settings.request_timeout =
          std::chrono::duration_cast<std::chrono::milliseconds>(opts_.delivery.request_timeout);
      if (!settings.logger) settings.logger = opts_.logger;
      store_ = make_store(opts_.store, settings);
    }
    registry_ = std::make_unique<registry>(opts_.registry);
    for (const auto& s : store_->load_states())
      if (s.disabled) saved_disabled_[s.subscription_id] = s.reason;
    pending_ = store_->count_pending(opts_.clock->now());

    if (opts_.dispatch) {
      detail::dispatcher_context ctx;
      ctx.subscriptions = registry_.get();
      ctx.store = store_;
      ctx.clock = opts_.clock;
      ctx.logger = opts_.logger;
      ctx.hooks = opts_.hooks;
      ctx.delivery = opts_.delivery;
      ctx.worker_id = opts_.worker_id;
      ctx.user_agent = opts_.delivery.user_agent.empty() ? "hookline/" + std::string(version())
                                                         : opts_.delivery.user_agent;
      ctx.counters = &counters_;
      ctx.on_finished = [this](std::size_t n) { make_room(n); };
      ctx.on_progress = [this] {
        std::lock_guard lock(idle_mutex_);
        idle_cv_.notify_all();
      };
      ctx.take_saved_disabled = [this](const std::shared_ptr<const subscription>& sub,
                                       std::string& reason) {
        return take_saved_disabled(sub, reason);
      };
      dispatcher_ = std::make_unique<detail::dispatcher>(std::move(ctx));
    }
  }

  ~impl() { stop(std::chrono::milliseconds(250)); }

  publish_result publish(std::span<const event> events) {
    check_open();
    const auto snap = registry_->current();
    const auto now = opts_.clock->now();
    const render_context ctx{now, opts_.repository};
    std::vector<message> batch;
    for (std::size_t i = 0; i < events.size(); ++i) {
      const auto& e = events[i];
      const event* ev = &e;
      event filled;
      const auto canon = canonical_name(
          e, events.size() == 1 ? "publish: " : "publish: event " + std::to_string(i + 1) + ": ");
      if (e.id.empty() || !e.time || canon) {
        filled = e;
        if (filled.id.empty()) filled.id = detail::new_event_id();
        if (!filled.time) filled.time = now;
        if (canon) filled.event_name = *canon;
        ev = &filled;
      }
      for (const auto& sub : snap->match(*ev)) {
        std::string reason;
        if (take_saved_disabled(sub, reason)) continue;
        add_message(*ev, *sub, now, ctx, batch);
      }
    }
    return commit(std::move(batch), events.size());
  }

  std::string fire(std::string_view subscription_id, const event& e) {
    check_open();
    auto sub = registry_->current()->find(subscription_id);
    if (!sub) throw error("fire: unknown subscription '" + std::string(subscription_id) + "'");
    std::string reason;
    if (!sub->enabled || take_saved_disabled(sub, reason))
      throw error("fire: subscription '" + sub->id + "' is disabled");
    const auto now = opts_.clock->now();
    const render_context ctx{now, opts_.repository};
    event filled = e;
    if (filled.id.empty()) filled.id = detail::new_event_id();
    if (!filled.time) filled.time = now;
    if (auto canon = canonical_name(e, "fire: ")) filled.event_name = *canon;
    std::vector<message> batch;
    add_message(filled, *sub, now, ctx, batch, /*rethrow=*/true);
    auto result = commit(std::move(batch), 1);
    return result.message_ids.front();
  }

  bool redeliver(const std::string& id) {
    const bool ok = store_->redeliver(id, opts_.clock->now());
    if (ok) {
      add_pending(1);
      wake();
    }
    return ok;
  }

  std::size_t recover(const std::string& subscription_id, time_point since) {
    const auto n = store_->recover(subscription_id, since, opts_.clock->now());
    if (n > 0) {
      add_pending(n);
      wake();
    }
    return n;
  }

  bool idle() {
    if (dispatcher_ && !stopped_ && dispatcher_->busy() != 0) return false;
    return store_->count_pending(opts_.clock->now()) == 0;
  }

  bool wait_idle(duration timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (idle()) return true;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return false;
      std::unique_lock lock(idle_mutex_);
      idle_cv_.wait_for(lock, std::min<std::chrono::steady_clock::duration>(
                                  deadline - now, std::chrono::milliseconds(50)));
    }
  }

  void stop(duration drain_timeout) {
    std::lock_guard guard(stop_mutex_);
    {
      std::lock_guard lock(room_mutex_);
      stopped_ = true;
      room_cv_.notify_all();
    }
    if (finished_) return;
    finished_ = true;
    if (dispatcher_) dispatcher_->stop(drain_timeout);
    try {
      if (opts_.dispatch) store_->release_worker(opts_.worker_id);
    } catch (const std::exception& e) {
      opts_.logger->error("stop: releasing leases of {}: {}", opts_.worker_id, e.what());
    }
    std::lock_guard lock(idle_mutex_);
    idle_cv_.notify_all();
  }

  hub_counters counters() const {
    hub_counters c;
    c.published = published_.load();
    c.messages = messages_.load();
    c.delivered = counters_.delivered.load();
    c.dead = counters_.dead.load();
    c.attempts = counters_.attempts.load();
    c.retries = counters_.retries.load();
    c.rejected = rejected_.load();
    return c;
  }

  options opts_;
  std::shared_ptr<delivery_store> store_;
  std::unique_ptr<registry> registry_;

 private:
  void check_open() {
    if (stopped_) throw error("hookline: publish after stop()");
  }

  // As event_from_json does: a known name in its catalog spelling ("create" goes out as "Create",
  // returned when it differs); an empty name or "All" refused, naming the event of a batch.
  std::optional<std::string> canonical_name(const event& e, const std::string& where) {
    if (e.event_name.empty()) throw error(where + "event_name: must not be empty");
    auto canon = registry_->catalog().canonical(e.event_name);
    if (canon && *canon == all_events)
      throw error(where + "event_name: 'All' selects events in a filter; it is not an event");
    if (canon && *canon != e.event_name) return canon;
    return std::nullopt;
  }

  void wake() {
    if (dispatcher_) dispatcher_->wake();
  }

  void add_message(const event& e, const subscription& sub, time_point now,
                   const render_context& ctx, std::vector<message>& batch, bool rethrow = false) {
    message m;
    try {
      m.body = render_body(e, sub, ctx);
    } catch (const std::exception& ex) {
      // One subscription's broken payload must not stop the others from firing.
      opts_.logger->error("subscription {}: cannot render the body for event {}: {}", sub.id, e.id,
                          ex.what());
      if (rethrow) throw;
      return;
    }
    m.id = detail::new_message_id();
    m.subscription_id = sub.id;
    m.event_id = e.id;
    m.event_name = e.event_name;
    m.url = sub.url;
    m.http_method = sub.http_method;
    m.ordered = sub.ordered;
    m.created_at = now;
    m.next_attempt_at = now;
    m.updated_at = now;
    batch.push_back(std::move(m));
  }

  // Stores the batch; what this process's dispatcher has room for is stored leased to it and
  // handed over directly, so it goes without a claim (the rest is claimed as usual).
  publish_result commit(std::vector<message> batch, std::size_t events) {
    publish_result result;
    if (!batch.empty()) {
      reserve(batch.size());
      // After any wait for room: the lease (and the dispatcher's hold) start now.
      const auto leased_at = opts_.clock->now();
      std::size_t places = 0;
      if (dispatcher_) {
        const auto unordered = static_cast<std::size_t>(
            std::count_if(batch.begin(), batch.end(), [](const message& m) { return !m.ordered; }));
        if (unordered > 0) places = dispatcher_->reserve(unordered);
      }
      std::vector<bool> leased;
      try {
        if (places > 0) {
          leased = store_->enqueue_claimed(
              batch, enqueue_lease{opts_.worker_id, leased_at + dispatcher_->lease(), places});
        } else {
          store_->enqueue(batch);
        }
      } catch (...) {
        make_room(batch.size());
        if (places > 0) dispatcher_->unreserve(places);
        throw;
      }
      result.message_ids.reserve(batch.size());
      std::vector<message> handed;
      for (std::size_t i = 0; i < batch.size(); ++i) {
        if (i < leased.size() && leased[i]) {
          result.message_ids.push_back(batch[i].id);
          handed.push_back(std::move(batch[i]));
        } else {
          result.message_ids.push_back(std::move(batch[i].id));
        }
      }
      messages_.fetch_add(batch.size(), std::memory_order_relaxed);
      const bool all_handed = handed.size() == batch.size();
      if (places > 0) {
        // Refused only when the dispatcher has stopped: nobody will send them, so they go back.
        for (const auto& m : dispatcher_->hand_off(std::move(handed), places, leased_at)) {
          try {
            store_->release_if_held(m.id, opts_.worker_id, leased_at);
          } catch (const std::exception& e) {
            opts_.logger->error("publish: giving back {}: {}", m.id, e.what());
          }
        }
      }
      if (!all_handed) wake();
    }
    published_.fetch_add(events, std::memory_order_relaxed);
    return result;
  }

  // Backpressure: pending_ counts this hub's pending messages (resynchronised from the store when
  // it looks full, since other workers may have delivered some).
  void reserve(std::size_t n) {
    if (!dispatcher_ || opts_.queue_capacity == 0) return;
    const auto cap = opts_.queue_capacity;
    std::unique_lock lock(room_mutex_);
    if (pending_ + n <= cap) {
      pending_ += n;
      return;
    }
    pending_ = store_->count_pending(opts_.clock->now());
    if (pending_ + n > cap && (n > cap || opts_.overflow == overflow_policy::reject)) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      throw queue_full_error("hookline: queue full (" + std::to_string(pending_) + " of " +
                             std::to_string(cap) + " pending, " + std::to_string(n) +
                             " more refused)");
    }
    while (pending_ + n > cap) {
      if (stopped_) throw error("hookline: publish after stop()");
      room_cv_.wait_for(lock, std::chrono::milliseconds(100));
      if (pending_ + n > cap) pending_ = store_->count_pending(opts_.clock->now());
    }
    pending_ += n;
  }

  void make_room(std::size_t n) {
    std::lock_guard lock(room_mutex_);
    pending_ = pending_ >= n ? pending_ - n : 0;
    room_cv_.notify_all();
  }

  void add_pending(std::size_t n) {
    std::lock_guard lock(room_mutex_);
    pending_ += n;
  }

  // True when the store says `sub` was disabled in an earlier run (a 410, the failure timer):
  // the first call disables it in the registry too. Snapshots taken before that still hold the
  // enabled object, so it stays disabled for them (the rest of a batch, a claim) until the host
  // replaces the subscription.
  bool take_saved_disabled(const std::shared_ptr<const subscription>& sub, std::string& reason) {
    {
      std::lock_guard lock(saved_mutex_);
      if (saved_disabled_.empty() && applied_disabled_.empty()) return false;
      if (auto a = applied_disabled_.find(sub->id); a != applied_disabled_.end()) {
        if (a->second.first != sub) return false;  // replaced since: the host's to say
        reason = a->second.second;
        return true;
      }
      auto it = saved_disabled_.find(sub->id);
      if (it == saved_disabled_.end()) return false;
      reason = it->second.empty() ? "disabled in an earlier run" : it->second;
      applied_disabled_[sub->id] = {sub, reason};
      saved_disabled_.erase(it);
    }
    // Not over a replacement the host made since `sub` was read: that one is the host's to say.
    registry_->set_enabled_if_unchanged(sub, false);
    opts_.logger->warn("subscription {} stays disabled: {}", sub->id, reason);
    return true;
  }

  detail::dispatch_counters counters_;
  std::atomic<std::uint64_t> published_{0}, messages_{0}, rejected_{0};
  std::mutex room_mutex_;
  std::condition_variable room_cv_;
  std::size_t pending_ = 0;
  std::mutex saved_mutex_;
  std::unordered_map<std::string, std::string> saved_disabled_;
  std::unordered_map<std::string, std::pair<std::shared_ptr<const subscription>, std::string>>
      applied_disabled_;
  std::mutex idle_mutex_;
  std::condition_variable idle_cv_;
  std::atomic<bool> stopped_{false};
  std::mutex stop_mutex_;
  bool finished_ = false;
  std::unique_ptr<detail::dispatcher> dispatcher_;
};

hub::hub(options opts) : impl_(std::make_unique<impl>(std::move(opts))) {}
hub::~hub() = default;

registry& hub::subscriptions() {
  return *impl_->registry_;
}
delivery_store& hub::store() {
  return *impl_->store_;
}

publish_result hub::publish(const event& e) {
  return impl_->publish(std::span<const event>(&e, 1));
}
publish_result hub::publish(std::span<const event> events) {
  return impl_->publish(events);
}
std::string hub::fire(std::string_view subscription_id, const event& e) {
  return impl_->fire(subscription_id, e);
}
bool hub::redeliver(const std::string& message_id) {
  return impl_->redeliver(message_id);
}
std::size_t hub::recover(const std::string& subscription_id, time_point since) {
  return impl_->recover(subscription_id, since);
}
bool hub::wait_idle(duration timeout) {
  return impl_->wait_idle(timeout);
}
void hub::stop(duration drain_timeout) {
  impl_->stop(drain_timeout);
}
hub_counters hub::counters() const {
  return impl_->counters();
}
const options& hub::settings() const {
  return impl_->opts_;
}

}  // namespace hookline
