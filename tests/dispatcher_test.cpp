// The delivery loop against a real HTTP server on 127.0.0.1: classification, retries, endpoint
// isolation, ordering, breaker, rate limits, auto-disable and the attempt log.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <mutex>
#include <set>
#include <span>
#include <thread>

#include "dispatcher/circuit_breaker.hpp"
#include "dispatcher/request.hpp"
#include "hookline/hookline.hpp"
#include "support/fixtures.hpp"
#include "support/test_server.hpp"

using namespace std::chrono_literals;
using namespace hookline;
using test::response;
using test::test_server;
using steady = std::chrono::steady_clock;

namespace {

subscription make_sub(std::string id, std::string url) {
  return test::make_subscription(std::move(id), std::move(url), "/Root");
}

event make_event(const std::string& name = "a.txt") {
  return test::make_content_event("Create", "/Root/Content", name, "File", 42);
}

options fast_options() {
  return test::fast_options(3);
}

template <class F>
bool eventually(F f, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = steady::now() + timeout;
  while (!f()) {
    if (steady::now() > deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

/// Collects what the hooks report (they run on the dispatcher thread).
struct recorder {
  std::mutex mutex;
  std::vector<attempt_record> attempts;
  std::vector<std::pair<message, std::string>> dead;
  std::vector<message> delivered;
  std::vector<std::pair<std::string, std::string>> disabled;

  hooks make() {
    hooks h;
    h.on_attempt = [this](const attempt_record& a) {
      std::lock_guard lock(mutex);
      attempts.push_back(a);
    };
    h.on_delivered = [this](const message& m) {
      std::lock_guard lock(mutex);
      delivered.push_back(m);
    };
    h.on_dead = [this](const message& m, const std::string& reason) {
      std::lock_guard lock(mutex);
      dead.emplace_back(m, reason);
    };
    h.on_subscription_disabled = [this](const std::string& id, const std::string& reason) {
      std::lock_guard lock(mutex);
      disabled.emplace_back(id, reason);
    };
    return h;
  }
  std::size_t dead_count() {
    std::lock_guard lock(mutex);
    return dead.size();
  }
  std::string dead_reason(std::size_t i = 0) {
    std::lock_guard lock(mutex);
    return i < dead.size() ? dead[i].second : std::string{};
  }
};

std::string only_id(const publish_result& r) {
  EXPECT_EQ(r.message_ids.size(), 1u);
  return r.message_ids.empty() ? std::string{} : r.message_ids.front();
}

message stored(hub& h, const std::string& id) {
  auto m = h.store().get(id);
  EXPECT_TRUE(m.has_value()) << id;
  return m.value_or(message{});
}

}  // namespace

// ---- units: classification, breaker, token bucket ----

TEST(dispatcher, classifies_outcomes_as_design_md_says) {
  using detail::classify;
  using kind = detail::outcome::kind;
  const auto now = std::chrono::system_clock::now();
  auto status = [&](int s, std::optional<std::string> retry_after = {}) {
    detail::http_response r;
    r.status = s;
    r.retry_after = std::move(retry_after);
    return classify(r, now);
  };
  EXPECT_EQ(status(200).k, kind::success);
  EXPECT_EQ(status(204).k, kind::success);
  EXPECT_EQ(status(302).k, kind::permanent);
  EXPECT_NE(status(302).reason.find("302"), std::string::npos);
  {
    // The redirect's target is named, without what may be a credential.
    detail::http_response r;
    r.status = 301;
    r.location = "https://user:pw@new.example.com/hooks/in?token=s3cret#x";
    const auto o = classify(r, now);
    EXPECT_EQ(o.reason,
              "HTTP 301: redirect to https://new.example.com/hooks/in not followed (redirects are "
              "failures)");
    // What a receiver sends must not forge a log line or drive a terminal.
    r.location = "http://evil.example/\x1b[2J\nfake: all delivered";
    EXPECT_EQ(classify(r, now).reason,
              "HTTP 301: redirect to http://evil.example/\\x1B[2J\\x0Afake: all delivered not "
              "followed (redirects are failures)");
  }
  {
    detail::http_response r;
    r.status = 503;
    r.retry_after = "\x1b[32mOK,  06 Nov 2030 08:49:37 GMT";
    const auto o = classify(r, now);
    EXPECT_EQ(o.reason.find('\x1b'), std::string::npos) << o.reason;
  }
  for (int s : {408, 425, 429, 500, 502, 503, 599}) {
    EXPECT_EQ(status(s).k, kind::retry) << s;
    EXPECT_TRUE(status(s).unhealthy) << s;
  }
  EXPECT_EQ(status(410).k, kind::gone);
  for (int s : {400, 401, 403, 404, 409, 422}) EXPECT_EQ(status(s).k, kind::permanent) << s;
  EXPECT_FALSE(status(404).unhealthy);
  EXPECT_EQ(status(429, "7").retry_after, duration(7000));
  auto err = [&](detail::error_kind k) {
    detail::http_response r;
    r.kind = k;
    r.error = "boom 10.0.0.1";
    return classify(r, now);
  };
  EXPECT_EQ(err(detail::error_kind::timeout).k, kind::retry);
  EXPECT_EQ(err(detail::error_kind::network).k, kind::retry);
  EXPECT_EQ(err(detail::error_kind::refused).k, kind::permanent);
  EXPECT_EQ(err(detail::error_kind::refused).reason, "boom 10.0.0.1");
  EXPECT_EQ(err(detail::error_kind::invalid).k, kind::permanent);
  EXPECT_EQ(err(detail::error_kind::cancelled).k, kind::cancelled);
}

TEST(dispatcher, breaker_opens_on_streak_and_lets_one_probe_through) {
  circuit_breaker_options o;
  o.failure_streak = 3;
  o.min_requests = 100;
  o.cool_down = 30s;
  detail::circuit_breaker b(o);
  const auto t = std::chrono::system_clock::now();
  EXPECT_FALSE(b.on_result(false, false, t));
  EXPECT_FALSE(b.on_result(true, false, t));  // a success resets the streak
  EXPECT_FALSE(b.on_result(false, false, t));
  EXPECT_FALSE(b.on_result(false, false, t));
  EXPECT_TRUE(b.on_result(false, false, t));
  EXPECT_FALSE(b.allows(t + 29s));
  EXPECT_TRUE(b.allows(t + 30s));
  EXPECT_TRUE(b.on_start(t + 30s));  // the probe
  EXPECT_FALSE(b.allows(t + 31s));   // only one
  EXPECT_TRUE(b.on_result(false, true, t + 31s));
  EXPECT_FALSE(b.allows(t + 60s));
  EXPECT_TRUE(b.on_start(t + 61s));
  b.on_result(true, true, t + 62s);
  EXPECT_EQ(b.current(t + 62s), detail::circuit_breaker::state::closed);
  EXPECT_TRUE(b.allows(t + 62s));
}

TEST(dispatcher, breaker_opens_on_failure_rate_over_enough_requests) {
  circuit_breaker_options o;
  o.failure_streak = 1000;
  o.failure_rate = 0.5;
  o.min_requests = 10;
  detail::circuit_breaker b(o);
  const auto t = std::chrono::system_clock::now();
  bool opened = false;
  for (int i = 0; i < 10 && !opened; ++i) opened = b.on_result(i % 2 == 0, false, t);
  EXPECT_TRUE(opened);
  // Old outcomes leave the window.
  detail::circuit_breaker c(o);
  for (int i = 0; i < 9; ++i) c.on_result(false, false, t);
  for (int i = 0; i < 9; ++i) c.on_result(true, false, t);
  EXPECT_FALSE(c.on_result(false, false, t + 10min));
}

TEST(dispatcher, token_bucket_spaces_at_its_rate) {
  detail::token_bucket b;
  const auto t = std::chrono::system_clock::now();
  b.configure(2.0, t);
  EXPECT_TRUE(b.try_take(t));
  EXPECT_FALSE(b.try_take(t));
  EXPECT_EQ(b.next_token(t) - t > 499ms, true);
  EXPECT_FALSE(b.try_take(t + 499ms));
  EXPECT_TRUE(b.try_take(t + 500ms));
}

// ---- against a real server ----

TEST(dispatcher, delivers_a_signed_request_that_verifies_on_the_server) {
  test_server server;
  recorder rec;
  auto o = fast_options();
  o.hooks = rec.make();
  hub h(o);
  auto s = make_sub("docs", server.url("/hook"));
  s.secrets = {generate_secret()};
  h.subscriptions().add(s);
  const auto id = only_id(h.publish(make_event()));
  EXPECT_EQ(id.rfind("msg_", 0), 0u);
  EXPECT_GE(id.size(), 30u);
  ASSERT_TRUE(h.wait_idle(10s));
  auto reqs = server.requests("/hook");
  ASSERT_EQ(reqs.size(), 1u);
  const auto& r = reqs[0];
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.header("webhook-id"), id);
  EXPECT_EQ(r.header("Content-Type"), "application/json");
  EXPECT_EQ(r.header("User-Agent"), "hookline/" + std::string(version()));
  ASSERT_TRUE(r.header("webhook-timestamp") && r.header("webhook-signature"));
  auto v =
      verify(s.secrets, id, *r.header("webhook-timestamp"), r.body, *r.header("webhook-signature"));
  EXPECT_TRUE(v.ok) << v.reason;
  auto body = nlohmann::json::parse(r.body);
  EXPECT_EQ(body["eventName"], "Create");
  EXPECT_EQ(body["subscriptionId"], "docs");
  EXPECT_EQ(stored(h, id).status, message_status::delivered);
  EXPECT_EQ(h.counters().delivered, 1u);
  std::lock_guard lock(rec.mutex);
  ASSERT_EQ(rec.delivered.size(), 1u);
  EXPECT_EQ(rec.delivered[0].id, id);
  ASSERT_EQ(rec.attempts.size(), 1u);
  EXPECT_TRUE(rec.attempts[0].success);
  EXPECT_EQ(rec.attempts[0].status_code, 200);
}

TEST(dispatcher, retries_server_errors_with_the_same_webhook_id) {
  test_server server;
  server.script("/hook", {response::of(500), response::of(503)});
  hub h(fast_options());
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(h.wait_idle(10s));
  auto reqs = server.requests("/hook");
  ASSERT_EQ(reqs.size(), 3u);
  for (const auto& r : reqs) EXPECT_EQ(r.header("webhook-id"), id);
  EXPECT_EQ(reqs[0].body, reqs[2].body);
  auto m = stored(h, id);
  EXPECT_EQ(m.status, message_status::delivered);
  EXPECT_EQ(m.attempts, 3);
  EXPECT_EQ(h.counters().retries, 2u);
  attempt_query q;
  q.message_id = id;
  auto log = h.store().attempts(q);
  ASSERT_EQ(log.size(), 3u);
  EXPECT_EQ(log[0].status_code, 500);
  EXPECT_EQ(log[1].status_code, 503);
  EXPECT_EQ(log[2].attempt, 3);
}

TEST(dispatcher, honours_retry_after_on_429) {
  test_server server;
  server.script("/hook", {response::of(429, "", {{"Retry-After", "30"}})});
  auto clock = std::make_shared<manual_clock>();
  const auto t0 = clock->now();
  auto o = fast_options();
  o.clock = clock;
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(eventually([&] { return stored(h, id).attempts == 1; }));
  auto m = stored(h, id);
  EXPECT_EQ(m.status, message_status::pending);
  EXPECT_EQ(m.last_status, 429);
  EXPECT_GE(m.next_attempt_at, t0 + 30s);  // not the 50 ms of the schedule
  clock->advance(29s);
  clock->advance(0s);
  EXPECT_EQ(server.request_count("/hook"), 1u);
  clock->advance(1s);
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(server.request_count("/hook"), 2u);
  EXPECT_EQ(stored(h, id).status, message_status::delivered);
}

TEST(dispatcher, retry_after_as_http_date_is_capped) {
  test_server server;
  server.script("/hook",
                {response::of(503, "", {{"Retry-After", "Fri, 31 Dec 2100 23:59:59 GMT"}})});
  auto clock = std::make_shared<manual_clock>();
  const auto t0 = clock->now();
  auto o = fast_options();
  o.clock = clock;
  o.delivery.retry.retry_after_max = 2min;
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(eventually([&] { return stored(h, id).attempts == 1; }));
  auto m = stored(h, id);
  EXPECT_GE(m.next_attempt_at, t0 + 2min);
  EXPECT_LT(m.next_attempt_at, t0 + 3min);
}

TEST(dispatcher, times_out_a_slow_endpoint_and_retries) {
  test_server server;
  server.script("/hook", {response::slow(2s)});
  recorder rec;
  auto o = fast_options();
  o.delivery.request_timeout = 300ms;
  o.hooks = rec.make();
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(stored(h, id).status, message_status::delivered);
  std::lock_guard lock(rec.mutex);
  ASSERT_EQ(rec.attempts.size(), 2u);
  EXPECT_EQ(rec.attempts[0].status_code, 0);
  EXPECT_NE(rec.attempts[0].error.find("timeout"), std::string::npos) << rec.attempts[0].error;
  EXPECT_LT(rec.attempts[0].duration, 1500ms);
}

TEST(dispatcher, retries_a_dropped_connection) {
  test_server server;
  server.script("/hook", {response::dropped()});
  recorder rec;
  auto o = fast_options();
  o.hooks = rec.make();
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(stored(h, id).status, message_status::delivered);
  std::lock_guard lock(rec.mutex);
  ASSERT_GE(rec.attempts.size(), 2u);
  EXPECT_FALSE(rec.attempts[0].success);
  EXPECT_EQ(rec.attempts[0].status_code, 0);
  EXPECT_NE(rec.attempts[0].error.find("network"), std::string::npos) << rec.attempts[0].error;
}

TEST(dispatcher, gone_410_disables_the_subscription_and_tells_the_host) {
  test_server server;
  server.respond_always("/hook", response::of(410));
  recorder rec;
  auto o = fast_options();
  o.hooks = rec.make();
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(stored(h, id).status, message_status::dead);
  EXPECT_EQ(server.request_count("/hook"), 1u);
  EXPECT_FALSE(h.subscriptions().get("s")->enabled);
  {
    std::lock_guard lock(rec.mutex);
    ASSERT_EQ(rec.disabled.size(), 1u);
    EXPECT_EQ(rec.disabled[0].first, "s");
    EXPECT_NE(rec.disabled[0].second.find("410"), std::string::npos);
  }
  auto states = h.store().load_states();
  ASSERT_EQ(states.size(), 1u);
  EXPECT_TRUE(states[0].disabled);
  EXPECT_TRUE(h.publish(make_event()).message_ids.empty());
}

// Messages waiting for the endpoint when its 410 arrives do not go: only requests already handed
// to the transport can (at most twice endpoint_concurrency), and the host hears of it once.
TEST(dispatcher, gone_410_stops_the_messages_waiting_for_the_endpoint) {
  for (const std::size_t concurrency : {std::size_t{1}, std::size_t{16}}) {
    SCOPED_TRACE(concurrency);
    test_server server;
    server.respond_always("/hook", response::slow(30ms, 410));
    recorder rec;
    auto o = fast_options();
    o.hooks = rec.make();
    o.delivery.endpoint_concurrency = concurrency;
    hub h(o);
    h.subscriptions().add(make_sub("s", server.url("/hook")));
    std::vector<event> events;
    for (int i = 0; i < 100; ++i) events.push_back(make_event("f" + std::to_string(i) + ".txt"));
    const auto ids = h.publish(events).message_ids;
    ASSERT_EQ(ids.size(), 100u);
    ASSERT_TRUE(h.wait_idle(10s));
    for (const auto& id : ids) EXPECT_EQ(stored(h, id).status, message_status::dead) << id;
    EXPECT_GE(server.request_count("/hook"), 1u);
    EXPECT_LE(server.request_count("/hook"), 2 * concurrency);
    std::lock_guard lock(rec.mutex);
    ASSERT_EQ(rec.disabled.size(), 1u);
    ASSERT_EQ(rec.dead.size(), 100u);
    const auto withdrawn = std::count_if(rec.dead.begin(), rec.dead.end(), [](const auto& d) {
      return d.second == "subscription disabled";
    });
    EXPECT_GE(withdrawn, static_cast<long>(100 - 2 * concurrency));
  }
}

// A failure answered by a request that was under way when a 410 disabled the subscription does
// not overwrite the saved disabled state (a restart would have sent to it again).
TEST(dispatcher, a_failure_after_the_410_keeps_the_subscription_disabled_in_the_store) {
  test_server server;
  server.script("/hook", {response::of(410), response::slow(150ms, 500)});
  auto o = fast_options();
  o.delivery.endpoint_concurrency = 2;
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  h.publish(std::vector<event>{make_event("a.txt"), make_event("b.txt")});
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(server.request_count("/hook"), 2u);
  const auto states = h.store().load_states();
  ASSERT_EQ(states.size(), 1u);
  EXPECT_TRUE(states[0].disabled);
  EXPECT_NE(states[0].reason.find("410"), std::string::npos) << states[0].reason;
}

TEST(dispatcher, redirect_is_not_followed) {
  test_server server;
  server.respond_always("/hook", response::of(302, "", {{"Location", server.url("/elsewhere")}}));
  recorder rec;
  auto o = fast_options();
  o.hooks = rec.make();
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(stored(h, id).status, message_status::dead);
  EXPECT_EQ(server.request_count("/hook"), 1u);
  EXPECT_EQ(server.request_count("/elsewhere"), 0u);
  EXPECT_NE(rec.dead_reason().find("302"), std::string::npos) << rec.dead_reason();
  EXPECT_NE(rec.dead_reason().find("not followed"), std::string::npos) << rec.dead_reason();
  EXPECT_NE(rec.dead_reason().find("to " + server.url("/elsewhere")), std::string::npos)
      << rec.dead_reason();
}

TEST(dispatcher, client_error_is_not_retried) {
  test_server server;
  server.respond_always("/hook", response::of(400, "bad field"));
  recorder rec;
  auto o = fast_options();
  o.hooks = rec.make();
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(h.wait_idle(10s));
  auto m = stored(h, id);
  EXPECT_EQ(m.status, message_status::dead);
  EXPECT_EQ(m.attempts, 1);
  EXPECT_EQ(m.last_status, 400);
  EXPECT_EQ(server.request_count("/hook"), 1u);
  EXPECT_EQ(h.counters().dead, 1u);
  std::lock_guard lock(rec.mutex);
  ASSERT_EQ(rec.attempts.size(), 1u);
  EXPECT_EQ(rec.attempts[0].response_head, "bad field");
}

TEST(dispatcher, ssrf_guard_refuses_loopback_unless_allowed) {
  test_server server;
  {
    recorder rec;
    auto o = fast_options();
    o.delivery.allow_private_networks = false;
    o.hooks = rec.make();
    hub h(o);
    h.subscriptions().add(make_sub("s", server.url("/hook")));
    const auto id = only_id(h.publish(make_event()));
    ASSERT_TRUE(h.wait_idle(10s));
    EXPECT_EQ(stored(h, id).status, message_status::dead);
    EXPECT_NE(rec.dead_reason().find("127.0.0.1"), std::string::npos) << rec.dead_reason();
    EXPECT_EQ(server.request_count(), 0u);
  }
  {
    auto o = fast_options();
    o.delivery.allow_private_networks = false;
    o.delivery.allowed_cidrs = {"127.0.0.0/8"};
    hub h(o);
    h.subscriptions().add(make_sub("s", server.url("/hook")));
    const auto id = only_id(h.publish(make_event()));
    ASSERT_TRUE(h.wait_idle(10s));
    EXPECT_EQ(stored(h, id).status, message_status::delivered);
    EXPECT_EQ(server.request_count(), 1u);
  }
}

TEST(dispatcher, keeps_one_connection_alive_for_sequential_messages) {
  test_server server;
  hub h(fast_options());
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  for (int i = 0; i < 20; ++i) {
    h.publish(make_event());
    ASSERT_TRUE(h.wait_idle(10s));
  }
  EXPECT_EQ(server.request_count("/hook"), 20u);
  EXPECT_EQ(server.connections_accepted(), 1u);
}

TEST(dispatcher, a_dead_endpoint_does_not_slow_a_healthy_one) {
  test_server server;
  server.respond_always("/dead", response::slow(10s));
  recorder rec;
  auto o = fast_options();
  o.delivery.request_timeout = 5s;
  o.delivery.endpoint_concurrency = 2;
  o.delivery.max_in_flight = 64;
  o.hooks = rec.make();
  hub h(o);
  auto dead = make_sub("dead", server.url("/dead"));
  dead.filter.content_types = {{"Folder", {"All"}}};
  h.subscriptions().add(dead);
  h.subscriptions().add(make_sub("healthy", server.url("/ok")));
  const auto t0 = steady::now();
  // Dead endpoint's messages first, so they are older and claimed first.
  std::vector<event> dead_events(40, make_event());
  for (auto& e : dead_events) e.content_type = "Folder";
  h.publish(dead_events);
  std::vector<event> healthy(40, make_event());
  h.publish(healthy);
  ASSERT_TRUE(server.wait_for_requests("/ok", 40, 10s));
  const auto took = steady::now() - t0;
  EXPECT_LT(took, 2s);                           // well before the dead endpoint's 5 s timeout
  EXPECT_LE(server.request_count("/dead"), 2u);  // its concurrency, no more
  ASSERT_TRUE(eventually([&] { return h.counters().delivered == 40; }));
  h.stop(0ms);
  EXPECT_EQ(h.store().counts(std::chrono::system_clock::now()).pending, 40u);
}

TEST(dispatcher, ordered_delivery_keeps_order_across_retries) {
  test_server server;
  server.script("/hook", {response::of(500), response::of(200), response::of(503)});
  auto o = fast_options();
  o.delivery.endpoint_concurrency = 8;
  hub h(o);
  auto s = make_sub("s", server.url("/hook"));
  s.ordered = true;
  h.subscriptions().add(s);
  std::vector<event> events;
  for (int i = 0; i < 6; ++i) events.push_back(make_event("doc" + std::to_string(i) + ".txt"));
  const auto ids = h.publish(events).message_ids;
  ASSERT_EQ(ids.size(), 6u);
  ASSERT_TRUE(h.wait_idle(10s));
  std::vector<std::string> seen;
  for (const auto& r : server.requests("/hook")) seen.push_back(*r.header("webhook-id"));
  const std::vector<std::string> expected = {ids[0], ids[0], ids[1], ids[1],
                                             ids[2], ids[3], ids[4], ids[5]};
  EXPECT_EQ(seen, expected);
}

TEST(dispatcher, stop_leaves_unfinished_messages_pending_in_the_store) {
  test_server server;
  server.respond_always("/slow", response::slow(5s));
  server.respond_always("/fail", response::of(500));
  auto o = fast_options();
  o.delivery.retry.schedule = {1h};
  hub h(o);
  h.subscriptions().add(make_sub("slow", server.url("/slow")));
  h.subscriptions().add(make_sub("fail", server.url("/fail")));
  const auto ids = h.publish(std::vector<event>(3, make_event())).message_ids;
  ASSERT_EQ(ids.size(), 6u);
  ASSERT_TRUE(server.wait_for_requests("/slow", 3, 10s));
  ASSERT_TRUE(server.wait_for_requests("/fail", 3, 10s));
  const auto t0 = steady::now();
  h.stop(100ms);
  EXPECT_LT(steady::now() - t0, 2s);
  const auto c = h.store().counts(std::chrono::system_clock::now());
  EXPECT_EQ(c.pending, 6u);
  EXPECT_EQ(c.in_flight, 0u);  // leases released
  for (const auto& id : ids) {
    auto m = stored(h, id);
    EXPECT_EQ(m.status, message_status::pending);
    EXPECT_EQ(m.attempts, m.subscription_id == "slow" ? 0 : 1) << m.subscription_id;
  }
  EXPECT_THROW(h.publish(make_event()), error);
  h.stop(1s);  // idempotent
}

namespace {

// Options for the breaker tests: a manual clock, a breaker that opens after `streak` failures
// and cools down for 30 s (while the clock stands still).
options breaker_options(const std::shared_ptr<manual_clock>& clock, std::size_t concurrency,
                        std::size_t streak, std::vector<duration> schedule) {
  auto o = fast_options();
  o.clock = clock;
  o.delivery.retry.schedule = std::move(schedule);
  o.delivery.endpoint_concurrency = concurrency;
  o.delivery.breaker.failure_streak = streak;
  o.delivery.breaker.cool_down = 30s;
  return o;
}

}  // namespace

TEST(dispatcher, breaker_opens_after_a_failure_streak_and_probes_after_cool_down) {
  test_server server;
  server.respond_always("/hook", response::of(503));
  auto clock = std::make_shared<manual_clock>();
  hub h(breaker_options(clock, 1, 3, std::vector<duration>(20, 0ms)));
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  h.publish(std::vector<event>(4, make_event()));
  ASSERT_TRUE(server.wait_for_requests("/hook", 3, 10s));
  // Open: nothing more reaches the endpoint while the clock stands still, and nothing burns an
  // attempt.
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(server.request_count("/hook"), 3u);
  EXPECT_EQ(h.counters().attempts, 3u);
  server.respond_always("/hook", response::of(200));
  server.respond("/hook", response::slow(300ms, 200));  // the probe answers slowly
  clock->advance(30s);
  // Half-open: exactly one probe; its success closes the breaker and the rest flow.
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(h.counters().delivered, 4u);
  auto reqs = server.requests("/hook");
  ASSERT_EQ(reqs.size(), 7u);
  // Nothing else went while the probe (the 4th request) was out.
  EXPECT_GE(reqs[4].arrived - reqs[3].arrived, 250ms);
}

// A healthy endpoint gets requests queued in the transport beyond its concurrency; when its
// breaker opens, those that have not started are cancelled: they use no attempt and stay
// pending until the probe.
TEST(dispatcher, an_opening_breaker_cancels_requests_waiting_in_the_transport) {
  test_server server;
  server.script("/hook", {response::slow(200ms, 503), response::slow(700ms, 503)});
  server.respond_always("/hook", response::slow(100ms, 503));
  auto clock = std::make_shared<manual_clock>();
  hub h(breaker_options(clock, 2, 1, {1h}));
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  h.publish(std::vector<event>(4, make_event()));
  // 1 and 2 run; 3 and 4 wait in the transport. 1 fails at 200 ms: its slot goes to 3 at once,
  // and the breaker that opens cancels 4 (2 still holds the other slot).
  ASSERT_TRUE(server.wait_for_requests("/hook", 3, 5s));
  std::this_thread::sleep_for(900ms);
  EXPECT_EQ(server.request_count("/hook"), 3u);
  EXPECT_EQ(h.counters().attempts, 3u);
  const auto pending = h.store().query({message_status::pending, std::nullopt, std::nullopt, 10});
  ASSERT_EQ(pending.size(), 4u);
  std::size_t untried = 0;
  for (const auto& m : pending) untried += m.attempts == 0 ? 1 : 0;
  EXPECT_EQ(untried, 1u);
}

TEST(dispatcher, rate_limit_spaces_messages) {
  test_server server;
  hub h(fast_options());
  auto s = make_sub("s", server.url("/hook"));
  s.rate_limit = 10;  // one every 100 ms
  h.subscriptions().add(s);
  h.publish(std::vector<event>(5, make_event()));
  ASSERT_TRUE(h.wait_idle(10s));
  auto reqs = server.requests("/hook");
  ASSERT_EQ(reqs.size(), 5u);
  // Sent 100 ms apart; arrival times may wobble a little under load.
  for (std::size_t i = 1; i < reqs.size(); ++i)
    EXPECT_GE(reqs[i].arrived - reqs[i - 1].arrived, 40ms) << i;
  EXPECT_GE(reqs.back().arrived - reqs.front().arrived, 350ms);
}

TEST(dispatcher, respects_endpoint_concurrency) {
  test_server server;
  server.respond_always("/hook", response::slow(100ms));
  auto o = fast_options();
  o.delivery.endpoint_concurrency = 3;
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto t0 = steady::now();
  h.publish(std::vector<event>(12, make_event()));
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(server.request_count("/hook"), 12u);
  EXPECT_LE(server.connections_accepted(), 3u);  // never more than 3 at once
  EXPECT_GE(steady::now() - t0, 390ms);          // 4 waves of 100 ms
}

TEST(dispatcher, gives_up_after_max_attempts_and_calls_on_dead) {
  test_server server;
  server.respond_always("/hook", response::of(500));
  recorder rec;
  auto o = fast_options();
  o.delivery.retry.schedule = {10ms, 10ms, 10ms, 10ms};
  o.delivery.retry.max_attempts = 3;
  o.hooks = rec.make();
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(server.request_count("/hook"), 3u);
  auto m = stored(h, id);
  EXPECT_EQ(m.status, message_status::dead);
  EXPECT_EQ(m.attempts, 3);
  ASSERT_EQ(rec.dead_count(), 1u);
  EXPECT_NE(rec.dead_reason().find("gave up after 3 attempts"), std::string::npos);
  EXPECT_NE(rec.dead_reason().find("HTTP 500"), std::string::npos);
  EXPECT_EQ(m.last_error, rec.dead_reason());
}

TEST(dispatcher, max_age_gives_up_before_the_next_attempt) {
  test_server server;
  server.respond_always("/hook", response::of(503));
  auto clock = std::make_shared<manual_clock>();
  auto o = fast_options();
  o.clock = clock;
  o.delivery.retry.schedule = {10min, 10min, 10min};
  o.delivery.retry.max_age = 15min;
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(eventually([&] { return stored(h, id).attempts == 1; }));
  clock->advance(10min);
  ASSERT_TRUE(h.wait_idle(10s));
  auto m = stored(h, id);
  EXPECT_EQ(m.status, message_status::dead);
  EXPECT_EQ(m.attempts, 2);
  EXPECT_NE(m.last_error.find("maximum age"), std::string::npos) << m.last_error;
}

TEST(dispatcher, auto_disables_a_subscription_failing_for_the_configured_time) {
  test_server server;
  server.respond_always("/hook", response::of(500));
  auto clock = std::make_shared<manual_clock>();
  recorder rec;
  auto o = fast_options();
  o.clock = clock;
  o.hooks = rec.make();
  o.delivery.retry.schedule = {30min, 30min, 30min, 30min};
  o.delivery.auto_disable_after = 1h;
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(eventually([&] { return stored(h, id).attempts == 1; }));
  auto states = h.store().load_states();
  ASSERT_EQ(states.size(), 1u);
  EXPECT_EQ(states[0].failing_since, stored(h, id).created_at);
  clock->advance(30min);
  ASSERT_TRUE(eventually([&] { return stored(h, id).attempts == 2; }));
  EXPECT_TRUE(h.subscriptions().get("s")->enabled);
  clock->advance(30min);
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_FALSE(h.subscriptions().get("s")->enabled);
  EXPECT_EQ(stored(h, id).status, message_status::dead);
  std::lock_guard lock(rec.mutex);
  ASSERT_EQ(rec.disabled.size(), 1u);
  EXPECT_EQ(rec.disabled[0].first, "s");
  EXPECT_NE(rec.disabled[0].second.find("failing continuously"), std::string::npos);
}

TEST(dispatcher, a_success_resets_the_failure_timer) {
  test_server server;
  server.script("/hook", {response::of(500)});
  auto clock = std::make_shared<manual_clock>();
  auto o = fast_options();
  o.clock = clock;
  o.delivery.retry.schedule = {30min};
  o.delivery.auto_disable_after = 1h;
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(eventually([&] { return stored(h, id).attempts == 1; }));
  clock->advance(30min);
  ASSERT_TRUE(h.wait_idle(10s));
  auto states = h.store().load_states();
  ASSERT_EQ(states.size(), 1u);
  EXPECT_FALSE(states[0].failing_since.has_value());
  EXPECT_FALSE(states[0].disabled);
}

TEST(dispatcher, get_carries_the_headers_and_no_body) {
  test_server server;
  hub h(fast_options());
  auto s = make_sub("s", server.url("/hook"));
  s.http_method = "get";  // goes out upper-cased, as sensenet sends it
  s.secrets = {generate_secret()};
  h.subscriptions().add(s);
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(h.wait_idle(10s));
  auto reqs = server.requests("/hook");
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "GET");
  EXPECT_TRUE(reqs[0].body.empty());
  EXPECT_EQ(reqs[0].header("webhook-id"), id);
  ASSERT_TRUE(reqs[0].header("webhook-signature"));
  EXPECT_TRUE(verify(s.secrets, id, *reqs[0].header("webhook-timestamp"), "",
                     *reqs[0].header("webhook-signature")));
}

TEST(dispatcher, subscription_headers_arrive_after_the_standard_ones) {
  test_server server;
  hub h(fast_options());
  auto s = make_sub("s", server.url("/hook"));
  s.headers = {{"X-Api-Key", "k-123"}, {"Authorization", "Bearer t"}, {"X-Empty", ""}};
  h.subscriptions().add(s);
  h.publish(make_event());
  ASSERT_TRUE(h.wait_idle(10s));
  auto reqs = server.requests("/hook");
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].header("X-Api-Key"), "k-123");
  EXPECT_EQ(reqs[0].header("Authorization"), "Bearer t");
  EXPECT_EQ(reqs[0].header("X-Empty"), "");  // sent empty (libcurl drops "X-Empty:")
  EXPECT_FALSE(reqs[0].header("webhook-signature"));  // no secret, no signature
}

