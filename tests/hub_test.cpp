// The hub facade: publish, fire, backpressure, replay, stop, publish-only mode.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "hookline/hookline.hpp"
#include "support/fixtures.hpp"
#include "support/test_server.hpp"

using namespace std::chrono_literals;
using namespace hookline;
using test::response;
using test::test_server;
using steady = std::chrono::steady_clock;

namespace {

subscription make_sub(std::string id, std::string url, std::string type = "File") {
  return test::make_subscription(std::move(id), std::move(url), "/Root/Content", std::move(type));
}

event make_event(std::string type = "File") {
  return test::make_content_event("Modify", "/Root/Content/Docs", "a.txt", std::move(type), 7);
}

options fast_options() {
  return test::fast_options(2);
}

options publish_only() {
  auto o = fast_options();
  o.dispatch = false;
  return o;
}

}  // namespace

TEST(hub, version_is_the_build_version) {
  EXPECT_TRUE(std::regex_match(std::string(version()), std::regex(R"(\d+\.\d+\.\d+)")))
      << version();
}

TEST(hub, fills_defaults_for_logger_clock_and_worker_id) {
  hub h(publish_only());
  const auto& s = h.settings();
  ASSERT_TRUE(s.logger);
  EXPECT_EQ(s.logger->name(), "hookline");
  EXPECT_TRUE(s.logger->sinks().empty());
  EXPECT_NE(s.logger, spdlog::default_logger());
  ASSERT_TRUE(s.clock);
  EXPECT_FALSE(s.worker_id.empty());
  hub other(publish_only());
  EXPECT_NE(other.settings().worker_id, s.worker_id);
}

TEST(hub, publish_creates_one_message_per_matching_subscription) {
  hub h(publish_only());
  h.subscriptions().add(make_sub("files", "https://a.example.com/in"));
  auto ordered = make_sub("files-ordered", "https://b.example.com/in");
  ordered.ordered = true;
  ordered.http_method = "PUT";
  h.subscriptions().add(ordered);
  h.subscriptions().add(make_sub("folders", "https://c.example.com/in", "Folder"));
  auto r = h.publish(make_event());
  ASSERT_EQ(r.message_ids.size(), 2u);
  EXPECT_NE(r.message_ids[0], r.message_ids[1]);
  for (const auto& id : r.message_ids) {
    EXPECT_TRUE(std::regex_match(id, std::regex("msg_[0-9A-Z]{26}"))) << id;
  }
  auto a = h.store().get(r.message_ids[0]);
  auto b = h.store().get(r.message_ids[1]);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->subscription_id, "files");
  EXPECT_EQ(a->url, "https://a.example.com/in");
  EXPECT_EQ(a->http_method, "POST");
  EXPECT_FALSE(a->ordered);
  EXPECT_EQ(b->http_method, "PUT");
  EXPECT_TRUE(b->ordered);
  EXPECT_EQ(a->status, message_status::pending);
  EXPECT_EQ(a->event_name, "Modify");
  EXPECT_EQ(a->event_id, b->event_id);  // one event, one generated id
  EXPECT_EQ(a->event_id.rfind("evt_", 0), 0u);
  auto body = nlohmann::json::parse(a->body);
  EXPECT_EQ(body["subscriptionId"], "files");
  EXPECT_EQ(body["nodeId"], 7);
  EXPECT_EQ(h.counters().published, 1u);
  EXPECT_EQ(h.counters().messages, 2u);
}

TEST(hub, publish_keeps_the_callers_event_id_and_batches_events) {
  hub h(publish_only());
  h.subscriptions().add(make_sub("files", "https://a.example.com/in"));
  std::vector<event> events(3, make_event());
  events[0].id = "evt-mine";
  events[1].content_type = "Folder";  // matches nothing
  auto r = h.publish(events);
  ASSERT_EQ(r.message_ids.size(), 2u);
  EXPECT_EQ(h.store().get(r.message_ids[0])->event_id, "evt-mine");
  EXPECT_EQ(h.counters().published, 3u);
  EXPECT_EQ(h.counters().messages, 2u);
  EXPECT_TRUE(h.publish(make_event("Folder")).message_ids.empty());
}

