#include <gtest/gtest.h>

#include <chrono>

#include "hookline/error.hpp"
#include "hookline/store.hpp"

using namespace std::chrono_literals;
using namespace hookline;

namespace {

const time_point t0 = std::chrono::system_clock::from_time_t(1700000000);

message msg(std::string id, std::string sub, time_point due, bool ordered = false) {
  message m;
  m.id = std::move(id);
  m.subscription_id = std::move(sub);
  m.event_id = "evt-" + m.id;
  m.event_name = "Create";
  m.url = "https://example.com/" + m.subscription_id;
  m.http_method = "POST";
  m.body = R"({"x":1})";
  m.ordered = ordered;
  m.created_at = t0;
  m.next_attempt_at = due;
  return m;
}

attempt_record attempt(const message& m, int n, int status, bool ok, std::string error = {}) {
  attempt_record a;
  a.message_id = m.id;
  a.subscription_id = m.subscription_id;
  a.event_id = m.event_id;
  a.url = m.url;
  a.http_method = m.http_method;
  a.attempt = n;
  a.started_at = t0 + 1s;
  a.duration = 2ms;
  a.status_code = status;
  a.error = std::move(error);
  a.request_length = 100;
  a.response_length = 10;
  a.success = ok;
  return a;
}

claim_request claim_at(time_point now, std::size_t max = 64, std::string worker = "w1") {
  claim_request r;
  r.now = now;
  r.max = max;
  r.lease = 30000ms;
  r.worker_id = std::move(worker);
  return r;
}

std::vector<std::string> ids(const std::vector<message>& ms) {
  std::vector<std::string> out;
  for (const auto& m : ms) out.push_back(m.id);
  return out;
}

std::shared_ptr<delivery_store> fresh() {
  return make_store("memory:");
}

}  // namespace

TEST(memory_store, claims_due_messages_oldest_due_first) {
  auto s = fresh();
  std::vector<message> batch = {msg("c", "s1", t0 + 3s), msg("a", "s1", t0 + 1s),
                                msg("b", "s2", t0 + 1s), msg("late", "s1", t0 + 1h)};
  s->enqueue(batch);
  EXPECT_LT(batch[0].sequence, batch[1].sequence);
  EXPECT_EQ(ids(s->claim(claim_at(t0))), std::vector<std::string>{});
  EXPECT_EQ(ids(s->claim(claim_at(t0 + 5s, 2))), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(ids(s->claim(claim_at(t0 + 5s))), (std::vector<std::string>{"c"}));
  EXPECT_EQ(s->next_due(t0 + 5s), t0 + 5s + 30s);  // the first lease to expire
  auto c = s->counts(t0 + 5s);
  EXPECT_EQ(c.pending, 4u);
  EXPECT_EQ(c.in_flight, 3u);
}

TEST(memory_store, leases_expire_and_are_claimed_again) {
  auto s = fresh();
  std::vector<message> batch = {msg("a", "s1", t0)};
  s->enqueue(batch);
  ASSERT_EQ(s->claim(claim_at(t0, 64, "w1")).size(), 1u);
  EXPECT_TRUE(s->claim(claim_at(t0 + 29s, 64, "w2")).empty());
  EXPECT_EQ(s->counts(t0 + 29s).in_flight, 1u);
  EXPECT_EQ(s->counts(t0 + 31s).in_flight, 0u);
  EXPECT_EQ(ids(s->claim(claim_at(t0 + 31s, 64, "w2"))), std::vector<std::string>{"a"});
}

TEST(memory_store, release_worker_frees_only_that_workers_leases) {
  auto s = fresh();
  std::vector<message> batch = {msg("a", "s1", t0), msg("b", "s1", t0)};
  s->enqueue(batch);
  ASSERT_EQ(s->claim(claim_at(t0, 1, "w1")).size(), 1u);
  ASSERT_EQ(s->claim(claim_at(t0, 1, "w2")).size(), 1u);
  EXPECT_EQ(s->release_worker("w1"), 1u);
  EXPECT_EQ(ids(s->claim(claim_at(t0, 64, "w3"))), std::vector<std::string>{"a"});
}

TEST(memory_store, release_makes_a_message_due_later_without_an_attempt) {
  auto s = fresh();
  std::vector<message> batch = {msg("a", "s1", t0)};
  s->enqueue(batch);
  ASSERT_EQ(s->claim(claim_at(t0)).size(), 1u);
  s->release("a", t0 + 10s);
  EXPECT_TRUE(s->claim(claim_at(t0 + 9s)).empty());
  EXPECT_EQ(s->next_due(t0), t0 + 10s);
  auto got = s->claim(claim_at(t0 + 10s));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].attempts, 0);
  EXPECT_TRUE(s->attempts({}).empty());
}

