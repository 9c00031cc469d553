// One behaviour suite for every delivery_store: memory, SQLite and PostgreSQL, each opened through
// hookline::make_store with its URI.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "hookline/error.hpp"
#include "hookline/store.hpp"
#include "store_test_util.hpp"

namespace hookline {
namespace {

using namespace std::chrono_literals;
using test::make_attempt;
using test::make_message;

message_query mq(std::optional<message_status> status = {},
                 std::optional<std::string> subscription = {}, std::optional<time_point> since = {},
                 std::size_t limit = 1000) {
  message_query q;
  q.status = status;
  q.subscription_id = std::move(subscription);
  q.since = since;
  q.limit = limit;
  return q;
}

attempt_query aq(std::optional<std::string> message_id = {},
                 std::optional<std::string> subscription = {}, std::optional<time_point> since = {},
                 std::size_t limit = 1000) {
  attempt_query q;
  q.message_id = std::move(message_id);
  q.subscription_id = std::move(subscription);
  q.since = since;
  q.limit = limit;
  return q;
}

class store_conformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string kind = GetParam();
    store_options options;
    options.request_timeout = 1s;
    if (kind == "memory") {
      store_ = make_store("memory:", options);
    } else if (kind == "sqlite") {
      dir_ = std::make_unique<test::temp_dir>();
      store_ = make_store("sqlite:" + dir_->file("outbox.db"), options);
    } else if (kind == "forwarded") {
      // A wrapper made with forwarding_store must behave exactly as the store it wraps,
      // including the members delivery_store has defaults for.
      dir_ = std::make_unique<test::temp_dir>();
      store_ = std::make_shared<forwarding_store>(
          make_store("sqlite:" + dir_->file("outbox.db"), options));
    } else {
      const std::string base = test::test_pg_conninfo();
      ASSERT_FALSE(base.empty());
      schema_ = std::make_unique<test::pg_schema>(base);
      store_ = make_store("postgres:" + schema_->conninfo(), options);
    }
    ASSERT_NE(store_, nullptr);
  }

  claim_request claim_at(time_point now, std::size_t max = 64, std::string worker = "w1") {
    claim_request r;
    r.now = now;
    r.max = max;
    r.lease = 30s;
    r.worker_id = std::move(worker);
    return r;
  }

  void put(std::vector<message> batch) { store_->enqueue(batch); }

  static std::vector<std::string> ids(const std::vector<message>& ms) {
    std::vector<std::string> out;
    for (const auto& m : ms) out.push_back(m.id);
    return out;
  }

  const time_point t0_ = std::chrono::system_clock::now();
  std::unique_ptr<test::temp_dir> dir_;
  std::unique_ptr<test::pg_schema> schema_;
  std::shared_ptr<delivery_store> store_;
};

TEST_P(store_conformance, enqueue_assigns_increasing_sequence_and_keeps_every_field) {
  std::vector<message> batch{make_message("a", "s1", t0_), make_message("b", "s1", t0_ + 1s)};
  batch[1].ordered = true;
  store_->enqueue(batch);
  EXPECT_GT(batch[0].sequence, 0);
  EXPECT_GT(batch[1].sequence, batch[0].sequence);
  std::vector<message> later{make_message("c", "s2", t0_)};
  store_->enqueue(later);
  EXPECT_GT(later[0].sequence, batch[1].sequence);

  auto b = store_->get("b");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->id, "b");
  EXPECT_EQ(b->subscription_id, "s1");
  EXPECT_EQ(b->event_id, "evt-b");
  EXPECT_EQ(b->event_name, "Create");
  EXPECT_EQ(b->url, "https://hooks.example.com/s1");
  EXPECT_EQ(b->http_method, "POST");
  EXPECT_EQ(b->body, batch[1].body);
  EXPECT_TRUE(b->ordered);
  EXPECT_EQ(b->status, message_status::pending);
  EXPECT_EQ(b->attempts, 0);
  EXPECT_EQ(b->created_at, t0_ + 1s);
  EXPECT_EQ(b->next_attempt_at, t0_ + 1s);
  EXPECT_EQ(b->sequence, batch[1].sequence);
  EXPECT_FALSE(store_->get("missing").has_value());
}

TEST_P(store_conformance, claim_returns_due_messages_oldest_due_first) {
  put({make_message("late", "s1", t0_ + 3s), make_message("early", "s1", t0_ + 1s),
       make_message("future", "s1", t0_ + 1h), make_message("mid", "s2", t0_ + 2s)});
  auto got = store_->claim(claim_at(t0_ + 5s));
  EXPECT_EQ(ids(got), (std::vector<std::string>{"early", "mid", "late"}));
  for (const auto& m : got) EXPECT_EQ(m.status, message_status::pending);
}

