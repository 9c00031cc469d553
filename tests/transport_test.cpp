#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "hookline/error.hpp"
#include "support/test_server.hpp"
#include "transport/transport.hpp"

extern char** environ;

using namespace std::chrono_literals;
using hookline::test::response;
using hookline::test::test_server;

namespace {

// A blocking libcurl request, independent of the transport under test, to check the test server.
struct plain_result {
  CURLcode code = CURLE_OK;
  long status = 0;
  std::string body;
  std::string headers;
};

size_t append(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

plain_result plain_request(CURL* h, const std::string& url, const char* method = "GET",
                           const std::string* body = nullptr) {
  plain_result r;
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  if (body) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body->data());
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size()));
  }
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, append);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, append);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &r.headers);
  r.code = curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.status);
  return r;
}

struct easy {
  CURL* h = curl_easy_init();
  ~easy() { curl_easy_cleanup(h); }
};

}  // namespace

TEST(test_server, records_requests_and_answers_scripts_in_order) {
  test_server server;
  server.script("/hook", {response::of(500), response::of(429, "", {{"Retry-After", "3"}})});
  server.set_default(response::of(201, "made"));
  easy e;
  std::string body = R"({"a":1})";
  auto first = plain_request(e.h, server.url("/hook?x=1"), "POST", &body);
  auto second = plain_request(e.h, server.url("/hook"), "POST", &body);
  auto third = plain_request(e.h, server.url("/hook"), "POST", &body);
  EXPECT_EQ(first.status, 500);
  EXPECT_EQ(second.status, 429);
  EXPECT_NE(second.headers.find("Retry-After: 3"), std::string::npos);
  EXPECT_EQ(third.status, 201);
  EXPECT_EQ(third.body, "made");

  ASSERT_TRUE(server.wait_for_requests("/hook", 3, 1s));
  auto reqs = server.requests("/hook");
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[0].method, "POST");
  EXPECT_EQ(reqs[0].query, "x=1");
  EXPECT_EQ(reqs[0].body, body);
  EXPECT_EQ(reqs[0].header("content-length"), std::to_string(body.size()));
  // One easy handle keeps one connection alive across the three requests.
  EXPECT_EQ(server.connections_accepted(), 1u);
  EXPECT_EQ(reqs[2].connection, reqs[0].connection);
}

TEST(test_server, drop_closes_without_answer_and_slow_answers_late) {
  test_server server;
  server.respond_always("/drop", response::dropped());
  server.respond_always("/slow", response::slow(200ms, 202));
  server.on("/echo", [](const hookline::test::recorded_request& r) {
    return response::of(200, r.method + " " + r.body);
  });
  easy e;
  auto dropped = plain_request(e.h, server.url("/drop"));
  EXPECT_EQ(dropped.code, CURLE_GOT_NOTHING);
  auto start = std::chrono::steady_clock::now();
  auto slow = plain_request(e.h, server.url("/slow"));
  EXPECT_EQ(slow.status, 202);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 190ms);
  std::string body = "xyz";
  auto echo = plain_request(e.h, server.url("/echo"), "PUT", &body);
  EXPECT_EQ(echo.body, "PUT xyz");
  EXPECT_GE(server.connections_accepted(), 2u);
}

// ---------------------------------------------------------------------------------------------
// The transport against the loopback server.

using hookline::detail::error_kind;
using hookline::detail::http_request;
using hookline::detail::http_response;
using hookline::detail::transport;
using hookline::detail::transport_options;

namespace {

// Collects completions, which arrive on the transport's thread.
class collector {
 public:
  transport::completion callback() {
    return [this](http_response&& r) {
      std::lock_guard lock(mutex_);
      done_[r.token] = std::move(r);
      cv_.notify_all();
    };
  }
  bool wait(std::size_t n, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return done_.size() >= n; });
  }
  http_response get(std::uint64_t token) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, 10s, [&] { return done_.count(token) > 0; });
    auto it = done_.find(token);
    if (it == done_.end()) {
      ADD_FAILURE() << "no completion for token " << token;
      return {};
    }
    return it->second;
  }
  std::size_t size() {
    std::lock_guard lock(mutex_);
    return done_.size();
  }
  std::map<std::uint64_t, http_response> all() {
    std::lock_guard lock(mutex_);
    return done_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::uint64_t, http_response> done_;
};

transport_options local_options() {
  transport_options o;
  o.allow_private_networks = true;
  return o;
}

http_request make_request(std::uint64_t token, std::string url, std::string method = "POST",
                          std::string body = {}) {
  http_request r;
  r.token = token;
  r.url = std::move(url);
  r.method = std::move(method);
  r.body = std::move(body);
  return r;
}

// A port with nothing listening: bound, never listened on, then closed.
std::uint16_t closed_port() {
  test_server probe;
  return probe.port();
}

}  // namespace