// Requests are built in buffers the transport handed back: alternating subscriptions with
// different methods, secrets, headers and bodies must each get exactly their own request.
TEST(dispatcher, reused_requests_carry_nothing_from_the_last_one) {
  test_server server;
  auto o = fast_options();
  o.delivery.max_in_flight = 1;  // one request at a time: every request reuses the last one
  hub h(o);
  auto rich = make_sub("rich", server.url("/rich?k=v"));
  rich.secrets = {generate_secret(), generate_secret()};
  rich.headers = {{"X-One", "1"}, {"X-Two", std::string(200, 't')}, {"Content-Type", "text/x"}};
  auto plain = make_sub("plain", server.url("/plain"));
  auto get = make_sub("get", server.url("/get"));
  get.http_method = "GET";
  get.secrets = {generate_secret()};
  for (const auto& s : {rich, plain, get}) h.subscriptions().add(s);
  constexpr int rounds = 5;
  for (int i = 0; i < rounds; ++i) {
    h.publish(make_event("file-" + std::to_string(i) + std::string(i * 50, 'x') + ".txt"));
  }
  ASSERT_TRUE(h.wait_idle(10s));
  const auto check_signature = [](const subscription& s, const auto& r, const std::string& body) {
    ASSERT_TRUE(r.header("webhook-id") && r.header("webhook-timestamp") &&
                r.header("webhook-signature"));
    EXPECT_TRUE(verify(s.secrets, *r.header("webhook-id"), *r.header("webhook-timestamp"), body,
                       *r.header("webhook-signature")));
  };
  const auto rich_reqs = server.requests("/rich");
  ASSERT_EQ(rich_reqs.size(), std::size_t{rounds});
  for (const auto& r : rich_reqs) {
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.query, "k=v");
    EXPECT_EQ(r.header("X-One"), "1");
    EXPECT_EQ(r.header("X-Two"), std::string(200, 't'));
    EXPECT_EQ(r.header("Content-Type"), "text/x");
    EXPECT_EQ(nlohmann::json::parse(r.body)["subscriptionId"], "rich");
    check_signature(rich, r, r.body);
    const auto signatures = r.header("webhook-signature").value_or("");
    EXPECT_EQ(std::count(signatures.begin(), signatures.end(), ','), 2);
  }
  const auto plain_reqs = server.requests("/plain");
  ASSERT_EQ(plain_reqs.size(), std::size_t{rounds});
  std::set<std::string> names;
  for (const auto& r : plain_reqs) {
    EXPECT_EQ(r.method, "POST");
    EXPECT_TRUE(r.query.empty());
    EXPECT_FALSE(r.has_header("X-One") || r.has_header("X-Two"));
    EXPECT_FALSE(r.has_header("webhook-signature"));
    EXPECT_EQ(r.header("Content-Type"), "application/json");
    const auto body = nlohmann::json::parse(r.body);
    EXPECT_EQ(body["subscriptionId"], "plain");
    names.insert(body.dump());
  }
  EXPECT_EQ(names.size(), std::size_t{rounds});  // each message its own body
  const auto get_reqs = server.requests("/get");
  ASSERT_EQ(get_reqs.size(), std::size_t{rounds});
  for (const auto& r : get_reqs) {
    EXPECT_EQ(r.method, "GET");
    EXPECT_TRUE(r.body.empty());
    EXPECT_FALSE(r.has_header("X-One") || r.has_header("X-Two"));
    check_signature(get, r, "");
    const auto signatures = r.header("webhook-signature").value_or("");
    EXPECT_EQ(std::count(signatures.begin(), signatures.end(), ','), 1);
  }
}