TEST_P(store_conformance, claim_takes_at_most_max) {
  for (int i = 0; i < 5; ++i) put({make_message("m" + std::to_string(i), "s1", t0_ + i * 1ms)});
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 1s, 2))), (std::vector<std::string>{"m0", "m1"}));
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 1s, 2))), (std::vector<std::string>{"m2", "m3"}));
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 1s, 2))), (std::vector<std::string>{"m4"}));
}

TEST_P(store_conformance, live_lease_excludes_a_second_claim) {
  put({make_message("a", "s1", t0_)});
  ASSERT_EQ(store_->claim(claim_at(t0_, 10, "w1")).size(), 1u);
  EXPECT_TRUE(store_->claim(claim_at(t0_ + 29s, 10, "w2")).empty());
}

TEST_P(store_conformance, expired_lease_is_claimable_again) {
  put({make_message("a", "s1", t0_)});
  ASSERT_EQ(store_->claim(claim_at(t0_, 10, "crashed")).size(), 1u);
  auto again = store_->claim(claim_at(t0_ + 31s, 10, "w2"));
  EXPECT_EQ(ids(again), (std::vector<std::string>{"a"}));
}

TEST_P(store_conformance, ordered_message_waits_until_the_earlier_one_is_done) {
  put({make_message("o1", "s1", t0_, true), make_message("o2", "s1", t0_, true),
       make_message("x", "s2", t0_, true)});
  // Only the head of each ordered subscription is claimable.
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 1s))), (std::vector<std::string>{"o1", "x"}));
  EXPECT_TRUE(store_->claim(claim_at(t0_ + 1s)).empty());
  // A retry of the head keeps the next one waiting.
  auto o1 = *store_->get("o1");
  store_->reschedule("o1", t0_ + 10s, make_attempt(o1, 1, 503, t0_ + 1s, false));
  EXPECT_TRUE(store_->claim(claim_at(t0_ + 2s)).empty());
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 10s))), (std::vector<std::string>{"o1"}));
  store_->complete("o1", make_attempt(o1, 2, 200, t0_ + 10s, true));
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 11s))), (std::vector<std::string>{"o2"}));
}

// Messages published while the subscription was not ordered promised no order: they do not hold
// up its first ordered message.
TEST_P(store_conformance, an_earlier_unordered_message_does_not_hold_up_an_ordered_one) {
  put({make_message("u", "s1", t0_), make_message("o1", "s1", t0_ + 1ms, true),
       make_message("o2", "s1", t0_ + 2ms, true)});
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 1s))), (std::vector<std::string>{"u", "o1"}));
}

TEST_P(store_conformance, complete_marks_delivered_releases_and_records_the_attempt) {
  put({make_message("a", "s1", t0_)});
  auto m = store_->claim(claim_at(t0_)).at(0);
  store_->complete("a", make_attempt(m, 1, 204, t0_ + 1s, true));
  auto got = *store_->get("a");
  EXPECT_EQ(got.status, message_status::delivered);
  EXPECT_EQ(got.attempts, 1);
  EXPECT_EQ(got.last_status, 204);
  EXPECT_EQ(store_->counts(t0_ + 2s).in_flight, 0u);
  EXPECT_TRUE(store_->claim(claim_at(t0_ + 1h)).empty());
  auto log = store_->attempts(aq(std::string("a")));
  ASSERT_EQ(log.size(), 1u);
  EXPECT_TRUE(log[0].success);
}

TEST_P(store_conformance, reschedule_moves_the_due_time_and_counts_attempts) {
  put({make_message("a", "s1", t0_)});
  auto m = store_->claim(claim_at(t0_)).at(0);
  store_->reschedule("a", t0_ + 5s, make_attempt(m, 1, 500, t0_, false));
  auto got = *store_->get("a");
  EXPECT_EQ(got.status, message_status::pending);
  EXPECT_EQ(got.attempts, 1);
  EXPECT_EQ(got.last_status, 500);
  EXPECT_EQ(got.last_error, "HTTP 500");
  EXPECT_EQ(got.next_attempt_at, t0_ + 5s);
  EXPECT_TRUE(store_->claim(claim_at(t0_ + 4s)).empty());
  auto again = store_->claim(claim_at(t0_ + 5s));
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempts, 1);
  store_->reschedule("a", t0_ + 10s, make_attempt(again[0], 2, 0, t0_ + 5s, false));
  EXPECT_EQ(store_->get("a")->attempts, 2);
  EXPECT_EQ(store_->get("a")->last_error, "connection refused");
}