TEST(transport, post_delivers_body_and_headers) {
  test_server server;
  server.set_default(response::of(204));
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  auto req = make_request(1, server.url("/in"), "POST", R"({"event":"Create"})");
  req.headers = {"Content-Type: application/json", "webhook-id: msg_1", "X-Api-Key: k"};
  t.submit(req);
  auto r = c.get(1);
  EXPECT_EQ(r.kind, error_kind::none) << r.error;
  EXPECT_EQ(r.status, 204);
  ASSERT_EQ(server.request_count(), 1u);
  auto got = server.requests().front();
  EXPECT_EQ(got.method, "POST");
  EXPECT_EQ(got.path, "/in");
  EXPECT_EQ(got.body, R"({"event":"Create"})");
  EXPECT_EQ(got.header("Content-Type"), "application/json");
  EXPECT_EQ(got.header("webhook-id"), "msg_1");
  EXPECT_EQ(got.header("X-Api-Key"), "k");
  EXPECT_FALSE(got.has_header("Expect"));
  EXPECT_EQ(got.header("User-Agent").value_or("").rfind("hookline/", 0), 0u);
  EXPECT_GE(r.request_length, got.body.size() + 60);
  EXPECT_GT(r.duration.count(), 0);
  EXPECT_EQ(t.in_flight(), 0u);
}

// A large body goes at once, without a 100-continue round trip (libcurl would ask for one).
TEST(transport, large_body_is_sent_without_expect_100_continue) {
  test_server server;
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  for (std::size_t size : {std::size_t{2000}, std::size_t{3} << 20}) {
    t.submit(make_request(size, server.url("/big"), "POST", std::string(size, 'x')));
    auto r = c.get(size);
    EXPECT_EQ(r.status, 200) << size << " " << r.error;
  }
  const auto all = server.requests();
  ASSERT_EQ(all.size(), 2u);
  for (const auto& got : all) {
    EXPECT_FALSE(got.has_header("Expect")) << got.body.size();
    EXPECT_EQ(got.body, std::string(got.body.size(), 'x'));
  }
  EXPECT_EQ(all[1].body.size(), std::size_t{3} << 20);
}

// The request comes back with its response, with the buffers it was sent from, so the caller
// can reuse them; the transport holds no pointer into it afterwards.
TEST(transport, response_hands_the_request_back) {
  test_server server;
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  auto req = make_request(7, server.url("/back"), "POST", std::string(300, 'b'));
  req.headers = {"webhook-id: msg_back", "X-Long: " + std::string(100, 'v')};
  t.submit(req);
  auto r = c.get(7);
  EXPECT_EQ(r.status, 200);
  // Measured from the request before it was handed back: head and body are counted.
  EXPECT_GE(r.request_length, req.body.size() + req.headers[0].size() + req.headers[1].size());
  EXPECT_EQ(r.request.url, req.url);
  EXPECT_EQ(r.request.body, req.body);
  EXPECT_EQ(r.request.headers, req.headers);
  // Reused for the next request with fewer lines and a shorter body: nothing carries over.
  auto again = std::move(r.request);
  again.token = 8;
  again.body = "short";
  again.headers.resize(1);
  t.submit(std::move(again));
  EXPECT_EQ(c.get(8).status, 200);
  const auto all = server.requests();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].header("X-Long"), std::string(100, 'v'));
  EXPECT_EQ(all[1].body, "short");
  EXPECT_EQ(all[1].header("webhook-id"), "msg_back");
  EXPECT_FALSE(all[1].has_header("X-Long"));
}

// hookline's User-Agent goes as a header line; the request's own User-Agent replaces it (sent
// once), and a user agent that could inject a header is refused when the transport is made.
TEST(transport, user_agent_is_set_once_and_can_be_overridden) {
  test_server server;
  collector c;
  auto opts = local_options();
  opts.user_agent = "tester/1.0";
  transport t(opts, c.callback(), nullptr);
  t.submit(make_request(1, server.url("/ua")));
  EXPECT_EQ(c.get(1).status, 200);
  auto own = make_request(2, server.url("/ua"));
  own.headers = {"User-Agent: mine/2"};
  t.submit(std::move(own));
  EXPECT_EQ(c.get(2).status, 200);
  const auto all = server.requests();
  ASSERT_EQ(all.size(), 2u);
  const auto count_ua = [](const hookline::test::recorded_request& r) {
    return std::count_if(r.headers.begin(), r.headers.end(), [](const auto& h) {
      return h.first == "User-Agent" || h.first == "user-agent";
    });
  };
  EXPECT_EQ(all[0].header("User-Agent"), "tester/1.0");
  EXPECT_EQ(count_ua(all[0]), 1);
  EXPECT_EQ(all[1].header("User-Agent"), "mine/2");
  EXPECT_EQ(count_ua(all[1]), 1);

  auto bad = local_options();
  bad.user_agent = "x\r\nX-Injected: 1";
  try {
    transport broken(bad, c.callback(), nullptr);
    ADD_FAILURE() << "a user agent with CR LF was accepted";
  } catch (const hookline::error& e) {
    EXPECT_NE(std::string(e.what()).find("user_agent"), std::string::npos) << e.what();
  }
}

TEST(transport, get_sends_headers_but_no_body) {
  test_server server;
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  auto req = make_request(1, server.url("/g"), "GET", "ignored body");
  req.headers = {"webhook-id: msg_2"};
  t.submit(req);
  EXPECT_EQ(c.get(1).status, 200);
  auto got = server.requests().front();
  EXPECT_EQ(got.method, "GET");
  EXPECT_EQ(got.body, "");
  EXPECT_FALSE(got.has_header("Content-Length"));
  EXPECT_EQ(got.header("webhook-id"), "msg_2");
}

