// forwarding_store passes each call on to the same member of the inner store: the members with
// defaults in delivery_store too, whose default would otherwise behave alike on a real store
// (so the store conformance suite alone could not tell).
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "hookline/error.hpp"
#include "hookline/store.hpp"

namespace hookline {
namespace {

// Records which member was called; answers with values the test can recognise.
class spy_store final : public delivery_store {
 public:
  std::vector<std::string> calls;

  void enqueue(std::vector<message>&) override { calls.push_back("enqueue"); }
  std::vector<bool> enqueue_claimed(std::vector<message>&, const enqueue_lease&) override {
    calls.push_back("enqueue_claimed");
    return {true};
  }
  std::vector<message> claim(const claim_request&) override {
    calls.push_back("claim");
    return std::vector<message>(2);
  }
  void complete(const std::string&, const attempt_record&) override { calls.push_back("complete"); }
  void reschedule(const std::string&, time_point, const attempt_record&) override {
    calls.push_back("reschedule");
  }
  void record_results(std::vector<attempt_result>&) override { calls.push_back("record_results"); }
  void dead_letter(const std::string&, const std::string&, const attempt_record*) override {
    calls.push_back("dead_letter");
  }
  void dead_letter_if_held(const std::string&, const std::string&, const std::string&,
                           const attempt_record*) override {
    calls.push_back("dead_letter_if_held");
  }
  void release(const std::string&, time_point) override { calls.push_back("release"); }
  void release_if_held(const std::string&, const std::string&, time_point) override {
    calls.push_back("release_if_held");
  }
  std::size_t release_worker(const std::string&) override {
    calls.push_back("release_worker");
    return 3;
  }
  bool redeliver(const std::string&, time_point) override {
    calls.push_back("redeliver");
    return true;
  }
  std::size_t recover(const std::string&, time_point, time_point) override {
    calls.push_back("recover");
    return 4;
  }
  std::optional<message> get(const std::string&) override {
    calls.push_back("get");
    return message{};
  }
  std::vector<message> query(const message_query&) override {
    calls.push_back("query");
    return std::vector<message>(5);
  }
  std::vector<attempt_record> attempts(const attempt_query&) override {
    calls.push_back("attempts");
    return std::vector<attempt_record>(6);
  }
  store_counts counts(time_point) override {
    calls.push_back("counts");
    store_counts c;
    c.pending = 7;
    return c;
  }
  std::size_t count_pending(time_point) override {
    calls.push_back("count_pending");
    return 8;
  }
  subscription_stats stats(const std::string&) override {
    calls.push_back("stats");
    return {};
  }
  std::optional<time_point> next_due(time_point now) override {
    calls.push_back("next_due");
    return now;
  }
  bool wait_for_notification(std::chrono::milliseconds) override {
    calls.push_back("wait_for_notification");
    return true;
  }
  void save_state(const subscription_state&) override { calls.push_back("save_state"); }
  std::vector<subscription_state> load_states() override {
    calls.push_back("load_states");
    return std::vector<subscription_state>(9);
  }
  std::size_t prune(time_point) override {
    calls.push_back("prune");
    return 10;
  }
};

TEST(forwarding_store, passes_every_member_to_the_same_member_of_the_inner_store) {
  auto spy = std::make_shared<spy_store>();
  forwarding_store f(spy);
  EXPECT_EQ(f.inner(), spy);
  const time_point now{};
  std::vector<message> batch(1);
  std::vector<attempt_result> results(1);
  const attempt_record a;
  f.enqueue(batch);
  EXPECT_EQ(f.enqueue_claimed(batch, enqueue_lease{}), std::vector<bool>{true});
  EXPECT_EQ(f.claim(claim_request{}).size(), 2u);
  f.complete("m", a);
  f.reschedule("m", now, a);
  f.record_results(results);
  f.dead_letter("m", "why", &a);
  f.dead_letter_if_held("m", "w", "why", &a);
  f.release("m", now);
  f.release_if_held("m", "w", now);
  EXPECT_EQ(f.release_worker("w"), 3u);
  EXPECT_TRUE(f.redeliver("m", now));
  EXPECT_EQ(f.recover("s", now, now), 4u);
  EXPECT_TRUE(f.get("m").has_value());
  EXPECT_EQ(f.query(message_query{}).size(), 5u);
  EXPECT_EQ(f.attempts(attempt_query{}).size(), 6u);
  EXPECT_EQ(f.counts(now).pending, 7u);
  EXPECT_EQ(f.count_pending(now), 8u);
  f.stats("s");
  EXPECT_EQ(f.next_due(now), now);
  EXPECT_TRUE(f.wait_for_notification(std::chrono::milliseconds(1)));
  f.save_state(subscription_state{});
  EXPECT_EQ(f.load_states().size(), 9u);
  EXPECT_EQ(f.prune(now), 10u);
  const std::vector<std::string> expected{"enqueue",
                                          "enqueue_claimed",
                                          "claim",
                                          "complete",
                                          "reschedule",
                                          "record_results",
                                          "dead_letter",
                                          "dead_letter_if_held",
                                          "release",
                                          "release_if_held",
                                          "release_worker",
                                          "redeliver",
                                          "recover",
                                          "get",
                                          "query",
                                          "attempts",
                                          "counts",
                                          "count_pending",
                                          "stats",
                                          "next_due",
                                          "wait_for_notification",
                                          "save_state",
                                          "load_states",
                                          "prune"};
  EXPECT_EQ(spy->calls, expected);
}

TEST(forwarding_store, refuses_a_null_inner_store) {
  try {
    forwarding_store wrapper(nullptr);
    ADD_FAILURE() << "accepted a null store";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("inner store is null"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace hookline