// The dispatcher hands every result of a loop turn over at once.
TEST_P(store_conformance, record_results_completes_and_reschedules_a_batch_in_order) {
  put({make_message("a", "s1", t0_), make_message("b", "s1", t0_), make_message("c", "s2", t0_)});
  auto claimed = store_->claim(claim_at(t0_));
  ASSERT_EQ(claimed.size(), 3u);
  std::vector<attempt_result> batch;
  batch.push_back({"a", std::nullopt, make_attempt(claimed[0], 1, 204, t0_ + 1s, true)});
  batch.push_back({"b", t0_ + 30s, make_attempt(claimed[1], 1, 503, t0_ + 1s, false)});
  batch.push_back({"c", std::nullopt, make_attempt(claimed[2], 1, 200, t0_ + 1s, true)});
  // A result for a message the store does not know records nothing.
  batch.push_back({"unknown", std::nullopt, make_attempt(claimed[2], 1, 200, t0_ + 1s, true)});
  store_->record_results(batch);
  EXPECT_FALSE(store_->get("unknown"));
  EXPECT_EQ(store_->get("a")->status, message_status::delivered);
  EXPECT_EQ(store_->get("c")->status, message_status::delivered);
  auto b = *store_->get("b");
  EXPECT_EQ(b.status, message_status::pending);
  EXPECT_EQ(b.attempts, 1);
  EXPECT_EQ(b.last_error, "HTTP 503");
  EXPECT_EQ(b.next_attempt_at, t0_ + 30s);
  EXPECT_EQ(store_->counts(t0_ + 2s).in_flight, 0u);
  EXPECT_TRUE(store_->claim(claim_at(t0_ + 29s)).empty());
  EXPECT_EQ(store_->claim(claim_at(t0_ + 30s)).size(), 1u);
  EXPECT_EQ(store_->attempts(aq()).size(), 3u);
  EXPECT_EQ(store_->stats("s1").calls, 2u);
  EXPECT_EQ(store_->stats("s1").failures, 1u);
  EXPECT_EQ(store_->stats("s2").status_2xx, 1u);
}