TEST(transport, custom_methods_send_body) {
  test_server server;
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  t.submit(make_request(1, server.url("/put"), "PUT", "p"));
  t.submit(make_request(2, server.url("/patch"), "PATCH", "q"));
  t.submit(make_request(3, server.url("/delete"), "DELETE", ""));
  ASSERT_TRUE(c.wait(3));
  EXPECT_EQ(server.requests("/put").at(0).method, "PUT");
  EXPECT_EQ(server.requests("/put").at(0).body, "p");
  EXPECT_EQ(server.requests("/patch").at(0).method, "PATCH");
  EXPECT_EQ(server.requests("/patch").at(0).body, "q");
  auto del = server.requests("/delete").at(0);
  EXPECT_EQ(del.method, "DELETE");
  EXPECT_EQ(del.body, "");
  // libcurl's form content type must not be invented for a body without one.
  EXPECT_FALSE(del.has_header("Content-Type"));
}

// One request at a time, so every request reuses the same pooled handle: what one request set
// (method, body, headers, timeouts, URL) must never leak into the next.
TEST(transport, reused_handles_carry_nothing_over) {
  test_server server;
  server.respond_always("/slow", response::slow(300ms));
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  struct step {
    std::string method, path, body, header;
  };
  const std::vector<step> steps = {{"POST", "/a", "one", "X-A: 1"},  {"GET", "/b", "", "X-B: 2"},
                                   {"PUT", "/c", "three", ""},       {"HEAD", "/d", "", ""},
                                   {"POST", "/e", "five", "X-E: 5"}, {"POST", "/e", "six", ""},
                                   {"DELETE", "/f", "", ""},         {"POST", "/g", "eight", ""}};
  std::uint64_t token = 0;
  for (const auto& st : steps) {
    auto req = make_request(++token, server.url(st.path), st.method, st.body);
    if (!st.header.empty()) req.headers = {st.header};
    t.submit(req);
    ASSERT_EQ(c.get(token).kind, error_kind::none) << st.method << " " << st.path;
  }
  // A short timeout on one request applies to that request only.
  auto timed = make_request(++token, server.url("/slow"), "POST", "late");
  timed.timeout = 100ms;
  t.submit(timed);
  EXPECT_EQ(c.get(token).kind, error_kind::timeout);
  t.submit(make_request(++token, server.url("/slow"), "POST", "in time"));
  EXPECT_EQ(c.get(token).status, 200);

  const auto all = server.requests();
  ASSERT_EQ(all.size(), steps.size() + 2);
  for (std::size_t i = 0; i < steps.size(); ++i) {
    SCOPED_TRACE(steps[i].method + " " + steps[i].path);
    EXPECT_EQ(all[i].method, steps[i].method);
    EXPECT_EQ(all[i].path, steps[i].path);
    EXPECT_EQ(all[i].body, steps[i].body);
    EXPECT_EQ(all[i].has_header("X-A"), steps[i].header == "X-A: 1");
    EXPECT_EQ(all[i].has_header("X-B"), steps[i].header == "X-B: 2");
    EXPECT_EQ(all[i].has_header("X-E"), steps[i].header == "X-E: 5");
  }
  EXPECT_EQ(all.back().body, "in time");
}

// A batch goes in with one call; every request of it completes with its own token.
TEST(transport, batch_submit_completes_every_request) {
  test_server server;
  server.set_default(response::of(204));
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  std::vector<http_request> batch;
  for (std::uint64_t i = 1; i <= 20; ++i)
    batch.push_back(make_request(i, server.url("/b" + std::to_string(i)), "POST", "x"));
  t.submit(std::move(batch));
  EXPECT_TRUE(batch.empty());
  ASSERT_TRUE(c.wait(20));
  for (std::uint64_t i = 1; i <= 20; ++i) EXPECT_EQ(c.get(i).status, 204) << i;
  EXPECT_EQ(server.request_count(), 20u);
  t.stop();
  std::vector<http_request> late;
  late.push_back(make_request(21, server.url("/late"), "POST", "x"));
  late.push_back(make_request(22, server.url("/late"), "POST", "x"));
  t.submit(std::move(late));
  EXPECT_EQ(c.get(21).kind, error_kind::cancelled);
  EXPECT_EQ(c.get(22).kind, error_kind::cancelled);
  EXPECT_EQ(t.in_flight(), 0u);
}

// The transport holds requests beyond max_running and beyond their group's limit, and starts
// them in order as slots free up.
TEST(transport, caps_running_requests_in_total_and_per_group) {
  test_server server;
  server.set_default(response::slow(150ms));
  collector c;
  auto o = local_options();
  o.max_running = 3;
  transport t(o, c.callback(), nullptr);
  std::vector<http_request> batch;
  for (std::uint64_t i = 1; i <= 4; ++i) {  // group 1: one at a time
    auto r = make_request(i, server.url("/one"), "POST", std::to_string(i));
    r.group = 1;
    r.group_limit = 1;
    batch.push_back(std::move(r));
  }
  for (std::uint64_t i = 5; i <= 10; ++i)  // no group: only the total cap applies
    batch.push_back(make_request(i, server.url("/free"), "POST", std::to_string(i)));
  t.submit(std::move(batch));
  EXPECT_EQ(t.in_flight(), 10u);
  ASSERT_TRUE(c.wait(10, 20s));
  for (std::uint64_t i = 1; i <= 10; ++i) EXPECT_EQ(c.get(i).status, 200) << i;
  const auto one = server.requests("/one");
  ASSERT_EQ(one.size(), 4u);
  for (std::size_t i = 0; i < one.size(); ++i) {
    EXPECT_EQ(one[i].body, std::to_string(i + 1));  // in order
    if (i > 0) {
      EXPECT_GE(one[i].arrived - one[i - 1].arrived, 140ms) << i;
    }
  }
  // 10 requests of 150 ms, 3 at a time: at least 4 waves, never more than 3 connections.
  const auto all = server.requests();
  auto first = all.front().arrived, last = all.front().arrived;
  for (const auto& r : all) {
    first = std::min(first, r.arrived);
    last = std::max(last, r.arrived);
  }
  EXPECT_GE(last - first, 3 * 140ms);
  EXPECT_LE(server.connections_accepted(), 3u);
}

