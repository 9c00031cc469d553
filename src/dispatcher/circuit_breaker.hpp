#pragma once
// Per-endpoint circuit breaker. Thread safety: none; owned by the dispatcher thread.

#include <array>
#include <chrono>
#include <cstdint>

#include "hookline/hookline.hpp"

namespace hookline::detail {

/// Closed: everything passes, outcomes are counted. Open: nothing passes until cool_down has
/// passed. Then half-open: exactly one probe passes; its success closes the breaker, its failure
/// opens it for another cool_down.
class circuit_breaker {
 public:
  enum class state { closed, open, half_open };

  explicit circuit_breaker(const circuit_breaker_options& o = {}) : options_(o) {}

  /// Whether a request may start at `now` (does not change state).
  bool allows(time_point now) const {
    if (!options_.enabled || state_ == state::closed) return true;
    if (state_ == state::open) return now >= open_until_;
    return !probe_in_flight_;
  }
  /// A request starts; returns true when it is the half-open probe.
  bool on_start(time_point now) {
    if (!options_.enabled || state_ == state::closed) return false;
    if (state_ == state::open && now >= open_until_) state_ = state::half_open;
    if (state_ == state::half_open && !probe_in_flight_) {
      probe_in_flight_ = true;
      return true;
    }
    return false;
  }
  /// The request ended without an outcome (cancelled).
  void on_cancel(bool probe) {
    if (probe) probe_in_flight_ = false;
  }
  /// An outcome: `ok` false means the endpoint looked unhealthy (5xx, 408, 429, timeout,
  /// network error). Returns true when this outcome opened the breaker.
  bool on_result(bool ok, bool probe, time_point now) {
    if (!options_.enabled) return false;
    if (probe) {
      probe_in_flight_ = false;
      if (ok) {
        close();
        return false;
      }
      open(now);
      return true;
    }
    // Requests that started before the breaker opened say nothing new.
    if (state_ != state::closed) return false;
    streak_ = ok ? 0 : streak_ + 1;
    auto& b = bucket(now);
    ++b.total;
    if (!ok) ++b.failures;
    std::uint64_t total = 0, failures = 0;
    const auto current = bucket_id(now);
    for (const auto& x : buckets_)
      if (x.id + buckets > current && x.id <= current) {
        total += x.total;
        failures += x.failures;
      }
    const bool streak_trips = options_.failure_streak > 0 && streak_ >= options_.failure_streak;
    const bool rate_trips = options_.min_requests > 0 && total >= options_.min_requests &&
                            double(failures) >= options_.failure_rate * double(total);
    if (!ok && (streak_trips || rate_trips)) {
      open(now);
      return true;
    }
    return false;
  }

  state current(time_point now) const {
    if (state_ == state::open && now >= open_until_) return state::half_open;
    return state_;
  }
  /// When an open breaker lets its probe through.
  time_point open_until() const { return open_until_; }
  bool is_open(time_point now) const {
    return options_.enabled && state_ == state::open && now < open_until_;
  }
  bool idle() const { return state_ == state::closed && streak_ == 0; }
  void configure(const circuit_breaker_options& o) { options_ = o; }

 private:
  static constexpr std::int64_t buckets = 10;
  struct counter {
    std::int64_t id = -1;
    std::uint64_t total = 0;
    std::uint64_t failures = 0;
  };

  std::int64_t bucket_id(time_point now) const {
    const auto width = std::max<std::int64_t>(
        1,
        std::chrono::duration_cast<std::chrono::milliseconds>(options_.window).count() / buckets);
    return std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() /
           width;
  }
  counter& bucket(time_point now) {
    const auto id = bucket_id(now);
    auto& b = buckets_[static_cast<std::size_t>(((id % buckets) + buckets) % buckets)];
    if (b.id != id) b = counter{id, 0, 0};
    return b;
  }
  void open(time_point now) {
    state_ = state::open;
    open_until_ = now + options_.cool_down;
    probe_in_flight_ = false;
  }
  void close() {
    state_ = state::closed;
    streak_ = 0;
    buckets_ = {};
  }

  circuit_breaker_options options_;
  state state_ = state::closed;
  time_point open_until_{};
  bool probe_in_flight_ = false;
  std::size_t streak_ = 0;
  std::array<counter, buckets> buckets_{};
};

/// Messages per second with a small burst (a tenth of a second's worth, at least one).
class token_bucket {
 public:
  void configure(double rate, time_point now) {
    if (rate == rate_) return;
    rate_ = rate;
    burst_ = std::max(1.0, rate / 10.0);
    tokens_ = std::min(tokens_, burst_);
    if (last_ == time_point{}) {
      tokens_ = burst_;
      last_ = now;
    }
  }
  double rate() const { return rate_; }
  bool try_take(time_point now) {
    if (rate_ <= 0) return true;
    refill(now);
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
  }
  bool available(time_point now) const {
    if (rate_ <= 0) return true;
    return tokens_ + elapsed(now) * rate_ >= 1.0;
  }
  /// When one token will be there.
  time_point next_token(time_point now) const {
    if (rate_ <= 0) return now;
    const double have = std::min(burst_, tokens_ + elapsed(now) * rate_);
    if (have >= 1.0) return now;
    const auto wait = std::chrono::duration<double>((1.0 - have) / rate_);
    return now + std::chrono::duration_cast<time_point::duration>(wait) +
           std::chrono::microseconds(1);
  }

 private:
  double elapsed(time_point now) const {
    return now > last_ ? std::chrono::duration<double>(now - last_).count() : 0.0;
  }
  void refill(time_point now) {
    tokens_ = std::min(burst_, tokens_ + elapsed(now) * rate_);
    if (now > last_) last_ = now;
  }

  double rate_ = 0;
  double burst_ = 1;
  double tokens_ = 1;
  time_point last_{};
};

}  // namespace hookline::detail