TEST_P(store_conformance, dead_letter_and_query_by_status_and_subscription) {
  put({make_message("a", "s1", t0_), make_message("b", "s1", t0_ + 1ms),
       make_message("c", "s2", t0_ + 2ms)});
  auto claimed = store_->claim(claim_at(t0_ + 1s));
  ASSERT_EQ(claimed.size(), 3u);
  auto a = make_attempt(claimed[0], 1, 400, t0_ + 1s, false);
  store_->dead_letter("a", "HTTP 400: permanent failure", &a);
  store_->dead_letter("c", "subscription removed", nullptr);
  auto dead = store_->query(mq(message_status::dead));
  EXPECT_EQ(ids(dead), (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(dead[0].last_error, "HTTP 400: permanent failure");
  EXPECT_EQ(dead[0].last_status, 400);
  EXPECT_EQ(dead[0].attempts, 1);
  EXPECT_EQ(dead[1].attempts, 0);
  EXPECT_EQ(ids(store_->query(mq(message_status::dead, std::string("s1")))),
            (std::vector<std::string>{"a"}));
  EXPECT_EQ(ids(store_->query(mq({}, std::string("s1")))), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(ids(store_->query(mq(message_status::pending))), (std::vector<std::string>{"b"}));
  EXPECT_EQ(store_->attempts(aq(std::string("a"))).size(), 1u);
  EXPECT_TRUE(store_->attempts(aq(std::string("c"))).empty());
}

TEST_P(store_conformance, query_filters_by_creation_time_and_limits) {
  for (int i = 0; i < 6; ++i) put({make_message("m" + std::to_string(i), "s1", t0_ + i * 1s)});
  EXPECT_EQ(ids(store_->query(mq({}, {}, t0_ + 4s))), (std::vector<std::string>{"m4", "m5"}));
  EXPECT_EQ(ids(store_->query(mq({}, {}, {}, 3))), (std::vector<std::string>{"m0", "m1", "m2"}));
}

TEST_P(store_conformance, redeliver_makes_a_dead_or_delivered_message_pending_and_due) {
  put({make_message("a", "s1", t0_), make_message("b", "s1", t0_)});
  auto claimed = store_->claim(claim_at(t0_));
  store_->dead_letter("a", "gave up", nullptr);
  store_->complete("b", make_attempt(claimed[1], 1, 200, t0_, true));
  EXPECT_TRUE(store_->redeliver("a", t0_ + 1h));
  EXPECT_TRUE(store_->redeliver("b", t0_ + 1h));
  EXPECT_FALSE(store_->redeliver("unknown", t0_ + 1h));
  auto a = *store_->get("a");
  EXPECT_EQ(a.status, message_status::pending);
  EXPECT_EQ(a.next_attempt_at, t0_ + 1h);
  EXPECT_TRUE(store_->claim(claim_at(t0_ + 1h - 1s)).empty());
  auto again = store_->claim(claim_at(t0_ + 1h));
  std::set<std::string> got;
  for (const auto& m : again) got.insert(m.id);
  EXPECT_EQ(got, (std::set<std::string>{"a", "b"}));
}

TEST_P(store_conformance, recover_revives_dead_messages_of_one_subscription_since_a_time) {
  put({make_message("old", "s1", t0_), make_message("new1", "s1", t0_ + 10s),
       make_message("new2", "s1", t0_ + 20s), make_message("other", "s2", t0_ + 20s)});
  store_->claim(claim_at(t0_ + 30s));
  for (const char* id : {"old", "new1", "new2", "other"}) store_->dead_letter(id, "down", nullptr);
  EXPECT_EQ(store_->recover("s1", t0_ + 5s, t0_ + 1h), 2u);
  EXPECT_EQ(store_->get("old")->status, message_status::dead);
  EXPECT_EQ(store_->get("new1")->status, message_status::pending);
  EXPECT_EQ(store_->get("new2")->status, message_status::pending);
  EXPECT_EQ(store_->get("other")->status, message_status::dead);
  EXPECT_EQ(store_->get("new1")->next_attempt_at, t0_ + 1h);
  EXPECT_EQ(store_->recover("s1", t0_ + 5s, t0_ + 1h), 0u);
}

TEST_P(store_conformance, attempts_are_recorded_with_every_field_and_queryable) {
  put({make_message("a", "s1", t0_), make_message("b", "s2", t0_)});
  auto claimed = store_->claim(claim_at(t0_));
  ASSERT_EQ(claimed.size(), 2u);
  auto first = make_attempt(claimed[0], 1, 502, t0_ + 1s, false);
  first.duration = 2345us;
  first.request_length = 321;
  first.response_length = 12345;
  first.response_head = "<html>bad gateway</html>";
  first.error = "HTTP 502";
  store_->reschedule("a", t0_ + 2s, first);
  store_->complete("b", make_attempt(claimed[1], 1, 200, t0_ + 3s, true));
  store_->claim(claim_at(t0_ + 2s));
  store_->complete("a", make_attempt(claimed[0], 2, 201, t0_ + 4s, true));

  auto log = store_->attempts(aq(std::string("a")));
  ASSERT_EQ(log.size(), 2u);
  const auto& r = log[0];
  EXPECT_EQ(r.message_id, "a");
  EXPECT_EQ(r.subscription_id, "s1");
  EXPECT_EQ(r.event_id, "evt-a");
  EXPECT_EQ(r.event_name, "Create");
  EXPECT_EQ(r.url, "https://hooks.example.com/s1");
  EXPECT_EQ(r.http_method, "POST");
  EXPECT_EQ(r.attempt, 1);
  EXPECT_EQ(r.started_at, t0_ + 1s);
  EXPECT_EQ(r.duration, 2345us);
  EXPECT_EQ(r.status_code, 502);
  EXPECT_EQ(r.error, "HTTP 502");
  EXPECT_EQ(r.request_length, 321u);
  EXPECT_EQ(r.response_length, 12345u);
  EXPECT_EQ(r.response_head, "<html>bad gateway</html>");
  EXPECT_FALSE(r.success);
  EXPECT_EQ(log[1].attempt, 2);
  EXPECT_TRUE(log[1].success);

  EXPECT_EQ(store_->attempts(aq({}, std::string("s2"))).size(), 1u);
  EXPECT_EQ(store_->attempts(aq({}, {}, t0_ + 2500ms)).size(), 2u);
  auto last = store_->attempts(aq({}, {}, {}, 1));
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0].started_at, t0_ + 4s);  // the most recent one
}

TEST_P(store_conformance, stats_count_calls_status_classes_failures_and_bytes) {
  put({make_message("a", "s1", t0_)});
  auto m = store_->claim(claim_at(t0_)).at(0);
  store_->reschedule("a", t0_, make_attempt(m, 1, 0, t0_, false));
  store_->reschedule("a", t0_, make_attempt(m, 2, 503, t0_, false));
  store_->reschedule("a", t0_, make_attempt(m, 3, 429, t0_, false));
  store_->reschedule("a", t0_, make_attempt(m, 4, 302, t0_, false));
  store_->complete("a", make_attempt(m, 5, 200, t0_, true));
  auto s = store_->stats("s1");
  EXPECT_EQ(s.calls, 5u);
  EXPECT_EQ(s.status_1xx, 0u);
  EXPECT_EQ(s.status_2xx, 1u);
  EXPECT_EQ(s.status_3xx, 1u);
  EXPECT_EQ(s.status_4xx, 1u);
  EXPECT_EQ(s.status_5xx, 1u);
  EXPECT_EQ(s.failures, 4u);
  EXPECT_EQ(s.errors, 1u);
  EXPECT_EQ(s.request_bytes, 5 * m.body.size());
  EXPECT_EQ(s.response_bytes, 35u);
  EXPECT_DOUBLE_EQ(s.success_rate(), 0.2);
  EXPECT_EQ(store_->stats("nobody").calls, 0u);
}

TEST_P(store_conformance, counts_report_each_status_and_live_leases) {
  put({make_message("a", "s1", t0_), make_message("b", "s1", t0_), make_message("c", "s1", t0_),
       make_message("d", "s1", t0_ + 1h)});
  auto claimed = store_->claim(claim_at(t0_, 3));
  ASSERT_EQ(claimed.size(), 3u);
  store_->complete(claimed[0].id, make_attempt(claimed[0], 1, 200, t0_, true));
  store_->dead_letter(claimed[1].id, "no", nullptr);
  auto c = store_->counts(t0_ + 1s);
  EXPECT_EQ(c.pending, 2u);
  EXPECT_EQ(c.delivered, 1u);
  EXPECT_EQ(c.dead, 1u);
  EXPECT_EQ(c.in_flight, 1u);
  EXPECT_EQ(store_->counts(t0_ + 1min).in_flight, 0u);  // the lease ran out
  // The pending count alone agrees: leased and not yet due ones are pending, finished ones not.
  EXPECT_EQ(store_->count_pending(t0_ + 1s), 2u);
  store_->reschedule(claimed[2].id, t0_ + 1h, make_attempt(claimed[2], 1, 500, t0_, false));
  EXPECT_EQ(store_->count_pending(t0_ + 1s), 2u);
  store_->redeliver(claimed[0].id, t0_ + 2s);
  EXPECT_EQ(store_->count_pending(t0_ + 2s), 3u);
  EXPECT_EQ(store_->counts(t0_ + 2s).pending, 3u);
}

TEST_P(store_conformance, next_due_is_the_earliest_claimable_time) {
  EXPECT_FALSE(store_->next_due(t0_).has_value());
  put({make_message("a", "s1", t0_ + 5s), make_message("b", "s1", t0_ + 9s)});
  EXPECT_EQ(store_->next_due(t0_), t0_ + 5s);
  store_->claim(claim_at(t0_ + 5s, 1));
  // "a" is leased until t0+35s; "b" is next.
  EXPECT_EQ(store_->next_due(t0_ + 5s), t0_ + 9s);
  store_->claim(claim_at(t0_ + 9s, 1));
  // Nothing claimable; the earliest lease end is when work may come back.
  EXPECT_EQ(store_->next_due(t0_ + 9s), t0_ + 35s);
}

TEST_P(store_conformance, next_due_ignores_ordered_messages_behind_their_head) {
  put({make_message("o1", "s1", t0_, true), make_message("o2", "s1", t0_, true)});
  store_->claim(claim_at(t0_, 1));
  // o2 is due but blocked by o1: waking before o1's lease ends would find nothing to claim.
  EXPECT_EQ(store_->next_due(t0_), t0_ + 30s);
}

TEST_P(store_conformance, subscription_state_is_saved_and_loaded) {
  subscription_state a{"s1", true, "HTTP 410 Gone", std::nullopt};
  subscription_state b{"s2", false, "", t0_};
  store_->save_state(a);
  store_->save_state(b);
  b.failing_since = t0_ + 1s;
  store_->save_state(b);  // an update, not a second row
  auto states = store_->load_states();
  ASSERT_EQ(states.size(), 2u);
  std::sort(states.begin(), states.end(),
            [](auto& x, auto& y) { return x.subscription_id < y.subscription_id; });
  EXPECT_EQ(states[0].subscription_id, "s1");
  EXPECT_TRUE(states[0].disabled);
  EXPECT_EQ(states[0].reason, "HTTP 410 Gone");
  EXPECT_FALSE(states[0].failing_since.has_value());
  EXPECT_EQ(states[1].subscription_id, "s2");
  EXPECT_FALSE(states[1].disabled);
  EXPECT_EQ(states[1].failing_since, t0_ + 1s);
}

TEST_P(store_conformance, prune_removes_old_delivered_messages_and_attempts_but_keeps_dead) {
  put({make_message("old", "s1", t0_), make_message("dead", "s1", t0_),
       make_message("recent", "s1", t0_), make_message("pending", "s1", t0_ + 1h)});
  auto claimed = store_->claim(claim_at(t0_, 3));
  ASSERT_EQ(claimed.size(), 3u);
  store_->complete("old", make_attempt(claimed[0], 1, 200, t0_, true));
  auto dead_attempt = make_attempt(claimed[1], 1, 400, t0_, false);
  store_->dead_letter("dead", "bad request", &dead_attempt);
  store_->complete("recent", make_attempt(claimed[2], 1, 200, t0_ + 2h, true));
  const auto removed = store_->prune(t0_ + 1h);
  EXPECT_EQ(removed, 3u);  // "old" and the two attempts started at t0
  EXPECT_FALSE(store_->get("old").has_value());
  EXPECT_TRUE(store_->get("dead").has_value());
  EXPECT_TRUE(store_->get("recent").has_value());
  EXPECT_TRUE(store_->get("pending").has_value());
  EXPECT_EQ(store_->attempts(aq()).size(), 1u);
}

TEST_P(store_conformance, release_makes_a_message_due_at_the_given_time) {
  put({make_message("a", "s1", t0_)});
  store_->claim(claim_at(t0_));
  store_->release("a", t0_ + 3s);
  EXPECT_EQ(store_->get("a")->attempts, 0);
  EXPECT_TRUE(store_->claim(claim_at(t0_ + 2s)).empty());
  EXPECT_EQ(store_->claim(claim_at(t0_ + 3s)).size(), 1u);
}

// A worker whose lease ran out (and went to another worker) must not free the other's lease
// when it lets go late: the other is sending, and a third would send it again.
TEST_P(store_conformance, release_if_held_leaves_another_workers_lease_alone) {
  put({make_message("a", "s1", t0_), make_message("b", "s1", t0_)});
  ASSERT_EQ(store_->claim(claim_at(t0_, 2, "w1")).size(), 2u);
  // w1's 30 s leases run out; w2 takes "a" and "b" over.
  ASSERT_EQ(store_->claim(claim_at(t0_ + 31s, 2, "w2")).size(), 2u);
  store_->release_if_held("a", "w1", t0_ + 31s);
  EXPECT_TRUE(store_->claim(claim_at(t0_ + 32s, 10, "w3")).empty()) << "w2 still holds both";
  EXPECT_EQ(store_->counts(t0_ + 32s).in_flight, 2u);
  // The holder itself releases as release() does.
  store_->release_if_held("b", "w2", t0_ + 33s);
  const auto again = store_->claim(claim_at(t0_ + 33s, 10, "w3"));
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].id, "b");
  // w2 tried "a" and set its retry an hour out; w1's give-back, later still, keeps that time.
  const auto a = store_->get("a");
  ASSERT_TRUE(a);
  store_->reschedule("a", t0_ + 1h, make_attempt(*a, 1, 503, t0_ + 34s, false));
  store_->release_if_held("a", "w1", t0_ + 35s);
  EXPECT_TRUE(store_->claim(claim_at(t0_ + 36s, 10, "w4")).empty());
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 1h, 10, "w4"))),
            (std::vector<std::string>{"b", "a"}));  // due order; w3's lease on "b" ran out
}