// Counts the dispatcher's give-backs (release_if_held): a message that bounces back to the
// store instead of waiting for its endpoint. Keeps when each is due again.
class release_counter final : public forwarding_store {
 public:
  using forwarding_store::forwarding_store;
  void release_if_held(const std::string& id, const std::string& worker_id,
                       time_point next) override {
    {
      std::lock_guard lock(mutex_);
      due_.push_back(next);
    }
    ++releases;
    forwarding_store::release_if_held(id, worker_id, next);
  }
  std::vector<time_point> due() {
    std::lock_guard lock(mutex_);
    return due_;
  }
  std::atomic<std::size_t> releases{0};

 private:
  std::mutex mutex_;
  std::vector<time_point> due_;
};

// Publishes one event (so the endpoint's answer time is measured), then `burst` at once; waits
// until every message is done and returns how many the dispatcher gave back meanwhile.
std::size_t releases_during_burst(hub& h, const release_counter& store, std::size_t burst) {
  h.publish(make_event("warm-up.txt"));
  if (!h.wait_idle(30s)) return std::numeric_limits<std::size_t>::max();
  const std::size_t before = store.releases;
  std::vector<event> events;
  for (std::size_t i = 0; i < burst; ++i) events.push_back(make_event(std::to_string(i) + ".txt"));
  h.publish(std::span<const event>(events));
  if (!h.wait_idle(60s)) return std::numeric_limits<std::size_t>::max();
  return store.releases - before;
}