TEST(hub, fire_bypasses_the_filter_but_not_the_enabled_flag) {
  test_server server;
  hub h(fast_options());
  h.subscriptions().add(make_sub("folders", server.url("/hook"), "Folder"));
  EXPECT_TRUE(h.publish(make_event("File")).message_ids.empty());
  const auto id = h.fire("folders", make_event("File"));
  ASSERT_TRUE(h.wait_idle(10s));
  auto reqs = server.requests("/hook");
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].header("webhook-id"), id);
  EXPECT_EQ(h.store().get(id)->status, message_status::delivered);
  EXPECT_THROW(h.fire("nobody", make_event()), error);
  h.subscriptions().set_enabled("folders", false);
  EXPECT_THROW(h.fire("folders", make_event()), error);
}

TEST(hub, queue_full_with_reject_throws_counts_and_enqueues_nothing) {
  test_server server;
  server.respond_always("/hook", response::slow(3s));
  auto o = fast_options();
  o.queue_capacity = 3;
  o.overflow = overflow_policy::reject;
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  h.publish(std::vector<event>(2, make_event()));
  EXPECT_THROW(h.publish(std::vector<event>(2, make_event())), queue_full_error);
  EXPECT_EQ(h.store().counts(std::chrono::system_clock::now()).pending, 2u);
  EXPECT_EQ(h.publish(make_event()).message_ids.size(), 1u);
  EXPECT_THROW(h.publish(make_event()), queue_full_error);
  EXPECT_EQ(h.counters().rejected, 2u);
  EXPECT_EQ(h.counters().messages, 3u);
  h.stop(0ms);
}

TEST(hub, queue_full_with_block_waits_for_room) {
  test_server server;
  server.respond_always("/hook", response::slow(300ms));
  auto o = fast_options();
  o.queue_capacity = 1;
  o.overflow = overflow_policy::block;
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  h.publish(make_event());
  const auto t0 = steady::now();
  h.publish(make_event());  // waits until the first is delivered
  EXPECT_GE(steady::now() - t0, 200ms);
  EXPECT_EQ(h.counters().delivered, 1u);
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(h.counters().delivered, 2u);
  EXPECT_EQ(h.counters().rejected, 0u);
}

TEST(hub, redeliver_and_recover_replay_dead_messages) {
  test_server server;
  server.respond_always("/hook", response::of(400));
  hub h(fast_options());
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  const auto t0 = std::chrono::system_clock::now() - 1s;
  const auto first = h.publish(make_event()).message_ids.at(0);
  ASSERT_TRUE(h.wait_idle(10s));
  ASSERT_EQ(h.store().get(first)->status, message_status::dead);
  server.respond_always("/hook", response::of(200));
  EXPECT_TRUE(h.redeliver(first));
  EXPECT_FALSE(h.redeliver("msg_unknown"));
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(h.store().get(first)->status, message_status::delivered);

  server.respond_always("/hook", response::of(400));
  h.publish(std::vector<event>(3, make_event()));
  ASSERT_TRUE(h.wait_idle(10s));
  message_query dead;
  dead.status = message_status::dead;
  ASSERT_EQ(h.store().query(dead).size(), 3u);
  server.respond_always("/hook", response::of(200));
  EXPECT_EQ(h.recover("s", t0), 3u);
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_TRUE(h.store().query(dead).empty());
  EXPECT_EQ(server.request_count("/hook"), 2u + 6u);
}

TEST(hub, publish_only_hub_enqueues_and_a_dispatching_hub_delivers_from_the_same_store) {
  test_server server;
  auto store = make_store("memory:");
  std::vector<std::string> ids;
  {
    auto o = publish_only();
    o.store_instance = store;
    hub h(o);
    h.subscriptions().add(make_sub("s", server.url("/hook")));
    ids = h.publish(std::vector<event>(5, make_event())).message_ids;
    EXPECT_FALSE(h.wait_idle(50ms));
  }
  EXPECT_EQ(server.request_count(), 0u);
  EXPECT_EQ(store->counts(std::chrono::system_clock::now()).pending, 5u);
  auto o = fast_options();
  o.store_instance = store;
  hub h(o);
  // The dispatcher claims nothing while the registry is empty, so the pending messages are not
  // declared dead before the subscription is there.
  EXPECT_FALSE(h.wait_idle(200ms));
  EXPECT_EQ(store->counts(std::chrono::system_clock::now()).dead, 0u);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(server.request_count("/hook"), 5u);
  for (const auto& id : ids) EXPECT_EQ(store->get(id)->status, message_status::delivered);
}