// A worker whose lease ran out while it was sending, and went to another worker, must not move
// the message when its result comes in late: a retry time would free the other's lease (a third
// worker would send the message while the second still is), a give-up would end what the other
// may still deliver. Its attempt is recorded all the same, and a delivery always counts.
TEST_P(store_conformance, a_late_result_leaves_a_message_another_worker_took_over_alone) {
  put({make_message("a", "s1", t0_), make_message("b", "s1", t0_), make_message("c", "s1", t0_)});
  ASSERT_EQ(store_->claim(claim_at(t0_, 3, "w1")).size(), 3u);
  // w1's 30 s leases run out; w2 takes them over.
  ASSERT_EQ(store_->claim(claim_at(t0_ + 31s, 3, "w2")).size(), 3u);
  put({make_message("d", "s1", t0_ + 32s)});
  const auto a = *store_->get("a");
  const auto b = *store_->get("b");
  const auto c = *store_->get("c");
  std::vector<attempt_result> late;
  late.push_back({"a", t0_ + 1h, make_attempt(a, 1, 503, t0_ + 31s, false), "w1"});
  late.push_back({"b", std::nullopt, make_attempt(b, 1, 200, t0_ + 31s, true), "w1"});
  store_->record_results(late);
  const auto c_failed = make_attempt(c, 1, 400, t0_ + 31s, false);
  store_->dead_letter_if_held("c", "w1", "HTTP 400", &c_failed);
  store_->dead_letter_if_held("a", "w1", "given up without an attempt", nullptr);
  const auto a_after = *store_->get("a");
  EXPECT_EQ(a_after.status, message_status::pending);
  EXPECT_EQ(a_after.attempts, 0);
  EXPECT_EQ(a_after.last_status, 0);
  EXPECT_EQ(a_after.last_error, "");
  EXPECT_EQ(store_->get("b")->status, message_status::delivered);
  EXPECT_EQ(store_->get("c")->status, message_status::pending);
  EXPECT_EQ(store_->counts(t0_ + 32s).in_flight, 2u) << "w2 still holds a and c";
  EXPECT_EQ(store_->stats("s1").calls, 3u) << "the ignored attempts count in the statistics";
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 32s, 10, "w3"))), (std::vector<std::string>{"d"}));
  EXPECT_EQ(store_->attempts(aq()).size(), 3u) << "every attempt is in the log";
  // The holder's own results move the message.
  std::vector<attempt_result> own;
  own.push_back({"a", t0_ + 40s, make_attempt(a, 1, 503, t0_ + 33s, false), "w2"});
  store_->record_results(own);
  store_->dead_letter_if_held("c", "w2", "HTTP 400", &c_failed);
  EXPECT_EQ(store_->get("c")->status, message_status::dead);
  EXPECT_EQ(store_->get("a")->last_status, 503);
  EXPECT_TRUE(store_->claim(claim_at(t0_ + 39s, 10, "w4")).empty());
  ASSERT_EQ(ids(store_->claim(claim_at(t0_ + 40s, 10, "w4"))), (std::vector<std::string>{"a"}));
  // A lease that ran out with nobody taking the message over is still its holder's: w4's result,
  // late but unopposed, counts (the claim at +75 s, which sees that lease run out, takes only
  // "d", due earlier, whose lease ran out too).
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 75s, 1, "w5"))), (std::vector<std::string>{"d"}));
  std::vector<attempt_result> unopposed;
  unopposed.push_back({"a", t0_ + 2h, make_attempt(a, 2, 503, t0_ + 75s, false), "w4"});
  store_->record_results(unopposed);
  EXPECT_TRUE(store_->claim(claim_at(t0_ + 76s, 10, "w5")).empty());
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 2h, 10, "w6"))), (std::vector<std::string>{"d", "a"}));
}