// Far more room in total than one endpoint's slots: a burst for one fast endpoint waits for it
// here. It used to go back to the store and be claimed again (and each claim that found only
// that endpoint's messages paused claiming), which left the endpoint idle most of the time.
TEST(dispatcher, a_burst_for_one_fast_endpoint_waits_here_instead_of_bouncing_to_the_store) {
  test_server server;
  server.set_default(response::of(204));
  auto store = std::make_shared<release_counter>(make_store("memory:"));
  auto o = fast_options();
  o.store_instance = store;
  // Room for 192 claimed messages against 64 in the endpoint's fixed queue and slots; the
  // endpoint's queue may grow to that room while it answers within 20 ms (slow ASan runs too).
  o.delivery.max_in_flight = 64;
  o.delivery.endpoint_concurrency = 16;
  hub h(o);
  h.subscriptions().add(make_sub("fast", server.url("/fast")));
  constexpr std::size_t burst = 3000;
  const auto releases = releases_during_burst(h, *store, burst);
  EXPECT_EQ(h.counters().delivered, burst + 1);
  EXPECT_EQ(server.requests("/fast").size(), burst + 1);
  EXPECT_LT(releases, burst / 2)
      << "messages went back to the store instead of waiting for their endpoint";
}

// An occasional unhealthy answer does not send a fast endpoint's queue back to the store: that
// would churn it through the store at every error.
TEST(dispatcher, an_occasional_error_does_not_send_a_fast_endpoints_queue_back) {
  test_server server;
  std::atomic<int> seen{0};
  server.on("/mostly", [&](const test::recorded_request&) {
    return ++seen % 100 == 0 ? response::of(503) : response::of(204);
  });
  auto store = std::make_shared<release_counter>(make_store("memory:"));
  auto o = fast_options();
  o.store_instance = store;
  o.delivery.max_in_flight = 64;
  o.delivery.endpoint_concurrency = 16;
  o.delivery.breaker.enabled = false;
  hub h(o);
  h.subscriptions().add(make_sub("mostly", server.url("/mostly")));
  constexpr std::size_t burst = 3000;
  const auto releases = releases_during_burst(h, *store, burst);
  EXPECT_EQ(h.counters().delivered, burst + 1);
  EXPECT_LT(releases, burst / 2) << "an occasional 503 sent the endpoint's queue back to the store";
}

