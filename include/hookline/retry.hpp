#pragma once
// Thread safety: value types; next_delay() is const and reentrant.

#include <chrono>
#include <optional>
#include <random>
#include <string_view>
#include <vector>

namespace hookline {

using duration = std::chrono::milliseconds;
using time_point = std::chrono::system_clock::time_point;

/// When to try again. Defaults follow Standard Webhooks: immediately, 5 s, 5 min, 30 min, 2 h,
/// 5 h, 10 h, 14 h, 20 h, 24 h, each with about +-20 % jitter.
struct retry_policy {
  /// Delay before attempt 2, 3, ... (the first attempt is immediate), so {200ms, 200ms, 200ms}
  /// means four attempts in all. Its size + 1 is the number of attempts unless max_attempts says
  /// otherwise (beyond the end of the schedule its last delay repeats).
  std::vector<duration> schedule = default_schedule();
  std::size_t max_attempts = 0;  ///< 0 = schedule.size() + 1
  /// Give up rather than schedule an attempt at or past created_at + max_age (0 = no limit).
  duration max_age{0};
  double jitter = 0.2;  ///< fraction, 0..1
  /// Retry-After is a lower bound on the next delay, capped at this.
  duration retry_after_max = std::chrono::hours(1);

  static std::vector<duration> default_schedule();
  std::size_t attempts_allowed() const;
  /// The delay after failed attempt number `attempt` (1-based), or nullopt to give up.
  /// `retry_after` from the response raises the delay (capped at retry_after_max).
  std::optional<duration> next_delay(std::size_t attempt, std::optional<duration> retry_after,
                                     std::mt19937_64& rng) const;
  /// True when an attempt at `at` would be too late for a message created at `created_at`.
  bool expired(time_point created_at, time_point at) const;
};

/// Parses a Retry-After value: delay-seconds or an HTTP-date (IMF-fixdate, RFC 850 or asctime),
/// as the delay from `now` (0 for a date in the past); nullopt when it is neither.
std::optional<duration> parse_retry_after(std::string_view value, time_point now);

}  // namespace hookline