TEST_P(store_conformance, release_worker_frees_only_that_workers_leases) {
  put({make_message("a", "s1", t0_), make_message("b", "s1", t0_), make_message("c", "s1", t0_)});
  ASSERT_EQ(store_->claim(claim_at(t0_, 2, "w1")).size(), 2u);
  ASSERT_EQ(store_->claim(claim_at(t0_, 2, "w2")).size(), 1u);
  EXPECT_EQ(store_->release_worker("w1"), 2u);
  EXPECT_EQ(store_->release_worker("nobody"), 0u);
  auto again = store_->claim(claim_at(t0_ + 1s, 10, "w3"));
  EXPECT_EQ(again.size(), 2u);
  EXPECT_EQ(store_->counts(t0_ + 1s).in_flight, 3u);
}

// A lease that ran out, seen by a claim that took another message, is still its worker's until
// release_worker() lets go of it: then that worker's late result no longer moves the message.
TEST_P(store_conformance, release_worker_also_lets_go_of_leases_that_ran_out) {
  put({make_message("a", "s1", t0_ + 5s)});
  ASSERT_EQ(ids(store_->claim(claim_at(t0_ + 5s, 1, "w1"))), (std::vector<std::string>{"a"}));
  put({make_message("b", "s1", t0_)});
  // w1's lease on "a" ran out at +35 s; this claim sees that and takes only "b", due earlier.
  ASSERT_EQ(ids(store_->claim(claim_at(t0_ + 36s, 1, "w2"))), (std::vector<std::string>{"b"}));
  EXPECT_EQ(store_->release_worker("w1"), 1u);
  const auto a = *store_->get("a");
  std::vector<attempt_result> late;
  late.push_back({"a", t0_ + 1h, make_attempt(a, 1, 503, t0_ + 37s, false), "w1"});
  store_->record_results(late);
  EXPECT_EQ(store_->get("a")->last_status, 0);
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 38s, 10, "w3"))), (std::vector<std::string>{"a"}));
}