// Messages handed over by a publisher are already here: while their endpoint answers, those
// that do not fit its queue wait for room instead of going to the store and back. They used to
// bounce (600 give-backs for these 400), and on a loaded machine, where a fast endpoint's queue
// limit swings with the time the process gets a core, a burst took seconds instead of one.
TEST(dispatcher, handed_over_messages_wait_for_room_with_an_endpoint_that_answers) {
  test_server server;
  server.set_default(response::slow(10ms, 204));
  auto store = std::make_shared<release_counter>(make_store("memory:"));
  auto o = fast_options();
  o.store_instance = store;
  o.delivery.max_in_flight = 64;
  o.delivery.endpoint_concurrency = 4;  // ~400/s: its queue may hold ~100 (250 ms)
  // What an endpoint may hold beside its queue is what it sends in half of request_timeout +
  // 5 s: with 20 s, room for the burst even if the warm-up's answer took 100 ms.
  o.delivery.request_timeout = 20s;
  hub h(o);
  h.subscriptions().add(make_sub("steady", server.url("/steady")));
  constexpr std::size_t burst = 400;
  // After a warm-up, so that the endpoint's answer time is known and its connection is open.
  ASSERT_NE(releases_during_burst(h, *store, burst), std::numeric_limits<std::size_t>::max())
      << "not delivered in time";
  EXPECT_EQ(h.counters().delivered, burst + 1);
  EXPECT_EQ(server.requests("/steady").size(), burst + 1);
  EXPECT_LT(store->releases, burst / 4) << "handed-over messages went back to the store";
}