TEST(transport, cancel_waiting_cancels_only_what_has_not_started) {
  test_server server;
  server.set_default(response::slow(300ms));
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  std::vector<http_request> batch;
  for (std::uint64_t i = 1; i <= 3; ++i) {
    auto r = make_request(i, server.url("/g"), "POST", "x");
    r.group = 9;
    r.group_limit = 1;
    batch.push_back(std::move(r));
  }
  auto other = make_request(4, server.url("/other"), "POST", "y");
  other.group = 10;
  other.group_limit = 1;
  batch.push_back(std::move(other));
  t.submit(std::move(batch));
  ASSERT_TRUE(server.wait_for_requests("/g", 1, 5s));
  t.cancel_waiting(9);
  EXPECT_EQ(c.get(2).kind, error_kind::cancelled);
  EXPECT_EQ(c.get(3).kind, error_kind::cancelled);
  EXPECT_EQ(c.get(1).status, 200);  // was running: goes on
  EXPECT_EQ(c.get(4).status, 200);  // another group
  EXPECT_EQ(server.request_count("/g"), 1u);
  EXPECT_EQ(t.in_flight(), 0u);
}

TEST(transport, reports_statuses_and_retry_after) {
  test_server server;
  server.respond_always("/ok", response::of(202, "fine"));
  server.respond_always("/bad", response::of(400, "nope"));
  server.respond_always("/gone", response::of(410));
  server.respond_always("/err", response::of(503));
  server.respond_always("/busy", response::of(429, "", {{"Retry-After", "120"}}));
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  t.submit(make_request(1, server.url("/ok")));
  t.submit(make_request(2, server.url("/bad")));
  t.submit(make_request(3, server.url("/gone")));
  t.submit(make_request(4, server.url("/err")));
  t.submit(make_request(5, server.url("/busy")));
  ASSERT_TRUE(c.wait(5));
  EXPECT_EQ(c.get(1).status, 202);
  EXPECT_EQ(c.get(1).body_head, "fine");
  EXPECT_EQ(c.get(2).status, 400);
  EXPECT_EQ(c.get(2).body_head, "nope");
  EXPECT_EQ(c.get(3).status, 410);
  EXPECT_EQ(c.get(4).status, 503);
  EXPECT_EQ(c.get(4).retry_after, std::nullopt);
  EXPECT_EQ(c.get(5).status, 429);
  EXPECT_EQ(c.get(5).retry_after, "120");
  for (std::uint64_t i = 1; i <= 5; ++i) EXPECT_EQ(c.get(i).kind, error_kind::none);
}

TEST(transport, redirect_is_not_followed) {
  test_server server;
  server.respond_always("/from", response::of(302, "", {{"Location", "/to"}}));
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  t.submit(make_request(1, server.url("/from")));
  auto r = c.get(1);
  EXPECT_EQ(r.kind, error_kind::none);
  EXPECT_EQ(r.status, 302);
  EXPECT_EQ(server.request_count("/to"), 0u);
  EXPECT_EQ(server.request_count(), 1u);
}

TEST(transport, slow_server_times_out) {
  test_server server;
  server.respond_always("/slow", response::slow(3s));
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  auto req = make_request(1, server.url("/slow"));
  req.timeout = 300ms;
  auto start = std::chrono::steady_clock::now();
  t.submit(req);
  auto r = c.get(1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_EQ(r.kind, error_kind::timeout) << r.error;
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.code, std::error_code(CURLE_OPERATION_TIMEDOUT, hookline::detail::curl_category()));
  EXPECT_FALSE(r.error.empty());
}

TEST(transport, dropped_connection_is_a_network_error) {
  test_server server;
  server.respond_always("/drop", response::dropped());
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  t.submit(make_request(1, server.url("/drop"), "POST", "x"));
  auto r = c.get(1);
  EXPECT_EQ(r.kind, error_kind::network) << r.error;
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.code.category(), hookline::detail::curl_category());
}

TEST(transport, refused_port_is_a_network_error) {
  auto port = closed_port();
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  t.submit(make_request(1, "http://127.0.0.1:" + std::to_string(port) + "/x"));
  auto r = c.get(1);
  EXPECT_EQ(r.kind, error_kind::network) << r.error;
  EXPECT_EQ(r.code, std::error_code(CURLE_COULDNT_CONNECT, hookline::detail::curl_category()));
}