// enqueue_claimed(): the first `count` unordered messages are stored leased to the publisher's
// worker (no claim hands them out until the lease ends or the worker lets go); ordered ones and
// the rest are claimable as usual.
TEST_P(store_conformance, enqueue_claimed_leases_the_first_unordered_messages) {
  std::vector<message> batch{make_message("o", "s1", t0_, true), make_message("a", "s2", t0_),
                             make_message("b", "s2", t0_), make_message("c", "s2", t0_)};
  const auto leased = store_->enqueue_claimed(batch, enqueue_lease{"pub", t0_ + 30s, 2});
  EXPECT_EQ(leased, (std::vector<bool>{false, true, true, false}));
  EXPECT_GT(batch[3].sequence, batch[0].sequence);
  EXPECT_EQ(store_->counts(t0_).pending, 4u);
  EXPECT_EQ(store_->counts(t0_).in_flight, 2u);
  EXPECT_EQ(store_->next_due(t0_), t0_);
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 1s, 10, "w2"))), (std::vector<std::string>{"o", "c"}));
  EXPECT_EQ(store_->next_due(t0_ + 1s), t0_ + 30s) << "the publisher's lease ends";
  // The publisher delivers one; the other is given back when it stops.
  store_->complete("a", make_attempt(batch[1], 1, 200, t0_ + 1s, true));
  EXPECT_EQ(store_->get("a")->status, message_status::delivered);
  EXPECT_EQ(store_->release_worker("pub"), 1u);
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 2s, 10, "w2"))), (std::vector<std::string>{"b"}));
}