TEST(hub, a_saved_disabled_state_survives_into_a_new_hub) {
  auto store = make_store("memory:");
  store->save_state({"s", true, "HTTP 410 Gone", std::nullopt});
  auto o = publish_only();
  o.store_instance = store;
  hub h(o);
  h.subscriptions().add(make_sub("s", "https://a.example.com/in"));
  EXPECT_TRUE(h.publish(make_event()).message_ids.empty());
  EXPECT_FALSE(h.subscriptions().get("s")->enabled);
  // The host may enable it again, and then it fires.
  h.subscriptions().set_enabled("s", true);
  EXPECT_EQ(h.publish(make_event()).message_ids.size(), 1u);
}

// The saved state used to reach only the first message of a batch: the rest of the batch matched
// the snapshot taken before the subscription was disabled (2 of 3 went out).
TEST(hub, a_saved_disabled_state_holds_for_a_whole_batch_and_a_whole_claim) {
  test_server server;
  auto store = make_store("memory:");
  {
    auto o = publish_only();
    o.store_instance = store;
    hub h(o);
    h.subscriptions().add(make_sub("s", server.url("/hook")));
    const std::vector<event> three{make_event(), make_event(), make_event()};
    ASSERT_EQ(h.publish(three).message_ids.size(), 3u);  // pending from an earlier run
  }
  store->save_state({"s", true, "HTTP 410 Gone", std::nullopt});
  auto o = fast_options();
  o.store_instance = store;
  std::atomic<int> dead{0};
  o.hooks.on_dead = [&](const message&, const std::string&) { ++dead; };
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(dead.load(), 3);
  EXPECT_EQ(server.request_count("/hook"), 0u);
  // A fresh batch after that: nothing for the disabled subscription.
  const std::vector<event> more{make_event(), make_event(), make_event()};
  EXPECT_TRUE(h.publish(more).message_ids.empty());
  EXPECT_FALSE(h.subscriptions().get("s")->enabled);
}

// Without options.logger the hub (and the store it opens) log through the logger the host
// registered as "hookline"; the store used to, the hub did not, and then the hub's sinkless
// logger silenced the store as well.
TEST(hub, without_a_logger_the_hub_uses_the_one_registered_as_hookline) {
  std::ostringstream log;
  auto registered = std::make_shared<spdlog::logger>(
      "hookline", std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  spdlog::register_logger(registered);
  {
    auto store = make_store("memory:");
    store->save_state({"s", true, "HTTP 410 Gone", std::nullopt});
    auto o = publish_only();
    o.store_instance = store;
    hub h(o);
    h.subscriptions().add(make_sub("s", "https://a.example.com/in"));
    EXPECT_TRUE(h.publish(make_event()).message_ids.empty());
  }
  spdlog::drop("hookline");
  registered->flush();
  EXPECT_NE(log.str().find("subscription s stays disabled"), std::string::npos) << log.str();
}

// publish() treats an event's name as event_from_json does (it used to send "create" as it was
// and deliver an event without a name to every `All` subscription).
TEST(hub, publish_spells_event_names_as_the_catalog_and_refuses_none_and_all) {
  auto store = make_store("memory:");
  auto o = publish_only();
  o.store_instance = store;
  hub h(o);
  h.subscriptions().add(make_sub("s", "https://a.example.com/in"));
  auto e = make_event();
  e.event_name = "create";
  const auto ids = h.publish(e).message_ids;
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_EQ(store->get(ids[0])->event_name, "Create");
  for (const std::string bad : {"", "all"}) {
    std::vector<event> batch{make_event(), make_event()};
    batch[1].event_name = bad;
    try {
      h.publish(batch);
      ADD_FAILURE() << "published an event named '" << bad << "'";
    } catch (const error& err) {
      EXPECT_NE(std::string(err.what()).find("event 2: event_name"), std::string::npos)
          << err.what();
    }
  }
  EXPECT_EQ(store->query({}).size(), 1u);  // nothing of the refused batches
  e.event_name = "MyHostEvent";            // not in the catalog: as given
  const auto host = h.publish(e).message_ids;
  ASSERT_EQ(host.size(), 1u);
  EXPECT_EQ(store->get(host[0])->event_name, "MyHostEvent");
}

TEST(hub, a_saved_disabled_state_holds_for_every_event_of_a_publish_batch) {
  auto store = make_store("memory:");
  store->save_state({"s", true, "HTTP 410 Gone", std::nullopt});
  auto o = publish_only();
  o.store_instance = store;
  hub h(o);
  h.subscriptions().add(make_sub("s", "https://a.example.com/in"));
  const std::vector<event> three{make_event(), make_event(), make_event()};
  EXPECT_TRUE(h.publish(three).message_ids.empty());
}

TEST(hub, concurrent_publishers_get_every_message_delivered_once) {
  test_server server;
  auto o = fast_options();
  o.delivery.endpoint_concurrency = 8;
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) h.publish(make_event());
    });
  for (auto& t : threads) t.join();
  ASSERT_TRUE(h.wait_idle(20s));
  auto reqs = server.requests("/hook");
  ASSERT_EQ(reqs.size(), 200u);
  std::set<std::string> ids;
  for (const auto& r : reqs) ids.insert(*r.header("webhook-id"));
  EXPECT_EQ(ids.size(), 200u);
  EXPECT_EQ(h.counters().delivered, 200u);
}