TEST(memory_store, ordered_subscription_hands_out_only_its_head) {
  auto s = fresh();
  std::vector<message> batch = {msg("o1", "ord", t0, true), msg("o2", "ord", t0, true),
                                msg("o3", "ord", t0, true), msg("u1", "other", t0)};
  s->enqueue(batch);
  EXPECT_EQ(ids(s->claim(claim_at(t0))), (std::vector<std::string>{"o1", "u1"}));
  // A failed head keeps its place: the next waits even while the head is not due.
  s->reschedule("o1", t0 + 10s, attempt(batch[0], 1, 500, false, "HTTP 500"));
  EXPECT_TRUE(s->claim(claim_at(t0 + 5s)).empty());
  EXPECT_EQ(ids(s->claim(claim_at(t0 + 10s))), std::vector<std::string>{"o1"});
  s->complete("o1", attempt(batch[0], 2, 200, true));
  EXPECT_EQ(ids(s->claim(claim_at(t0 + 10s))), std::vector<std::string>{"o2"});
  s->dead_letter("o2", "HTTP 400", nullptr);  // given up: the next one goes
  EXPECT_EQ(ids(s->claim(claim_at(t0 + 10s))), std::vector<std::string>{"o3"});
}

TEST(memory_store, replaying_an_older_ordered_message_makes_it_the_head) {
  auto s = fresh();
  std::vector<message> batch = {msg("o1", "ord", t0, true), msg("o2", "ord", t0, true)};
  s->enqueue(batch);
  ASSERT_EQ(ids(s->claim(claim_at(t0))), std::vector<std::string>{"o1"});
  s->dead_letter("o1", "HTTP 400", nullptr);
  s->release("o2", t0);  // nothing to release: o2 was never claimed
  EXPECT_TRUE(s->redeliver("o1", t0 + 1s));
  EXPECT_EQ(ids(s->claim(claim_at(t0 + 1s))), std::vector<std::string>{"o1"});
  EXPECT_TRUE(s->claim(claim_at(t0 + 1s)).empty());
}

TEST(memory_store, complete_reschedule_and_dead_letter_update_the_message) {
  auto s = fresh();
  std::vector<message> batch = {msg("a", "s1", t0), msg("b", "s1", t0), msg("c", "s1", t0)};
  s->enqueue(batch);
  s->claim(claim_at(t0));
  s->reschedule("a", t0 + 5s, attempt(batch[0], 1, 503, false, "HTTP 503"));
  s->complete("b", attempt(batch[1], 1, 204, true));
  s->dead_letter("c", "HTTP 400", nullptr);
  auto a = s->get("a");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->status, message_status::pending);
  EXPECT_EQ(a->attempts, 1);
  EXPECT_EQ(a->last_status, 503);
  EXPECT_EQ(a->last_error, "HTTP 503");
  EXPECT_EQ(a->next_attempt_at, t0 + 5s);
  EXPECT_EQ(a->body, R"({"x":1})");
  EXPECT_EQ(a->event_id, "evt-a");
  EXPECT_EQ(a->url, "https://example.com/s1");
  EXPECT_EQ(s->get("b")->status, message_status::delivered);
  EXPECT_EQ(s->get("c")->status, message_status::dead);
  EXPECT_EQ(s->get("c")->last_error, "HTTP 400");
  EXPECT_FALSE(s->get("zzz"));
  auto c = s->counts(t0);
  EXPECT_EQ(c.pending, 1u);
  EXPECT_EQ(c.delivered, 1u);
  EXPECT_EQ(c.dead, 1u);
  EXPECT_EQ(c.in_flight, 0u);
}

TEST(memory_store, redeliver_and_recover_make_messages_pending_again) {
  auto s = fresh();
  std::vector<message> batch = {msg("a", "s1", t0), msg("b", "s1", t0), msg("c", "s2", t0)};
  batch[1].created_at = t0 + 1h;
  s->enqueue(batch);
  s->claim(claim_at(t0));
  s->complete("a", attempt(batch[0], 1, 200, true));
  s->dead_letter("b", "HTTP 400", nullptr);
  s->dead_letter("c", "HTTP 400", nullptr);
  EXPECT_FALSE(s->redeliver("nope", t0));
  EXPECT_TRUE(s->redeliver("a", t0 + 2h));
  auto a = s->get("a");
  EXPECT_EQ(a->status, message_status::pending);
  EXPECT_EQ(a->attempts, 0);
  EXPECT_EQ(s->recover("s1", t0 + 2h, t0 + 2h), 0u);  // b was created before that
  EXPECT_EQ(s->recover("s1", t0 + 30min, t0 + 2h), 1u);
  EXPECT_EQ(s->get("b")->status, message_status::pending);
  EXPECT_EQ(s->get("c")->status, message_status::dead);
  EXPECT_EQ(ids(s->claim(claim_at(t0 + 2h))), (std::vector<std::string>{"a", "b"}));
}

TEST(memory_store, query_filters_and_limits) {
  auto s = fresh();
  std::vector<message> batch = {msg("a", "s1", t0), msg("b", "s2", t0), msg("c", "s1", t0)};
  s->enqueue(batch);
  s->claim(claim_at(t0));
  s->dead_letter("b", "x", nullptr);
  message_query q;
  q.subscription_id = "s1";
  EXPECT_EQ(ids(s->query(q)), (std::vector<std::string>{"a", "c"}));
  q = {};
  q.status = message_status::dead;
  EXPECT_EQ(ids(s->query(q)), std::vector<std::string>{"b"});
  q = {};
  q.limit = 2;
  EXPECT_EQ(ids(s->query(q)), (std::vector<std::string>{"a", "b"}));
  q = {};
  q.since = t0 + 1s;
  EXPECT_TRUE(s->query(q).empty());
}