// An endpoint whose first answer shows it cannot send what waits for it well within the time a
// message may be held here gives its overflow back at once, rather than keeping it (and the
// hand-over room) until each message's hold runs out.
TEST(dispatcher, a_slow_endpoint_gives_back_the_overflow_it_cannot_send_in_time) {
  test_server server;
  server.set_default(response::slow(400ms, 204));
  auto store = std::make_shared<release_counter>(make_store("memory:"));
  auto o = fast_options();
  o.store_instance = store;
  o.delivery.endpoint_concurrency = 1;
  o.delivery.request_timeout = 3s;  // a message may be held here for 8 s
  hub h(o);
  h.subscriptions().add(make_sub("slow", server.url("/slow")));
  std::vector<event> events;
  for (int i = 0; i < 100; ++i) events.push_back(make_event(std::to_string(i) + ".txt"));
  h.publish(std::span<const event>(events));
  // Unmeasured, the endpoint takes one in flight, 32 queued and the rest in its overflow; its
  // first answer (400 ms for one slot) shows that even the queue needs 13 s.
  EXPECT_TRUE(eventually([&] { return store->releases >= 60; }, 5s))
      << "only " << store->releases << " given back";
  h.stop(0ms);
}

// What does not fit a rate-limited endpoint's queue goes back to the store due when the
// endpoint will have a token for it: after its queue, then one token apart, each after the one
// sent back before it. Not all at once (they would only bounce again), and not ever further out
// (the spacing of a burst once grew with every message sent back while the queue was full).
TEST(dispatcher, messages_that_do_not_fit_a_rate_limited_queue_come_back_one_token_apart) {
  test_server server;
  server.set_default(response::of(204));
  auto store = std::make_shared<release_counter>(make_store("memory:"));
  auto o = fast_options();
  o.store_instance = store;
  o.delivery.endpoint_concurrency = 4;  // a queue of 32
  hub h(o);
  auto s = make_sub("limited", server.url("/limited"));
  s.rate_limit = 20;  // a token every 50 ms
  h.subscriptions().add(s);
  constexpr std::size_t burst = 150;
  std::vector<event> events;
  for (std::size_t i = 0; i < burst; ++i) events.push_back(make_event(std::to_string(i) + ".txt"));
  const auto published = std::chrono::system_clock::now();
  h.publish(std::span<const event>(events));
  // One is sent, 32 wait in the queue, the rest go back in the same turn.
  ASSERT_TRUE(eventually([&] { return store->releases >= 100; }, 5s))
      << store->releases << " given back";
  auto due = store->due();
  h.stop(0ms);
  due.resize(100);  // the burst's, not what stop() gave back
  const auto step = 50ms;
  EXPECT_GE(due.front() - published, 32 * step * 8 / 10) << "due before its queue is sent";
  EXPECT_LE(due.front() - published, 34 * step + 1s);
  for (std::size_t i = 1; i < due.size(); ++i) {
    EXPECT_GE(due[i] - due[i - 1], step * 9 / 10) << i;
    EXPECT_LE(due[i] - due[i - 1], step * 11 / 10) << i;
  }
}