TEST(hub, stop_is_idempotent_and_destruction_is_prompt_with_requests_in_flight) {
  test_server server;
  server.respond_always("/hook", response::slow(10s));
  auto store = make_store("memory:");
  const auto t0 = steady::now();
  {
    auto o = fast_options();
    o.store_instance = store;
    hub h(o);
    h.subscriptions().add(make_sub("s", server.url("/hook")));
    h.publish(std::vector<event>(3, make_event()));
    ASSERT_TRUE(server.wait_for_requests("/hook", 3, 10s));
  }
  EXPECT_LT(steady::now() - t0, 3s);
  const auto c = store->counts(std::chrono::system_clock::now());
  EXPECT_EQ(c.pending, 3u);
  EXPECT_EQ(c.in_flight, 0u);
  hub h(fast_options());
  h.stop();
  h.stop();
  EXPECT_THROW(h.publish(make_event()), error);
  EXPECT_THROW(h.fire("s", make_event()), error);
}

TEST(hub, an_unknown_store_uri_is_an_error) {
  auto o = fast_options();
  o.store = "carrier-pigeon:";
  EXPECT_THROW(hub{o}, error);
}

TEST(hub, a_user_agent_that_could_inject_a_header_is_an_error_naming_the_field) {
  auto o = test::fast_options(3);
  o.delivery.user_agent = "mine/1\r\nX-Injected: yes";
  try {
    hub h(o);
    ADD_FAILURE() << "accepted a user agent with CR LF";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("delivery.user_agent"), std::string::npos) << e.what();
  }
  o.delivery.user_agent = "mine/1";
  EXPECT_NO_THROW(hub{o});
}

