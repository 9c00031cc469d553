#pragma once
// Loopback HTTP/1.1 server for tests. Thread safety: every member function is thread safe.
// Handlers run on the server's own thread; they must not block (use response::delay to answer
// slowly) and may call the server's member functions.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hookline::test {

using header_list = std::vector<std::pair<std::string, std::string>>;

/// One request as the server received it.
struct recorded_request {
  std::string method;
  std::string target;                             ///< as sent: path plus query
  std::string path;                               ///< target without the query
  std::string query;                              ///< without the '?'
  header_list headers;                            ///< in arrival order, names as sent
  std::string body;                               ///< decoded (Content-Length or chunked)
  std::chrono::steady_clock::time_point arrived;  ///< when the request was complete
  std::uint64_t connection = 0;  ///< 1-based ordinal of the TCP connection that carried it

  /// The first header with this name (case-insensitive).
  std::optional<std::string> header(std::string_view name) const;
  bool has_header(std::string_view name) const { return header(name).has_value(); }
};

/// What the server does with one request.
struct response {
  int status = 200;
  std::string body;
  header_list headers;  ///< Content-Length is added unless given
  /// Answer (or drop) this long after the request arrived, without blocking the server.
  std::chrono::milliseconds delay{0};
  /// Close the TCP connection without sending anything (the client sees an empty reply).
  bool drop = false;
  /// Send the answer with "Connection: close" and close the connection after it.
  bool close = false;

  static response of(int status, std::string body = {}, header_list headers = {});
  /// 200 (or `status`) sent after `delay`.
  static response slow(std::chrono::milliseconds delay, int status = 200);
  /// Closes the connection without answering, optionally after `delay`.
  static response dropped(std::chrono::milliseconds delay = std::chrono::milliseconds{0});
};

/// A single-threaded epoll HTTP/1.1 server on 127.0.0.1, port chosen by the kernel. Keeps
/// connections alive, answers many thousands of concurrent (slow) connections, counts accepted
/// TCP connections and records every request. Started in the constructor, stopped in the
/// destructor.
///
/// Which answer a request gets, first match wins: the next one-shot response queued for its path
/// (respond/script), the path's persistent handler or response (on/respond_always), the default
/// handler (set_handler), the default response (set_default; initially 200 with an empty body).
///
/// Note: when a reused keep-alive connection is dropped, libcurl retries the request once on a
/// fresh connection, so a drop can be seen twice.
class test_server {
 public:
  using handler = std::function<response(const recorded_request&)>;

  test_server();
  ~test_server();
  test_server(const test_server&) = delete;
  test_server& operator=(const test_server&) = delete;

  std::uint16_t port() const;
  /// "http://127.0.0.1:PORT" + path; `path` should start with '/'.
  std::string url(std::string_view path = "/") const;

  void set_default(response r);
  void set_handler(handler h);
  /// Queues a one-shot response for `path` (FIFO).
  void respond(const std::string& path, response r);
  /// Queues one-shot responses for `path` in order, e.g. {500, 500} then the fallback.
  void script(const std::string& path, std::vector<response> rs);
  /// Answers every request to `path` (after its one-shots) with `r`.
  void respond_always(const std::string& path, response r);
  /// Answers every request to `path` (after its one-shots) with `h`'s result.
  void on(const std::string& path, handler h);

  std::vector<recorded_request> requests() const;
  std::vector<recorded_request> requests(std::string_view path) const;
  std::size_t request_count() const;
  std::size_t request_count(std::string_view path) const;
  /// Waits until at least `n` requests arrived in total; false on timeout.
  bool wait_for_requests(std::size_t n,
                         std::chrono::milliseconds timeout = std::chrono::seconds{10}) const;
  /// Waits until at least `n` requests arrived for `path`; false on timeout.
  bool wait_for_requests(std::string_view path, std::size_t n,
                         std::chrono::milliseconds timeout = std::chrono::seconds{10}) const;

  /// TCP connections accepted so far.
  std::uint64_t connections_accepted() const;
  /// TCP connections open right now.
  std::size_t open_connections() const;

  /// Forgets recorded requests, queued and persistent responses and handlers (counters stay).
  void reset();

 private:
  class impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace hookline::test
