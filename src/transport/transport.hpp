#pragma once
// Private libcurl engine. Thread safety: submit(), in_flight(), connections_opened() and stop()
// are thread safe; the completion callback runs on the transport's own thread (the only thread
// that touches CURLM and the easy handles), must not block for long, may call submit() and
// stop(), and must not destroy the transport.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include <spdlog/logger.h>

namespace hookline::detail {

struct http_request {
  std::uint64_t token = 0;  ///< the caller's handle, echoed in the response
  std::string url;
  std::string method = "POST";
  std::string body;                  ///< not sent for GET
  std::vector<std::string> headers;  ///< "Name: value", complete (no defaults added but UA)
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds timeout{15000};
  std::string client_cert;  ///< PEM file, optional (mTLS)
  std::string client_key;
  /// With group_limit > 0, at most group_limit requests of the same group run at once; the rest
  /// wait in the transport, in order, and start as soon as one of their group finishes (without
  /// a round trip through the caller).
  std::uint64_t group = 0;
  std::size_t group_limit = 0;
};

enum class error_kind {
  none,      ///< an HTTP response was received
  network,   ///< DNS, connect, reset, dropped connection
  timeout,   ///< connect or total timeout
  refused,   ///< the SSRF guard refused the address (permanent)
  tls,       ///< certificate or handshake failure
  invalid,   ///< the request itself is unusable (bad URL, bad cert file) (permanent)
  cancelled  ///< the transport stopped before the request finished
};

struct http_response {
  std::uint64_t token = 0;
  int status = 0;  ///< 0 when no response was received
  error_kind kind = error_kind::none;
  std::error_code code;   ///< CURLcode in curl_category() when kind != none and curl failed
  std::string error;      ///< human-readable; names the refused address for `refused`
  std::string body_head;  ///< first max_response_bytes of the body
  std::size_t response_length = 0;
  std::size_t request_length = 0;
  std::optional<std::string> retry_after;  ///< raw Retry-After header value
  std::optional<std::string> location;     ///< raw Location header value (a redirect's target)
  std::chrono::system_clock::time_point started_at{};
  std::chrono::microseconds duration{0};
  /// The request itself, handed back once libcurl is done with it so that the caller can reuse
  /// its buffers for the next one (no allocation per request, none freed on the transport's
  /// thread). Empty for a request that was cancelled (before it started, or in flight when the
  /// transport stopped).
  http_request request;
};

/// How the loop waits. `epoll` (curl_multi_socket_action + epoll) works per ready socket and
/// spreads endpoints over 64 multi handles (libcurl 7.88 walks a multi's whole connection cache
/// on every completion); it holds thousands of slow endpoints. `poll` (curl_multi_perform +
/// curl_multi_poll, one multi handle) visits every transfer on each wake-up: fine for a few
/// hundred, it falls to about a quarter of the ideal rate at 8,000 slow endpoints.
/// bench/transport_scale_load compares them.
enum class loop_engine { epoll, poll };

struct transport_options {
  bool allow_private_networks = false;
  std::vector<std::string> allowed_cidrs;  ///< throws hookline::error on a malformed CIDR
  bool verify_tls = true;
  std::string ca_file;
  /// Proxy URL; empty means none (environment variables such as http_proxy are ignored).
  /// Through a proxy the connect-time guard sees only the proxy's address, so the guard then
  /// checks IP-literal URLs before sending and leaves host names to the proxy's own policy.
  std::string proxy;
  std::size_t max_response_bytes = 20000;
  /// Default "hookline/<version>"; a User-Agent header overrides it. Throws hookline::error when
  /// it holds CR, LF or NUL.
  std::string user_agent;
  /// CURLMOPT_MAXCONNECTS (idle connection cache) per multi handle; 0 = libcurl default.
  std::size_t max_connections = 0;
  loop_engine engine = loop_engine::epoll;
  /// At most this many requests run at once (0: no cap); the rest wait in the transport, in
  /// order. A caller that submits a little more than it lets run keeps every slot busy while it
  /// prepares the next requests.
  std::size_t max_running = 0;
};

/// The std::error_category for CURLcode values.
const std::error_category& curl_category();

class transport {
 public:
  using completion = std::function<void(http_response&&)>;
  /// Receives every response that completed in one turn of the loop (one call, one lock on the
  /// caller's side); may move from the vector.
  using batch_completion = std::function<void(std::vector<http_response>&&)>;
  transport(transport_options options, completion on_complete,
            std::shared_ptr<spdlog::logger> logger);
  transport(transport_options options, batch_completion on_complete,
            std::shared_ptr<spdlog::logger> logger);
  /// Cancels everything still in flight (each completes with error_kind::cancelled) and joins.
  ~transport();
  transport(const transport&) = delete;
  transport& operator=(const transport&) = delete;

  /// Queues a request and wakes the loop. Never blocks on the network. After stop() the request
  /// completes at once, on the calling thread, with error_kind::cancelled.
  void submit(http_request req);
  /// Queues every request of `batch` with one lock and at most one wake-up; leaves it empty.
  void submit(std::vector<http_request>&& batch);
  /// Requests submitted and not yet completed (queued, waiting for a slot, or running).
  std::size_t in_flight() const;
  /// New TCP connections opened so far (for keep-alive assertions and metrics).
  std::uint64_t connections_opened() const;
  /// Requests of `group` that have not started yet complete with error_kind::cancelled (soon,
  /// on the transport's thread); running ones go on.
  void cancel_waiting(std::uint64_t group);
  /// Stops the loop; requests still queued or running complete with error_kind::cancelled
  /// before stop() returns (when called from the completion callback: after the callback).
  void stop();

 private:
  class impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace hookline::detail