TEST(memory_store, stats_and_attempt_log_count_every_attempt) {
  auto s = fresh();
  std::vector<message> batch = {msg("a", "s1", t0), msg("b", "s1", t0)};
  s->enqueue(batch);
  s->claim(claim_at(t0));
  s->reschedule("a", t0, attempt(batch[0], 1, 500, false, "HTTP 500"));
  s->reschedule("b", t0, attempt(batch[1], 1, 0, false, "timeout"));
  s->claim(claim_at(t0));
  s->complete("a", attempt(batch[0], 2, 200, true));
  const auto last = attempt(batch[1], 2, 404, false, "HTTP 404");
  s->dead_letter("b", "HTTP 404", &last);
  auto st = s->stats("s1");
  EXPECT_EQ(st.calls, 4u);
  EXPECT_EQ(st.status_2xx, 1u);
  EXPECT_EQ(st.status_4xx, 1u);
  EXPECT_EQ(st.status_5xx, 1u);
  EXPECT_EQ(st.failures, 3u);
  EXPECT_EQ(st.errors, 1u);
  EXPECT_EQ(st.request_bytes, 400u);
  EXPECT_DOUBLE_EQ(st.success_rate(), 0.25);
  EXPECT_EQ(s->stats("unknown").calls, 0u);
  attempt_query q;
  q.message_id = "a";
  auto log = s->attempts(q);
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log[0].attempt, 1);
  EXPECT_EQ(log[1].attempt, 2);
  EXPECT_TRUE(log[1].success);
  q = {};
  q.limit = 1;
  ASSERT_EQ(s->attempts(q).size(), 1u);
  EXPECT_EQ(s->attempts(q)[0].message_id, "b");  // the most recent
}

TEST(memory_store, prune_removes_old_delivered_messages_and_attempts_only) {
  auto s = fresh();
  std::vector<message> batch = {msg("a", "s1", t0), msg("b", "s1", t0), msg("c", "s1", t0)};
  s->enqueue(batch);
  s->claim(claim_at(t0));
  s->complete("a", attempt(batch[0], 1, 200, true));
  s->dead_letter("b", "HTTP 400", nullptr);
  const auto removed = s->prune(t0 + 1h);
  EXPECT_EQ(removed, 2u);  // message a and its attempt
  EXPECT_FALSE(s->get("a"));
  EXPECT_TRUE(s->get("b"));
  EXPECT_TRUE(s->get("c"));
  EXPECT_TRUE(s->attempts({}).empty());
  EXPECT_EQ(s->counts(t0).delivered, 0u);
  EXPECT_EQ(s->stats("s1").calls, 1u);  // statistics outlive the log
}

TEST(memory_store, subscription_state_round_trips) {
  auto s = fresh();
  s->save_state({"s1", false, "", t0});
  s->save_state({"s2", true, "HTTP 410", std::nullopt});
  s->save_state({"s1", false, "", t0 + 1s});
  auto states = s->load_states();
  ASSERT_EQ(states.size(), 2u);
  EXPECT_EQ(states[0].subscription_id, "s1");
  EXPECT_EQ(states[0].failing_since, t0 + 1s);
  EXPECT_TRUE(states[1].disabled);
  EXPECT_EQ(states[1].reason, "HTTP 410");
}

TEST(make_store, unknown_scheme_names_the_uri_without_its_password) {
  try {
    make_store("mysql://user:hunter2@db/x");
    FAIL() << "expected an error";
  } catch (const error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("mysql://user:***@db/x"), std::string::npos) << what;
    EXPECT_EQ(what.find("hunter2"), std::string::npos) << what;
  }
  try {
    make_store("redis:host=x password=hunter2");
    FAIL() << "expected an error";
  } catch (const error& e) {
    EXPECT_EQ(std::string(e.what()).find("hunter2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_store("memory:extra"), error);
  EXPECT_TRUE(make_store("memory:"));
}

// What the CLI prints when it names a store (`hookline redeliver` of an unknown id).
TEST(make_store, redact_store_uri_masks_every_password_form) {
  EXPECT_EQ(redact_store_uri("postgres:host=/tmp user=u password=hunter2 dbname=d"),
            "postgres:host=/tmp user=u password=*** dbname=d");
  EXPECT_EQ(redact_store_uri("postgres:password = 'hun ter2' host=h"),
            "postgres:password = *** host=h");
  EXPECT_EQ(redact_store_uri("postgres:postgresql://u:hunter2@db:5432/x?sslmode=require"),
            "postgres:postgresql://u:***@db:5432/x?sslmode=require");
  EXPECT_EQ(redact_store_uri("sqlite:/var/lib/x.db"), "sqlite:/var/lib/x.db");
}