// An enqueue the host retries (after a timeout, say) stores nothing twice: a message whose id is
// stored already, or comes earlier in the same batch, keeps that message's place and content and
// is not leased; the others are stored as usual.
TEST_P(store_conformance, an_enqueue_retried_with_known_ids_stores_each_id_once) {
  std::vector<message> first{make_message("a", "s1", t0_), make_message("b", "s1", t0_)};
  store_->enqueue(first);
  auto again_b = make_message("b", "s1", t0_);
  again_b.body = "other";
  std::vector<message> batch{make_message("x", "s1", t0_), again_b, make_message("y", "s1", t0_),
                             make_message("y", "s1", t0_), make_message("a", "s1", t0_)};
  const auto leased = store_->enqueue_claimed(batch, enqueue_lease{"pub", t0_ + 30s, 5});
  EXPECT_EQ(leased, (std::vector<bool>{true, false, true, false, false}));
  EXPECT_EQ(batch[1].sequence, first[1].sequence);
  EXPECT_EQ(batch[3].sequence, batch[2].sequence);
  EXPECT_EQ(batch[4].sequence, first[0].sequence);
  EXPECT_GT(batch[0].sequence, first[1].sequence);
  EXPECT_EQ(store_->get("b")->body, first[1].body);
  std::vector<message> plain{make_message("a", "s1", t0_), make_message("z", "s1", t0_)};
  store_->enqueue(plain);
  EXPECT_EQ(plain[0].sequence, first[0].sequence);
  EXPECT_EQ(store_->counts(t0_).pending, 5u);
  EXPECT_EQ(store_->counts(t0_).in_flight, 2u);
  EXPECT_EQ(ids(store_->claim(claim_at(t0_, 10, "w2"))), (std::vector<std::string>{"a", "b", "z"}));
}

// A message without an id or a subscription is refused, naming what is missing, and nothing of
// its batch is stored.
TEST_P(store_conformance, an_enqueue_with_a_message_missing_its_id_or_subscription_stores_nothing) {
  for (const std::string field : {"id", "subscription_id"}) {
    std::vector<message> batch{make_message("ok-" + field, "s1", t0_),
                               make_message("bad-" + field, "s1", t0_)};
    if (field == "id") batch[1].id.clear();
    if (field == "subscription_id") batch[1].subscription_id.clear();
    try {
      store_->enqueue(batch);
      ADD_FAILURE() << "accepted a message without " << field;
    } catch (const error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(field), std::string::npos) << what;
      if (field == "id") {
        EXPECT_EQ(what.find("subscription"), std::string::npos) << what;
      }
    }
    EXPECT_FALSE(store_->get("ok-" + field)) << field;
  }
  EXPECT_EQ(store_->counts(t0_).pending, 0u);
}

TEST_P(store_conformance, a_lease_taken_at_enqueue_expires_like_a_claimed_one) {
  std::vector<message> batch{make_message("a", "s1", t0_)};
  ASSERT_EQ(store_->enqueue_claimed(batch, enqueue_lease{"crashed", t0_ + 30s, 1}),
            (std::vector<bool>{true}));
  EXPECT_TRUE(store_->claim(claim_at(t0_ + 29s, 10, "w2")).empty());
  EXPECT_EQ(ids(store_->claim(claim_at(t0_ + 30s, 10, "w2"))), (std::vector<std::string>{"a"}));
}

TEST_P(store_conformance, concurrent_enqueue_and_claim_lose_and_duplicate_nothing) {
  constexpr int threads = 4, per_thread = 50;
  std::vector<std::thread> producers;
  for (int t = 0; t < threads; ++t) {
    producers.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        std::vector<message> b{
            make_message(std::to_string(t) + "-" + std::to_string(i), "s1", t0_)};
        store_->enqueue(b);
      }
    });
  }
  std::set<std::string> seen;
  std::size_t duplicates = 0;
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (seen.size() < threads * per_thread && std::chrono::steady_clock::now() < deadline) {
    for (auto& m : store_->claim(claim_at(t0_, 16))) {
      if (!seen.insert(m.id).second) ++duplicates;
      store_->complete(m.id, make_attempt(m, 1, 200, t0_, true));
    }
  }
  for (auto& p : producers) p.join();
  EXPECT_EQ(seen.size(), static_cast<std::size_t>(threads * per_thread));
  EXPECT_EQ(duplicates, 0u);
  EXPECT_EQ(store_->counts(t0_).delivered, static_cast<std::size_t>(threads * per_thread));
}

INSTANTIATE_TEST_SUITE_P(stores, store_conformance,
                         ::testing::Values("memory", "sqlite", "forwarded", "postgres"),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace hookline