// The long queue a fast endpoint may keep must not trap the room when that endpoint stops
// answering: its queued messages go back to the store, and another endpoint's messages, handed
// over behind them, still go out at once.
TEST(dispatcher, an_endpoint_that_stops_answering_gives_back_its_long_queue) {
  test_server server;
  server.set_default(response::of(204));
  auto o = fast_options();
  o.delivery.request_timeout = 5s;
  o.delivery.endpoint_concurrency = 2;
  o.delivery.max_in_flight = 64;
  hub h(o);
  auto stalls = make_sub("stalls", server.url("/stalls"));
  stalls.filter.content_types = {{"Folder", {"All"}}};
  h.subscriptions().add(stalls);
  h.subscriptions().add(make_sub("healthy", server.url("/ok")));
  std::vector<event> warm(20, make_event());
  for (auto& e : warm) e.content_type = "Folder";
  h.publish(warm);  // fast at first: its queue may grow long
  ASSERT_TRUE(h.wait_idle(10s));
  server.respond_always("/stalls", response::slow(10s));
  std::vector<event> stalled(300, make_event());
  for (auto& e : stalled) e.content_type = "Folder";
  const auto t0 = steady::now();
  h.publish(stalled);
  std::vector<event> healthy(40, make_event());
  h.publish(healthy);
  ASSERT_TRUE(server.wait_for_requests("/ok", 40, 10s));
  EXPECT_LT(steady::now() - t0, 2s);  // well before the stalled endpoint's 5 s timeout
  EXPECT_LE(server.request_count("/stalls"), 20u + 2u);  // its concurrency, no more
  ASSERT_TRUE(eventually([&] { return h.counters().delivered == 20 + 40; }));
  h.stop(0ms);
  EXPECT_EQ(h.store().counts(std::chrono::system_clock::now()).pending, 300u);
}