// A zero timeout made every request time out with the memory store (the SQL stores refused it).
TEST(hub, a_timeout_that_is_not_positive_is_an_error_naming_the_field) {
  for (const char* field : {"delivery.request_timeout", "delivery.connect_timeout"}) {
    auto o = test::fast_options(3);
    (std::string(field) == "delivery.request_timeout" ? o.delivery.request_timeout
                                                      : o.delivery.connect_timeout) =
        std::chrono::milliseconds(0);
    try {
      hub h(o);
      ADD_FAILURE() << "accepted a zero " << field;
    } catch (const error& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  }
}

// Values the dispatcher used to clamp silently (a concurrency of 0 ran as 1, a jitter of 5 as 1).
TEST(hub, delivery_options_that_cannot_work_are_an_error_naming_the_field) {
  using change = std::function<void(delivery_options&)>;
  const std::vector<std::pair<std::string, change>> cases = {
      {"delivery.max_in_flight", [](delivery_options& d) { d.max_in_flight = 0; }},
      {"delivery.endpoint_concurrency", [](delivery_options& d) { d.endpoint_concurrency = 0; }},
      {"delivery.retry.jitter", [](delivery_options& d) { d.retry.jitter = 1.5; }},
      {"delivery.retry.jitter", [](delivery_options& d) { d.retry.jitter = -0.1; }},
      {"delivery.retry.jitter", [](delivery_options& d) { d.retry.jitter = std::nan(""); }},
      {"delivery.retry.schedule[1]",
       [](delivery_options& d) {
         d.retry.schedule = {1s, -1s};
       }},
      {"delivery.retry.max_age", [](delivery_options& d) { d.retry.max_age = -1s; }},
      {"delivery.retry.retry_after_max",
       [](delivery_options& d) { d.retry.retry_after_max = -1s; }},
      {"delivery.auto_disable_after", [](delivery_options& d) { d.auto_disable_after = -1s; }},
      {"delivery.breaker.failure_rate", [](delivery_options& d) { d.breaker.failure_rate = 2; }},
      {"delivery.breaker.window", [](delivery_options& d) { d.breaker.window = 0s; }},
      {"delivery.breaker.cool_down", [](delivery_options& d) { d.breaker.cool_down = -1s; }},
  };
  for (const auto& [field, apply] : cases) {
    auto o = test::fast_options(3);
    apply(o.delivery);
    try {
      hub h(o);
      ADD_FAILURE() << "accepted a bad " << field;
    } catch (const error& e) {
      EXPECT_NE(std::string(e.what()).find(field + ":"), std::string::npos) << e.what();
    }
  }
  // The edges are accepted.
  auto o = test::fast_options(3);
  o.delivery.retry.jitter = 1.0;
  o.delivery.breaker.failure_rate = 0.0;
  o.delivery.auto_disable_after = 0s;
  o.delivery.max_in_flight = 1;
  o.delivery.endpoint_concurrency = 1;
  EXPECT_NO_THROW(hub{o});
}

TEST(hub, wait_idle_is_true_at_once_without_work) {
  hub h(fast_options());
  const auto t0 = steady::now();
  EXPECT_TRUE(h.wait_idle(5s));
  EXPECT_LT(steady::now() - t0, 1s);
}

namespace {

/// Forwards to a real store and counts how messages reached the dispatcher: claimed from the
/// store, or stored leased at publish and handed over.
class counting_store final : public forwarding_store {
 public:
  using forwarding_store::forwarding_store;
  std::atomic<std::size_t> claimed{0}, leased_at_publish{0}, full_counts{0};

  std::vector<bool> enqueue_claimed(std::vector<message>& batch,
                                    const enqueue_lease& lease) override {
    auto leased = forwarding_store::enqueue_claimed(batch, lease);
    for (bool b : leased) leased_at_publish += b ? 1 : 0;
    return leased;
  }
  std::vector<message> claim(const claim_request& req) override {
    auto got = forwarding_store::claim(req);
    claimed += got.size();
    return got;
  }
  store_counts counts(time_point now) override {
    ++full_counts;
    return forwarding_store::counts(now);
  }
};

}  // namespace

// A dispatching hub stores what it publishes already leased to itself and sends it without
// claiming it from the store; ordered messages still wait for their turn through a claim.
TEST(hub, published_messages_reach_the_dispatcher_without_a_claim) {
  test_server server;
  auto store = std::make_shared<counting_store>(make_store("memory:"));
  auto o = fast_options();
  o.store_instance = store;
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  auto ordered = make_sub("o", server.url("/ordered"));
  ordered.ordered = true;
  h.subscriptions().add(ordered);
  for (int i = 0; i < 20; ++i) h.publish(make_event());
  ASSERT_TRUE(h.wait_idle(10s));
  EXPECT_EQ(server.request_count("/hook"), 20u);
  EXPECT_EQ(server.request_count("/ordered"), 20u);
  EXPECT_EQ(store->leased_at_publish.load(), 20u);
  EXPECT_EQ(store->claimed.load(), 20u) << "only the ordered ones are claimed";
  EXPECT_EQ(store->counts(std::chrono::system_clock::now()).delivered, 40u);
}

// More than the dispatcher holds at once: the rest is stored unleased and claimed; each message
// goes exactly once either way.
TEST(hub, a_burst_beyond_the_dispatchers_room_is_claimed_from_the_store) {
  test_server server;
  auto store = std::make_shared<counting_store>(make_store("memory:"));
  auto o = fast_options();
  o.store_instance = store;
  o.delivery.max_in_flight = 4;
  o.delivery.endpoint_concurrency = 4;
  hub h(o);
  h.subscriptions().add(make_sub("s", server.url("/hook")));
  auto r = h.publish(std::vector<event>(3000, make_event()));
  ASSERT_EQ(r.message_ids.size(), 3000u);
  ASSERT_TRUE(h.wait_idle(60s));
  std::set<std::string> seen;
  for (const auto& req : server.requests("/hook"))
    seen.insert(req.header("webhook-id").value_or(""));
  EXPECT_EQ(server.request_count("/hook"), 3000u);
  EXPECT_EQ(seen, std::set<std::string>(r.message_ids.begin(), r.message_ids.end()));
  EXPECT_GT(store->leased_at_publish.load(), 0u);
  EXPECT_LT(store->leased_at_publish.load(), 3000u);
  EXPECT_EQ(store->leased_at_publish.load() + store->claimed.load(), 3000u);
  // Opening, backpressure and wait_idle() ask for the pending count alone: the full counts of
  // a SQL store grow with every delivered message it keeps.
  EXPECT_EQ(store->full_counts.load(), 0u);
}

// Another hub (another process, in production) publishes into the store a dispatching hub uses:
// nothing wakes the dispatcher, which still finds the messages (it asks the store again at least
// every 100 ms even when its own view says nothing is due).
TEST(hub, messages_another_hub_publishes_are_found_without_a_wake_up) {
  test_server server;
  auto store = make_store("memory:");
  auto o = fast_options();
  o.store_instance = store;
  hub worker(o);
  worker.subscriptions().add(make_sub("s", server.url("/hook")));
  ASSERT_TRUE(worker.wait_idle(5s));
  std::this_thread::sleep_for(150ms);  // idle: its view of the store is "nothing due"
  auto p = publish_only();
  p.store_instance = store;
  hub publisher(p);
  publisher.subscriptions().add(make_sub("s", server.url("/hook")));
  publisher.publish(std::vector<event>(3, make_event()));
  EXPECT_TRUE(server.wait_for_requests(3, 5s)) << server.request_count();
  ASSERT_TRUE(worker.wait_idle(5s));
  EXPECT_EQ(store->counts(std::chrono::system_clock::now()).delivered, 3u);
}

// An ordered subscription's next message goes as soon as the one before it is done, not at the
// dispatcher's next periodic look at the store.
TEST(hub, ordered_messages_follow_each_other_without_waiting_for_a_poll) {
  test_server server;
  auto o = fast_options();
  hub h(o);
  auto ordered = make_sub("o", server.url("/ordered"));
  ordered.ordered = true;
  h.subscriptions().add(ordered);
  const auto t0 = steady::now();
  h.publish(std::vector<event>(20, make_event()));
  ASSERT_TRUE(server.wait_for_requests("/ordered", 20, 10s));
  // One at a time through the store: 20 local requests take milliseconds; a 100 ms poll between
  // them would take two seconds.
  EXPECT_LT(steady::now() - t0, 1500ms);
}

// Publishing faster than a slow endpoint takes its messages keeps the dispatcher's room full of
// handed-over messages; messages that only a claim can reach (here an ordered subscription's)
// still get their share.
TEST(hub, sustained_publishing_does_not_starve_messages_waiting_in_the_store) {
  test_server server;
  server.respond_always("/slow", response::slow(20ms, 204));
  auto o = fast_options();
  o.delivery.max_in_flight = 4;
  o.delivery.endpoint_concurrency = 4;
  hub h(o);
  h.subscriptions().add(make_sub("busy", server.url("/slow")));
  auto ordered = make_sub("o", server.url("/ordered"));
  ordered.ordered = true;
  h.subscriptions().add(ordered);
  // ~400 events/s for 1.5 s against an endpoint that takes ~200/s.
  const auto end = steady::now() + 1500ms;
  while (steady::now() < end) {
    h.publish(std::vector<event>(4, make_event()));
    std::this_thread::sleep_for(10ms);
  }
  const auto ordered_during = server.request_count("/ordered");
  h.stop(0ms);
  RecordProperty("ordered_during", static_cast<int>(ordered_during));
  EXPECT_GE(ordered_during, 10u) << "ordered messages delivered while publishing went on";
}