TEST(transport, keep_alive_reuses_one_connection) {
  test_server server;
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  for (std::uint64_t i = 1; i <= 20; ++i) {
    t.submit(make_request(i, server.url("/ka"), "POST", "body"));
    ASSERT_TRUE(c.wait(i));
  }
  EXPECT_EQ(server.request_count(), 20u);
  EXPECT_EQ(server.connections_accepted(), 1u);
  EXPECT_EQ(t.connections_opened(), 1u);
}

TEST(transport, many_concurrent_requests_complete) {
  test_server server;
  server.set_default(response::slow(50ms, 200));
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  constexpr std::uint64_t n = 200;
  for (std::uint64_t i = 1; i <= n; ++i)
    t.submit(make_request(i, server.url("/many"), "POST", "b"));
  ASSERT_TRUE(c.wait(n, 20s));
  for (auto& [token, r] : c.all()) EXPECT_EQ(r.status, 200) << token << " " << r.error;
  EXPECT_EQ(server.request_count(), n);
  EXPECT_EQ(t.in_flight(), 0u);
}

TEST(transport, request_length_counts_head_and_body) {
  test_server server;
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  t.submit(make_request(1, server.url("/small"), "POST", std::string(10, 'a')));
  t.submit(make_request(2, server.url("/large"), "POST", std::string(300'000, 'a')));
  ASSERT_TRUE(c.wait(2));
  auto small = c.get(1).request_length;
  auto large = c.get(2).request_length;
  EXPECT_GT(small, 10u + 40u);
  EXPECT_LT(small, 10u + 400u);
  EXPECT_GT(large, 300'000u + 40u);
  EXPECT_LT(large, 300'000u + 400u);
  EXPECT_EQ(server.requests("/large").at(0).body.size(), 300'000u);
}

TEST(transport, body_is_truncated_but_fully_counted) {
  test_server server;
  server.set_default(response::of(200, std::string(100'000, 'z')));
  auto options = local_options();
  options.max_response_bytes = 100;
  collector c;
  transport t(options, c.callback(), nullptr);
  t.submit(make_request(1, server.url("/big")));
  auto r = c.get(1);
  EXPECT_EQ(r.body_head, std::string(100, 'z'));
  EXPECT_EQ(r.response_length, 100'000u);
}

TEST(transport, guard_refuses_loopback_by_default) {
  test_server server;
  collector c;
  transport t(transport_options{}, c.callback(), nullptr);
  t.submit(make_request(1, server.url("/ssrf")));
  auto r = c.get(1);
  EXPECT_EQ(r.kind, error_kind::refused);
  EXPECT_NE(r.error.find("127.0.0.1"), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("loopback"), std::string::npos) << r.error;
  EXPECT_EQ(server.connections_accepted(), 0u);
  EXPECT_EQ(t.connections_opened(), 0u);
}

TEST(transport, guard_checks_resolved_names_too) {
  // "localhost" resolves to loopback: the check happens on the address, not the name.
  test_server server;
  collector c;
  transport t(transport_options{}, c.callback(), nullptr);
  t.submit(make_request(1, "http://localhost:" + std::to_string(server.port()) + "/x"));
  auto r = c.get(1);
  EXPECT_EQ(r.kind, error_kind::refused) << r.error;
  EXPECT_NE(r.error.find("refused: loopback"), std::string::npos) << r.error;
  EXPECT_EQ(server.connections_accepted(), 0u);
}

TEST(transport, allow_list_lets_loopback_through) {
  test_server server;
  transport_options o;
  o.allowed_cidrs = {"127.0.0.0/8"};
  collector c;
  transport t(o, c.callback(), nullptr);
  t.submit(make_request(1, server.url("/allowed")));
  auto r = c.get(1);
  EXPECT_EQ(r.kind, error_kind::none) << r.error;
  EXPECT_EQ(r.status, 200);
}

// Through a proxy the request goes to the proxy with the absolute URL; the proxy's own address
// is the operator's choice and is not checked (here it is on loopback with the guard on).
TEST(transport, proxy_receives_the_absolute_url_and_the_whole_request) {
  test_server proxy;
  proxy.set_default(response::of(202));
  transport_options o;
  o.proxy = proxy.url();
  o.user_agent = "tester/1.0";
  collector c;
  transport t(o, c.callback(), nullptr);
  auto req = make_request(1, "http://93.184.215.14:8080/hook?x=1", "POST", R"({"a":1})");
  req.headers = {"Content-Type: application/json", "webhook-id: msg_proxy"};
  t.submit(req);
  auto r = c.get(1);
  EXPECT_EQ(r.kind, error_kind::none) << r.error;
  EXPECT_EQ(r.status, 202);
  ASSERT_EQ(proxy.request_count(), 1u);
  const auto got = proxy.requests().front();
  EXPECT_EQ(got.method, "POST");
  EXPECT_EQ(got.target, "http://93.184.215.14:8080/hook?x=1");
  EXPECT_EQ(got.header("Host"), "93.184.215.14:8080");
  EXPECT_EQ(got.header("webhook-id"), "msg_proxy");
  EXPECT_EQ(got.header("User-Agent"), "tester/1.0");
  EXPECT_EQ(got.body, R"({"a":1})");
}

// With a proxy the connect-time guard sees only the proxy, so an IP literal in a refused range is
// refused before anything is sent, in every spelling libcurl accepts; host names go to the proxy.
TEST(transport, proxy_still_refuses_ip_literals_in_refused_ranges) {
  test_server proxy;
  transport_options o;
  o.proxy = proxy.url();
  collector c;
  transport t(o, c.callback(), nullptr);
  const std::vector<std::string> refused = {"http://10.1.2.3/x", "http://[::1]:9/x",
                                            "http://[::ffff:192.168.0.1]/x", "http://2130706433/x",
                                            "http://0x7f.1/x"};
  for (std::size_t i = 0; i < refused.size(); ++i) t.submit(make_request(i + 1, refused[i]));
  t.submit(make_request(100, "http://hooks.example.invalid/x"));
  for (std::size_t i = 0; i < refused.size(); ++i) {
    auto r = c.get(i + 1);
    EXPECT_EQ(r.kind, error_kind::refused) << refused[i] << ": " << r.error;
  }
  EXPECT_EQ(c.get(100).status, 200);
  ASSERT_EQ(proxy.request_count(), 1u);
  EXPECT_EQ(proxy.requests().front().target, "http://hooks.example.invalid/x");
}

// Only the option configures a proxy: http_proxy is not picked up without it, and no_proxy does
// not send a request around the configured proxy (where the guard would not see it).
TEST(transport, proxy_environment_variables_are_ignored) {
  struct env_var {
    std::string name;
    env_var(std::string n, const std::string& value) : name(std::move(n)) {
      ::setenv(name.c_str(), value.c_str(), 1);
    }
    ~env_var() { ::unsetenv(name.c_str()); }
  };
  test_server direct, env_proxy, proxy;
  {
    env_var a("http_proxy", env_proxy.url()), b("HTTP_PROXY", env_proxy.url()),
        c2("ALL_PROXY", env_proxy.url());
    collector c;
    transport t(local_options(), c.callback(), nullptr);
    t.submit(make_request(1, direct.url("/direct")));
    EXPECT_EQ(c.get(1).status, 200);
  }
  EXPECT_EQ(direct.request_count(), 1u);
  EXPECT_EQ(env_proxy.request_count(), 0u);
  {
    env_var a("no_proxy", "93.184.215.15"), b("NO_PROXY", "93.184.215.15");
    transport_options o;
    o.proxy = proxy.url();
    collector c;
    transport t(o, c.callback(), nullptr);
    auto req = make_request(2, "http://93.184.215.15/hook");
    req.connect_timeout = 3s;  // only the broken case connects anywhere else
    t.submit(req);
    auto r = c.get(2);
    EXPECT_EQ(r.status, 200) << r.error;
  }
  ASSERT_EQ(proxy.request_count(), 1u);
  EXPECT_EQ(proxy.requests().front().target, "http://93.184.215.15/hook");
}

TEST(transport, malformed_cidr_throws_naming_it) {
  transport_options o;
  o.allowed_cidrs = {"10.0.0.0/8", "10.0.0.0/33"};
  collector c;
  try {
    transport t(o, c.callback(), nullptr);
    FAIL() << "expected hookline::error";
  } catch (const hookline::error& e) {
    EXPECT_NE(std::string(e.what()).find("10.0.0.0/33"), std::string::npos) << e.what();
  }
}

TEST(transport, invalid_requests_fail_without_network) {
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  t.submit(make_request(1, "ftp://127.0.0.1/file"));
  t.submit(make_request(2, "http://svc:P@ssw0rd!@exa mple.com/in?api_key=TOPSECRET"));
  t.submit(make_request(3, "http://127.0.0.1:1/", "BAD METHOD"));
  auto header_injection = make_request(4, "http://127.0.0.1:1/");
  header_injection.headers = {"X-A: 1\r\nX-B: 2"};
  t.submit(header_injection);
  ASSERT_TRUE(c.wait(4));
  for (std::uint64_t i = 1; i <= 4; ++i) {
    EXPECT_EQ(c.get(i).kind, error_kind::invalid) << i << " " << c.get(i).error;
  }
  EXPECT_NE(c.get(1).error.find("only http and https"), std::string::npos) << c.get(1).error;
  // The error goes to logs and the attempt log: never the URL's password or query.
  for (std::uint64_t i = 1; i <= 2; ++i) {
    EXPECT_EQ(c.get(i).error.find("ssw0rd"), std::string::npos) << c.get(i).error;
    EXPECT_EQ(c.get(i).error.find("TOPSECRET"), std::string::npos) << c.get(i).error;
  }
  EXPECT_EQ(t.connections_opened(), 0u);
}

TEST(transport, https_to_plain_server_is_a_tls_error) {
  test_server server;
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  t.submit(make_request(1, "https://127.0.0.1:" + std::to_string(server.port()) + "/tls"));
  auto r = c.get(1);
  EXPECT_EQ(r.kind, error_kind::tls) << r.error;
}

TEST(transport, missing_client_certificate_is_invalid) {
  test_server server;
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  auto req = make_request(1, "https://127.0.0.1:" + std::to_string(server.port()) + "/mtls");
  req.client_cert = "/nonexistent/client.pem";
  req.client_key = "/nonexistent/client.key";
  t.submit(req);
  auto r = c.get(1);
  EXPECT_EQ(r.kind, error_kind::invalid) << r.error;
}

TEST(transport, stop_cancels_requests_in_flight) {
  test_server server;
  server.set_default(response::slow(10s));
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  for (std::uint64_t i = 1; i <= 5; ++i) t.submit(make_request(i, server.url("/hang")));
  ASSERT_TRUE(server.wait_for_requests(5, 5s));
  auto start = std::chrono::steady_clock::now();
  t.stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  ASSERT_EQ(c.size(), 5u);
  for (auto& [token, r] : c.all()) EXPECT_EQ(r.kind, error_kind::cancelled) << token;
  // After stop, a submission completes at once as cancelled.
  t.submit(make_request(6, server.url("/late")));
  EXPECT_EQ(c.get(6).kind, error_kind::cancelled);
  EXPECT_EQ(t.in_flight(), 0u);
}

TEST(transport, destructor_cancels_queued_and_running) {
  test_server server;
  server.set_default(response::slow(10s));
  collector c;
  {
    transport t(local_options(), c.callback(), nullptr);
    for (std::uint64_t i = 1; i <= 50; ++i) t.submit(make_request(i, server.url("/d")));
  }
  EXPECT_EQ(c.size(), 50u);
  for (auto& [token, r] : c.all()) EXPECT_EQ(r.kind, error_kind::cancelled) << token;
}

TEST(transport, callback_may_submit_more_work) {
  test_server server;
  std::mutex m;
  std::condition_variable cv;
  int completed = 0;
  transport* self = nullptr;
  std::string url = server.url("/chain");
  transport t(
      local_options(),
      [&](http_response&& r) {
        if (r.token < 10) self->submit(make_request(r.token + 1, url));
        std::lock_guard lock(m);
        ++completed;
        cv.notify_all();
      },
      nullptr);
  self = &t;
  t.submit(make_request(1, url));
  std::unique_lock lock(m);
  ASSERT_TRUE(cv.wait_for(lock, 10s, [&] { return completed == 10; }));
  EXPECT_EQ(server.request_count(), 10u);
}

// Scale: many slow endpoints at once must all complete in about one server delay, not queue up
// behind each other. HOOKLINE_TRANSPORT_SCALE_N overrides the count for a manual run (the
// process needs about two descriptors per request, client and server side).
TEST(transport, thousands_of_slow_requests_complete_together) {
  std::size_t n = 2000;
  if (const char* env = std::getenv("HOOKLINE_TRANSPORT_SCALE_N")) n = std::stoul(env);
  test_server server;
  server.set_default(response::slow(1s, 200));
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  auto start = std::chrono::steady_clock::now();
  for (std::uint64_t i = 1; i <= n; ++i) {
    auto req = make_request(i, server.url("/scale"), "POST", R"({"n":1})");
    req.timeout = 30s;
    t.submit(std::move(req));
  }
  ASSERT_TRUE(c.wait(n, 60s)) << c.size() << " of " << n;
  auto elapsed = std::chrono::steady_clock::now() - start;
  std::size_t ok = 0;
  for (auto& [token, r] : c.all()) ok += r.status == 200 ? 1 : 0;
  EXPECT_EQ(ok, n);
  // Serially this would take n seconds; concurrently about one.
  EXPECT_LT(elapsed, 8s);
  RecordProperty(
      "elapsed_ms",
      static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()));
  std::printf("scale: %zu slow requests (1 s each) completed in %lld ms, %llu connections\n", n,
              static_cast<long long>(
                  std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()),
              static_cast<unsigned long long>(t.connections_opened()));
}

// ---------------------------------------------------------------------------------------------
// TLS and mTLS against `openssl s_server` with certificates made for the test run.

namespace {

class tls_server {
 public:
  // A CA, a server certificate for 127.0.0.1 and a client certificate, in a fresh directory.
  tls_server() {
    dir_ = std::filesystem::temp_directory_path() /
           ("hookline-tls-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ / "server.ext") << "subjectAltName=IP:127.0.0.1\n";
    std::ofstream(dir_ / "client.ext") << "extendedKeyUsage=clientAuth\n";
    const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    run("openssl req -x509 " + ec + " -keyout ca.key -out ca.pem -days 2 -subj /CN=hookline-ca");
    for (std::string who : {"server", "client"}) {
      run("openssl req " + ec + " -keyout " + who + ".key -out " + who + ".csr -subj /CN=" + who);
      run("openssl x509 -req -in " + who + ".csr -CA ca.pem -CAkey ca.key -CAcreateserial -out " +
          who + ".pem -days 2 -extfile " + who + ".ext");
    }
    port_ = closed_port();
    // TLS 1.2 so that a refused client certificate fails the handshake itself.
    std::vector<std::string> args = {"openssl",
                                     "s_server",
                                     "-quiet",
                                     "-www",
                                     "-tls1_2",
                                     "-accept",
                                     "127.0.0.1:" + std::to_string(port_),
                                     "-cert",
                                     path("server.pem"),
                                     "-key",
                                     path("server.key"),
                                     "-CAfile",
                                     path("ca.pem"),
                                     "-Verify",
                                     "1"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    if (posix_spawnp(&pid_, "openssl", &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
    wait_until_listening();
  }
  ~tls_server() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string url() const { return "https://127.0.0.1:" + std::to_string(port_) + "/"; }
  std::string path(const char* file) const { return (dir_ / file).string(); }
  bool running() const { return pid_ > 0 && listening_; }

 private:
  void run(const std::string& command) {
    auto full = "cd '" + dir_.string() + "' && " + command + " >/dev/null 2>&1";
    if (std::system(full.c_str()) != 0) ADD_FAILURE() << "failed: " << command;
  }
  void wait_until_listening() {
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(port_);
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
      ::close(fd);
      if (ok) {
        listening_ = true;
        return;
      }
      std::this_thread::sleep_for(20ms);
    }
  }

  static inline int counter_ = 0;
  std::filesystem::path dir_;
  std::uint16_t port_ = 0;
  pid_t pid_ = -1;
  bool listening_ = false;
};

}  // namespace

TEST(transport_tls, mutual_tls_and_verification) {
  tls_server server;
  ASSERT_TRUE(server.running());
  auto with_ca = local_options();
  with_ca.ca_file = server.path("ca.pem");
  auto unverified = local_options();
  unverified.verify_tls = false;

  auto mtls = [&](std::uint64_t token) {
    auto req = make_request(token, server.url(), "GET");
    req.client_cert = server.path("client.pem");
    req.client_key = server.path("client.key");
    return req;
  };
  collector c;
  {
    transport verified(with_ca, c.callback(), nullptr);
    verified.submit(mtls(1));                               // trusted CA, client certificate
    verified.submit(make_request(2, server.url(), "GET"));  // no client certificate
    auto wrong_key = mtls(3);
    wrong_key.client_key = server.path("server.key");  // key does not match the cert
    verified.submit(wrong_key);
    ASSERT_TRUE(c.wait(3, 20s));
  }
  {
    transport default_trust(local_options(), c.callback(), nullptr);
    default_trust.submit(mtls(4));  // the test CA is not in the system store
    ASSERT_TRUE(c.wait(4, 20s));
  }
  {
    transport insecure(unverified, c.callback(), nullptr);
    insecure.submit(mtls(5));
    ASSERT_TRUE(c.wait(5, 20s));
  }
  EXPECT_EQ(c.get(1).kind, error_kind::none) << c.get(1).error;
  EXPECT_EQ(c.get(1).status, 200);
  EXPECT_EQ(c.get(2).kind, error_kind::tls) << c.get(2).error;
  EXPECT_EQ(c.get(3).kind, error_kind::invalid) << c.get(3).error;
  EXPECT_EQ(c.get(4).kind, error_kind::tls) << c.get(4).error;
  EXPECT_EQ(c.get(4).code,
            std::error_code(CURLE_PEER_FAILED_VERIFICATION, hookline::detail::curl_category()));
  EXPECT_EQ(c.get(5).kind, error_kind::none) << c.get(5).error;
  EXPECT_EQ(c.get(5).status, 200);
}

TEST(transport_tls, unreadable_ca_file_throws) {
  auto o = local_options();
  o.ca_file = "/nonexistent/ca.pem";
  collector c;
  EXPECT_THROW(transport(o, c.callback(), nullptr), hookline::error);
}

TEST(transport, poll_engine_delivers_reuses_and_cancels) {
  test_server server;
  server.respond_always("/hang", response::slow(10s));
  auto o = local_options();
  o.engine = hookline::detail::loop_engine::poll;
  collector c;
  transport t(o, c.callback(), nullptr);
  for (std::uint64_t i = 1; i <= 5; ++i) {
    t.submit(make_request(i, server.url("/p"), "POST", "body"));
    ASSERT_TRUE(c.wait(i));
  }
  for (std::uint64_t i = 1; i <= 5; ++i) EXPECT_EQ(c.get(i).status, 200);
  EXPECT_EQ(server.requests("/p").at(4).body, "body");
  EXPECT_EQ(t.connections_opened(), 1u);
  t.submit(make_request(6, server.url("/hang")));
  ASSERT_TRUE(server.wait_for_requests("/hang", 1, 5s));
  t.stop();
  EXPECT_EQ(c.get(6).kind, error_kind::cancelled);
}

TEST(transport, keep_alive_holds_per_endpoint_across_endpoints) {
  test_server a;
  test_server b;
  collector c;
  transport t(local_options(), c.callback(), nullptr);
  for (std::uint64_t i = 1; i <= 20; ++i) {
    t.submit(make_request(i, (i % 2 ? a : b).url("/ab"), "POST", "x"));
    ASSERT_TRUE(c.wait(i));
  }
  EXPECT_EQ(a.request_count(), 10u);
  EXPECT_EQ(b.request_count(), 10u);
  EXPECT_EQ(a.connections_accepted(), 1u);
  EXPECT_EQ(b.connections_accepted(), 1u);
  EXPECT_EQ(t.connections_opened(), 2u);
}

TEST(transport, stop_from_the_callback_cancels_the_rest) {
  test_server server;
  server.respond_always("/slow", response::slow(10s));
  collector c;
  auto record = c.callback();
  transport* self = nullptr;
  transport t(
      local_options(),
      [&](http_response&& r) {
        bool first = r.token == 1;
        record(std::move(r));
        if (first) self->stop();
      },
      nullptr);
  self = &t;
  for (std::uint64_t i = 2; i <= 4; ++i) t.submit(make_request(i, server.url("/slow")));
  ASSERT_TRUE(server.wait_for_requests("/slow", 3, 5s));
  t.submit(make_request(1, server.url("/fast")));
  ASSERT_TRUE(c.wait(4, 5s));
  EXPECT_EQ(c.get(1).status, 200);
  for (std::uint64_t i = 2; i <= 4; ++i) EXPECT_EQ(c.get(i).kind, error_kind::cancelled) << i;
}
