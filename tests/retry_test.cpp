#include "hookline/retry.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <set>

using namespace std::chrono_literals;
using hookline::duration;
using hookline::retry_policy;

TEST(retry, default_schedule_follows_standard_webhooks) {
  const auto s = retry_policy::default_schedule();
  const std::vector<duration> expected = {5s, 5min, 30min, 2h, 5h, 10h, 14h, 20h, 24h};
  EXPECT_EQ(s, expected);
  retry_policy p;
  EXPECT_EQ(p.attempts_allowed(), 10u);  // immediately, then nine delays
}

TEST(retry, schedule_of_three_delays_means_four_attempts) {
  retry_policy p;
  p.schedule = {200ms, 200ms, 200ms};
  p.jitter = 0;
  std::mt19937_64 rng(1);
  EXPECT_EQ(p.attempts_allowed(), 4u);
  EXPECT_EQ(p.next_delay(1, std::nullopt, rng), duration(200));
  EXPECT_EQ(p.next_delay(3, std::nullopt, rng), duration(200));
  EXPECT_FALSE(p.next_delay(4, std::nullopt, rng).has_value());
}

TEST(retry, max_attempts_lowers_and_extends_the_schedule) {
  retry_policy p;
  p.schedule = {10ms, 20ms};
  p.jitter = 0;
  std::mt19937_64 rng(1);
  p.max_attempts = 2;
  EXPECT_EQ(p.next_delay(1, std::nullopt, rng), duration(10));
  EXPECT_FALSE(p.next_delay(2, std::nullopt, rng).has_value());
  p.max_attempts = 5;  // beyond the schedule the last delay repeats
  EXPECT_EQ(p.next_delay(3, std::nullopt, rng), duration(20));
  EXPECT_EQ(p.next_delay(4, std::nullopt, rng), duration(20));
  EXPECT_FALSE(p.next_delay(5, std::nullopt, rng).has_value());
}

TEST(retry, jitter_stays_within_twenty_percent_and_varies) {
  retry_policy p;
  p.schedule = {1000ms};
  std::mt19937_64 rng(42);
  std::set<duration::rep> seen;
  for (int i = 0; i < 2000; ++i) {
    auto d = p.next_delay(1, std::nullopt, rng);
    ASSERT_TRUE(d);
    EXPECT_GE(d->count(), 800);
    EXPECT_LE(d->count(), 1200);
    seen.insert(d->count());
  }
  EXPECT_GT(seen.size(), 100u);
  EXPECT_LT(*seen.begin(), 850);
  EXPECT_GT(*seen.rbegin(), 1150);
}

TEST(retry, sub_second_delays_work) {
  retry_policy p;
  p.schedule = {50ms};
  std::mt19937_64 rng(3);
  auto d = p.next_delay(1, std::nullopt, rng);
  ASSERT_TRUE(d);
  EXPECT_GE(d->count(), 40);
  EXPECT_LE(d->count(), 60);
}

TEST(retry, retry_after_is_a_lower_bound_capped_at_the_maximum) {
  retry_policy p;
  p.schedule = {100ms};
  p.jitter = 0;
  p.retry_after_max = 1h;
  std::mt19937_64 rng(1);
  EXPECT_EQ(p.next_delay(1, duration(2000), rng), duration(2000));
  EXPECT_EQ(p.next_delay(1, duration(10), rng), duration(100));  // never shortens the schedule
  EXPECT_EQ(p.next_delay(1, std::chrono::duration_cast<duration>(5h), rng),
            std::chrono::duration_cast<duration>(1h));
}

TEST(retry, max_age_expires_late_attempts) {
  retry_policy p;
  const auto t0 = std::chrono::system_clock::time_point{} + std::chrono::hours(1000);
  EXPECT_FALSE(p.expired(t0, t0 + 1000h));  // 0 = no limit
  p.max_age = std::chrono::duration_cast<duration>(1h);
  EXPECT_FALSE(p.expired(t0, t0 + 59min));
  EXPECT_TRUE(p.expired(t0, t0 + 1h));
  EXPECT_TRUE(p.expired(t0, t0 + 2h));
}

TEST(retry, parses_retry_after_seconds_and_http_dates) {
  // 1994-11-06T08:49:37Z
  const auto now = std::chrono::system_clock::from_time_t(784111777);
  using hookline::parse_retry_after;
  EXPECT_EQ(parse_retry_after("120", now), duration(120000));
  EXPECT_EQ(parse_retry_after(" 0 ", now), duration(0));
  EXPECT_EQ(parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now), duration(60000));
  EXPECT_EQ(parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now), duration(10000));
  EXPECT_EQ(parse_retry_after("Sun Nov  6 08:49:39 1994", now), duration(2000));
  EXPECT_EQ(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), duration(0));  // past
  EXPECT_FALSE(parse_retry_after("soon", now));
  EXPECT_FALSE(parse_retry_after("-5", now));
  EXPECT_FALSE(parse_retry_after("Sun, 06 Nov 1994 25:00:00 GMT", now));
  EXPECT_FALSE(parse_retry_after("", now));
}