// A worker whose lease ran out while its request was under way (a stalled process, a slow
// store) and whose message another worker took over: its late failure must not move the message.
// A retry time would free the other's lease (a third send while the second is under way); a
// give-up would end it dead while the other may still deliver it. Runs the first worker's request
// to `first_answer`, the second's to a 204, and checks the message between the two answers.
void check_a_late_result_leaves_the_other_workers_lease(int first_answer) {
  test_server server;
  std::atomic<int> requests{0};
  server.on("/ep", [&](const test::recorded_request&) {
    // The first worker's request fails late; the second's succeeds later still.
    return ++requests == 1 ? response::slow(1s, first_answer) : response::slow(3s, 204);
  });
  auto store = make_store("memory:");
  const auto start = std::chrono::system_clock::now();
  auto first_clock = std::make_shared<manual_clock>(start);
  // The second worker lives an hour later: the first one's lease has run out for it.
  auto second_clock = std::make_shared<manual_clock>(start + 1h);
  auto o = fast_options();
  o.delivery.request_timeout = 10s;  // longer than the second answer takes
  o.store_instance = store;
  o.worker_id = "first";
  o.clock = first_clock;
  hub first(o);
  first.subscriptions().add(make_sub("s", server.url("/ep")));
  const auto id = only_id(first.publish(make_event()));
  ASSERT_TRUE(eventually([&] { return requests == 1; }));
  o.worker_id = "second";
  o.clock = second_clock;
  hub second(o);
  second.subscriptions().add(make_sub("s", server.url("/ep")));
  ASSERT_TRUE(eventually([&] { return requests == 2; }));
  // The first worker's answer comes back and is logged; the second still holds the lease.
  ASSERT_TRUE(eventually([&] {
    attempt_query q;
    q.message_id = id;
    return !store->attempts(q).empty();
  }));
  EXPECT_EQ(store->counts(second_clock->now()).in_flight, 1u);
  EXPECT_EQ(requests, 2);
  const auto between = stored(first, id);
  EXPECT_EQ(between.status, message_status::pending);
  EXPECT_EQ(between.last_status, 0) << "the first worker's answer moved the message";
  ASSERT_TRUE(eventually([&] { return stored(first, id).status == message_status::delivered; }));
  EXPECT_EQ(requests, 2);
}

TEST(dispatcher, a_late_failure_leaves_the_lease_another_worker_took_over_alone) {
  check_a_late_result_leaves_the_other_workers_lease(500);
}

TEST(dispatcher, a_late_give_up_leaves_the_message_another_worker_took_over_alone) {
  check_a_late_result_leaves_the_other_workers_lease(400);
}

// A worker whose own lease ran out while its request was still under way (the process stalled,
// its clock jumped) finds the message due again and claims it back: it must not send it a second
// time beside the first, and the first request's answer settles it.
TEST(dispatcher, a_message_whose_lease_ran_out_under_way_is_not_sent_twice_by_its_worker) {
  test_server server;
  std::atomic<int> requests{0};
  server.on("/ep", [&](const test::recorded_request&) {
    ++requests;
    return response::slow(1500ms, 204);
  });
  auto clock = std::make_shared<manual_clock>();
  auto o = fast_options();
  o.delivery.request_timeout = 10s;
  o.clock = clock;
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/ep")));
  const auto id = only_id(h.publish(make_event()));
  ASSERT_TRUE(eventually([&] { return requests == 1; }));
  clock->advance(1h);  // far past the lease: the store offers the message to a claim again
  ASSERT_TRUE(eventually([&] { return stored(h, id).status == message_status::delivered; }));
  EXPECT_EQ(requests, 1);
  EXPECT_EQ(stored(h, id).attempts, 1);
  EXPECT_EQ(h.store().counts(clock->now()).in_flight, 0u);
}

TEST(dispatcher, statistics_count_per_subscription) {
  test_server server;
  server.script("/a", {response::of(500)});
  server.respond_always("/b", response::of(404));
  hub h(fast_options());
  h.subscriptions().add(make_sub("a", server.url("/a")));
  h.subscriptions().add(make_sub("b", server.url("/b")));
  h.publish(make_event());
  ASSERT_TRUE(h.wait_idle(10s));
  auto a = h.store().stats("a");
  EXPECT_EQ(a.calls, 2u);
  EXPECT_EQ(a.status_5xx, 1u);
  EXPECT_EQ(a.status_2xx, 1u);
  EXPECT_EQ(a.failures, 1u);
  EXPECT_DOUBLE_EQ(a.success_rate(), 0.5);
  auto b = h.store().stats("b");
  EXPECT_EQ(b.calls, 1u);
  EXPECT_EQ(b.status_4xx, 1u);
  EXPECT_EQ(b.failures, 1u);
  EXPECT_GT(b.request_bytes, 0u);
}

// Also when it was the last one: the registry was loaded before, so its messages die rather than
// wait for subscriptions that will not come (wait_idle() used to stay false).
TEST(dispatcher, messages_of_a_removed_subscription_die_with_the_reason) {
  for (const bool last : {false, true}) {
    SCOPED_TRACE(last ? "the last subscription" : "another one stays");
    test_server server;
    server.respond_always("/hook", response::of(500));
    auto clock = std::make_shared<manual_clock>();
    recorder rec;
    auto o = fast_options();
    o.clock = clock;
    o.hooks = rec.make();
    o.delivery.retry.schedule = {1min};
    hub h(o);
    h.subscriptions().add(make_sub("s", server.url("/hook")));
    if (!last) {
      auto other = make_sub("other", server.url("/other"));
      other.filter.content_types = {{"Folder", {"All"}}};
      h.subscriptions().add(other);  // keeps the registry non-empty after the removal
    }
    const auto id = only_id(h.publish(make_event()));
    ASSERT_TRUE(eventually([&] { return stored(h, id).attempts == 1; }));
    h.subscriptions().remove("s");
    clock->advance(1min);
    ASSERT_TRUE(h.wait_idle(10s));
    EXPECT_EQ(stored(h, id).status, message_status::dead);
    EXPECT_EQ(rec.dead_reason(), "subscription removed");
    EXPECT_EQ(server.request_count("/hook"), 1u);
  }
}
