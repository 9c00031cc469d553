#include "transport/transport.hpp"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "hookline/error.hpp"
#include "transport/address_guard.hpp"

#ifndef HOOKLINE_VERSION
#define HOOKLINE_VERSION "0"
#endif

namespace hookline::detail {

namespace {

class curl_error_category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "curl"; }
  std::string message(int code) const override {
    return curl_easy_strerror(static_cast<CURLcode>(code));
  }
};

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
      throw hookline::error("transport: curl_global_init failed");
    }
  });
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

bool starts_with_header(std::string_view line, std::string_view name) {
  return line.size() > name.size() && line[name.size()] == ':' &&
         iequals(line.substr(0, name.size()), name);
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return std::isalnum(u) || std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
  });
}

// "Name: value" with a name and no CR, LF or NUL anywhere (header injection).
bool valid_header_line(const std::string& line) {
  if (line.empty() || line.front() == ':') return false;
  // strcspn stops at a NUL as well, so one pass finds CR, LF and NUL.
  if (std::strcspn(line.c_str(), "\r\n") != line.size()) return false;
  // "Name;" is libcurl's way to send a header with an empty value.
  return std::memchr(line.data(), ':', line.size()) != nullptr ||
         (line.size() > 1 && line.back() == ';');
}

bool valid_header_lines(const std::vector<std::string>& headers) {
  return std::all_of(headers.begin(), headers.end(), valid_header_line);
}

error_kind classify(CURLcode code) {
  switch (code) {
    case CURLE_OK:
      return error_kind::none;
    case CURLE_OPERATION_TIMEDOUT:
      return error_kind::timeout;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_NOT_BUILT_IN:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
      return error_kind::invalid;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_USE_SSL_FAILED:
      return error_kind::tls;
    default:
      return error_kind::network;
  }
}

// One libcurl multi handle with its connection cache. The epoll engine spreads endpoints over
// several: libcurl 7.x walks the whole connection cache on every curl_multi_remove_handle, so
// one cache holding thousands of connections makes each completion cost O(connections).
struct shard {
  CURLM* multi = nullptr;
  std::uint32_t index = 0;
  int epoll_fd = -1;
  std::optional<std::chrono::steady_clock::time_point> timer_due;
};

// One request while the loop owns it, and the easy handle it runs on. Transfers are pooled
// with their handle: the options that never change (callbacks and the pointers to this object,
// TLS, proxy, user agent) are set once per handle, and a request of the same method and client
// certificate as the last one on the handle only sets its URL (when it changed), body and header
// list. Heap-allocated so that the pointers handed to libcurl stay put.
struct transfer {
  transfer() = default;
  transfer(const transfer&) = delete;
  transfer& operator=(const transfer&) = delete;
  ~transfer() {
    if (easy) curl_easy_cleanup(easy);
  }

  http_request req;
  http_response resp;
  CURL* easy = nullptr;
  shard* home = nullptr;                 // the multi handle it was added to
  std::vector<curl_slist> header_nodes;  // CURLOPT_HTTPHEADER, pointing into req.headers
  std::optional<std::string> refusal;    // set by the connect-time guard
  bool permitted = false;                // the guard let at least one address through
  bool guarded = true;
  std::size_t max_body = 0;
  std::chrono::steady_clock::time_point started{};
  std::atomic<std::uint64_t>* connections = nullptr;
  const address_guard* guard = nullptr;
  std::size_t index = 0;  // position in the loop's active list
  char error[CURL_ERROR_SIZE] = {};
  // What the easy handle is set up for. `configured` false: set it up again before its next use
  // (after a reset when `touched`, i.e. options were set on it before).
  bool configured = false;
  bool touched = false;
  std::string set_method, set_cert, set_key, set_url;
  long set_connect_ms = -1, set_total_ms = -1;
};

size_t on_body(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<transfer*>(user);
  auto bytes = size * n;
  t->resp.response_length += bytes;
  if (t->resp.body_head.size() < t->max_body) {
    t->resp.body_head.append(data, std::min(bytes, t->max_body - t->resp.body_head.size()));
  }
  return bytes;
}

// A redirect target is kept for the failure reason only; a longer one is cut.
constexpr std::size_t max_location = 512;

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<transfer*>(user);
  auto bytes = size * n;
  std::string_view line(data, bytes);
  // The value of header `name` on this line, without surrounding blanks.
  const auto value_of = [&](std::string_view name) {
    auto value = line.substr(name.size() + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
      value.remove_prefix(1);
    while (!value.empty() && std::isspace(static_cast<unsigned char>(value.back()))) {
      value.remove_suffix(1);
    }
    return value;
  };
  if (line.substr(0, 5) == "HTTP/") {
    // A new response head (after 1xx) replaces the last one.
    t->resp.retry_after.reset();
    t->resp.location.reset();
  } else if (starts_with_header(line, "Retry-After")) {
    t->resp.retry_after = std::string(value_of("Retry-After"));
  } else if (starts_with_header(line, "Location")) {
    t->resp.location = std::string(value_of("Location").substr(0, max_location));
  }
  return bytes;
}

// Runs at connect time for every address libcurl tries, after DNS resolution, so a name that
// re-resolves to a private address (DNS rebinding) is still caught.
curl_socket_t on_open_socket(void* user, curlsocktype purpose, curl_sockaddr* addr) {
  auto* t = static_cast<transfer*>(user);
  if (purpose == CURLSOCKTYPE_IPCXN && t->guarded) {
    if (auto refused = t->guard->check(&addr->addr, addr->addrlen)) {
      t->refusal = std::move(refused);
      return CURL_SOCKET_BAD;
    }
    t->permitted = true;
  }
  auto fd = ::socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
  if (fd >= 0) t->connections->fetch_add(1, std::memory_order_relaxed);
  return fd;
}

}  // namespace

const std::error_category& curl_category() {
  static const curl_error_category category;
  return category;
}

class transport::impl {
 public:
  impl(transport_options options, batch_completion on_complete,
       std::shared_ptr<spdlog::logger> logger)
      : options_(std::move(options)),
        guard_(options_.allow_private_networks, options_.allowed_cidrs),
        on_complete_(std::move(on_complete)),
        logger_(logger ? std::move(logger)
                       : std::make_shared<spdlog::logger>("hookline.transport")) {
    if (!on_complete_) throw hookline::error("transport: a completion callback is required");
    if (!options_.ca_file.empty() && ::access(options_.ca_file.c_str(), R_OK) != 0) {
      throw hookline::error("ca_file: cannot read \"" + options_.ca_file + "\"");
    }
    if (options_.user_agent.empty()) options_.user_agent = "hookline/" HOOKLINE_VERSION;
    if (options_.user_agent.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
      throw hookline::error("user_agent: must not contain CR, LF or NUL");
    }
    user_agent_line_ = "User-Agent: " + options_.user_agent;
    global_init();
    try {
      std::size_t count = options_.engine == loop_engine::epoll ? epoll_shards : 1;
      for (std::size_t i = 0; i < count; ++i) {
        auto sh = std::make_unique<shard>();
        sh->index = static_cast<std::uint32_t>(i);
        sh->multi = curl_multi_init();
        if (!sh->multi) throw hookline::error("transport: curl_multi_init failed");
        if (options_.max_connections > 0) {
          curl_multi_setopt(sh->multi, CURLMOPT_MAXCONNECTS,
                            static_cast<long>(options_.max_connections));
        }
        shards_.push_back(std::move(sh));
      }
      if (options_.engine == loop_engine::epoll) setup_epoll();
      thread_ = std::thread([this] { run(); });
    } catch (...) {
      release_resources();
      throw;
    }
  }

  ~impl() {
    stop();
    join();
    release_resources();
  }

  void submit(std::vector<http_request>&& batch) {
    if (batch.empty()) return;
    {
      std::lock_guard lock(mutex_);
      in_flight_.fetch_add(batch.size(), std::memory_order_relaxed);
      if (!stopping_) {
        // The loop takes the whole queue at once, so a wake is only owed when the queue was
        // empty: one eventfd write per burst, not per request (system calls are dear).
        const bool was_empty = queue_.empty();
        for (auto& req : batch) queue_.push_back(std::move(req));
        batch.clear();
        if (was_empty) wake();
        return;
      }
    }
    // Stopped: everything completes at once, on this thread.
    std::vector<http_response> cancelled;
    for (const auto& req : batch) cancelled.push_back(cancelled_response(req.token));
    batch.clear();
    in_flight_.fetch_sub(cancelled.size(), std::memory_order_relaxed);
    call_back(cancelled);
  }

  void cancel_waiting(std::uint64_t group) {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    const bool was_empty = queue_.empty() && cancel_groups_.empty();
    cancel_groups_.push_back(group);
    if (was_empty) wake();
  }

  std::size_t in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  std::uint64_t connections_opened() const { return connections_.load(std::memory_order_relaxed); }

  void stop() {
    {
      std::lock_guard lock(mutex_);
      if (!stopping_) {
        stopping_ = true;
        wake();
      }
    }
    join();
  }

 private:
  // A no-op on the loop thread itself (stop() from the completion callback).
  void join() {
    std::lock_guard lock(join_mutex_);
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  }

  void release_resources() {
    free_.clear();
    for (auto& sh : shards_) {
      if (sh->multi) curl_multi_cleanup(sh->multi);
      sh->multi = nullptr;
    }
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
    epoll_fd_ = wake_fd_ = -1;
  }

  // Called with mutex_ held, so the loop cannot be tearing down meanwhile.
  void wake() {
    if (wake_fd_ >= 0) {
      std::uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
    } else {
      curl_multi_wakeup(shards_.front()->multi);
    }
  }

  // Starts what was submitted; false once stop() was called.
  bool take_submissions() {
    std::vector<std::uint64_t> cancels;
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return false;
      incoming_.swap(queue_);
      cancels.swap(cancel_groups_);
    }
    // Admitted first: a cancel also reaches what was submitted before it.
    for (auto& req : incoming_) admit(std::move(req));
    incoming_.clear();
    for (auto group : cancels) cancel_group(group);
    start_ready();
    flush();  // cancellations and early failures go out now, not after the next wait
    return true;
  }

  // A request may start when its group has room; the global cap is applied by start_ready().
  void admit(http_request&& req) {
    if (req.group_limit == 0) {
      ready_.push_back(std::move(req));
      return;
    }
    auto& g = groups_[req.group];
    if (g.admitted < req.group_limit) {
      ++g.admitted;
      ready_.push_back(std::move(req));
    } else {
      g.blocked.push_back(std::move(req));
    }
  }

  // `req` finished (or never started): its group's next waiting request may go.
  void leave_group(const http_request& req) {
    if (req.group_limit == 0) return;
    auto it = groups_.find(req.group);
    if (it == groups_.end()) return;
    auto& g = it->second;
    --g.admitted;
    if (!g.blocked.empty()) {
      ready_.push_back(std::move(g.blocked.front()));
      g.blocked.pop_front();
      ++g.admitted;
    }
    if (g.admitted == 0 && g.blocked.empty()) groups_.erase(it);
  }

  // The group's requests that have not started complete as cancelled.
  void cancel_group(std::uint64_t group) {
    auto it = groups_.find(group);
    if (it == groups_.end()) return;
    auto& g = it->second;
    for (auto r = ready_.begin(); r != ready_.end();) {
      if (r->group_limit > 0 && r->group == group) {
        done_.push_back(cancelled_response(r->token, "cancelled before it started"));
        --g.admitted;
        r = ready_.erase(r);
      } else {
        ++r;
      }
    }
    for (auto& req : g.blocked)
      done_.push_back(cancelled_response(req.token, "cancelled before it started"));
    g.blocked.clear();
    if (g.admitted == 0) groups_.erase(it);
  }

  void start_ready() {
    while (!ready_.empty() &&
           (options_.max_running == 0 || active_.size() < options_.max_running)) {
      http_request req = std::move(ready_.front());
      ready_.pop_front();
      start(std::move(req));
    }
  }

  void run() {
    // Named so that operators can tell the network thread apart in top/perf.
    pthread_setname_np(pthread_self(), "hookline-net");
    if (options_.engine == loop_engine::epoll) {
      run_epoll();
    } else {
      run_poll();
    }
    cancel_all();
  }

  void run_poll() {
    while (take_submissions()) {
      int running = 0;
      CURLM* multi = shards_.front()->multi;
      curl_multi_perform(multi, &running);
      collect(*shards_.front());
      start_ready();  // freed slots go to waiting requests at once
      flush();
      // The timeout only bounds the wait; libcurl shortens it to its own next timer.
      curl_multi_poll(multi, nullptr, 0, 1000, nullptr);
    }
  }

  // --- epoll engine: libcurl tells us which sockets to watch and when its timer is due ---

  void setup_epoll() {
    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (epoll_fd_ < 0 || wake_fd_ < 0) {
      throw hookline::error(std::string("transport: epoll setup failed: ") + std::strerror(errno));
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = wake_key;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
    for (auto& sh : shards_) {
      sh->epoll_fd = epoll_fd_;
      curl_multi_setopt(sh->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
      curl_multi_setopt(sh->multi, CURLMOPT_SOCKETDATA, sh.get());
      curl_multi_setopt(sh->multi, CURLMOPT_TIMERFUNCTION, on_timer);
      curl_multi_setopt(sh->multi, CURLMOPT_TIMERDATA, sh.get());
    }
  }

  static int on_socket(CURL*, curl_socket_t s, int what, void* user, void*) {
    auto* sh = static_cast<shard*>(user);
    if (what == CURL_POLL_REMOVE) {
      // The descriptor may already be closed (and then left epoll by itself).
      ::epoll_ctl(sh->epoll_fd, EPOLL_CTL_DEL, s, nullptr);
      return 0;
    }
    epoll_event ev{};
    ev.data.u64 = (std::uint64_t{sh->index} << 32) | static_cast<std::uint32_t>(s);
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) ev.events |= EPOLLIN;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) ev.events |= EPOLLOUT;
    // A descriptor number can be reused after libcurl closed a socket without telling us, so
    // fall back between MOD and ADD rather than tracking registration ourselves.
    if (::epoll_ctl(sh->epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT) {
      ::epoll_ctl(sh->epoll_fd, EPOLL_CTL_ADD, s, &ev);
    }
    return 0;
  }

  static int on_timer(CURLM*, long timeout_ms, void* user) {
    auto* sh = static_cast<shard*>(user);
    if (timeout_ms < 0) {
      sh->timer_due.reset();
    } else {
      sh->timer_due = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    }
    return 0;
  }

  void run_epoll() {
    std::vector<epoll_event> events(1024);
    while (take_submissions()) {
      auto now = std::chrono::steady_clock::now();
      int timeout = 1000;
      for (auto& sh : shards_) {
        if (!sh->timer_due) continue;
        auto left = std::chrono::ceil<std::chrono::milliseconds>(*sh->timer_due - now);
        timeout = std::min(timeout, static_cast<int>(std::max<std::int64_t>(left.count(), 0)));
      }
      int n = ::epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()), timeout);
      int running = 0;
      for (int i = 0; i < n; ++i) {
        auto key = events[i].data.u64;
        if (key == wake_key) {
          std::uint64_t count = 0;
          [[maybe_unused]] auto r = ::read(wake_fd_, &count, sizeof count);
          continue;
        }
        auto& sh = *shards_[key >> 32];
        int flags = 0;
        if (events[i].events & EPOLLIN) flags |= CURL_CSELECT_IN;
        if (events[i].events & EPOLLOUT) flags |= CURL_CSELECT_OUT;
        if (events[i].events & (EPOLLERR | EPOLLHUP)) flags |= CURL_CSELECT_ERR;
        curl_multi_socket_action(sh.multi, static_cast<curl_socket_t>(key & 0xffffffffu), flags,
                                 &running);
      }
      now = std::chrono::steady_clock::now();
      for (auto& sh : shards_) {
        if (sh->timer_due && *sh->timer_due <= now) {
          sh->timer_due.reset();
          curl_multi_socket_action(sh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        }
      }
      for (auto& sh : shards_) collect(*sh);
      start_ready();
      flush();
    }
  }

  void start(http_request req) {
    auto t = take_transfer();
    t->req = std::move(req);
    t->resp = http_response{};
    t->resp.token = t->req.token;
    t->resp.started_at = std::chrono::system_clock::now();
    t->started = std::chrono::steady_clock::now();
    t->refusal.reset();
    t->permitted = false;
    t->error[0] = '\0';

    shard* home = nullptr;
    if (last_home_ != nullptr && t->req.url == last_url_ && is_token(t->req.method) &&
        valid_header_lines(t->req.headers)) {
      // Same URL as the last request that passed: parsing it again would only repeat the answer.
      home = last_home_;
    } else {
      std::string endpoint;
      if (auto problem = precheck(*t, endpoint)) {
        finish_early(std::move(t), problem->first, std::move(problem->second));
        return;
      }
      home = shards_[std::hash<std::string>{}(endpoint) % shards_.size()].get();
      if (options_.proxy.empty() || guard_.allows_everything()) {
        // Cacheable only when the verdict depends on the URL alone (no IP-literal check).
        last_url_ = t->req.url;
        last_home_ = home;
      }
    }
    if (!t->easy) {
      t->easy = curl_easy_init();
      t->configured = t->touched = false;
      if (!t->easy) {
        finish_early(std::move(t), error_kind::network, "transport: curl_easy_init failed");
        return;
      }
    }
    if (!configure(*t)) {
      t->configured = false;  // reset before its next use
      finish_early(std::move(t), error_kind::invalid, "transport: unusable request options");
      return;
    }
    t->home = home;
    if (curl_multi_add_handle(t->home->multi, t->easy) != CURLM_OK) {
      finish_early(std::move(t), error_kind::network, "transport: curl_multi_add_handle failed");
      return;
    }
    t->index = active_.size();
    active_.push_back(t.release());
  }

  // Problems found before any connection: an invalid method, header injection, a malformed URL,
  // a scheme other than http(s), and (when a proxy hides the real peer from the connect-time
  // guard) IP literals that the guard refuses. `endpoint` receives scheme://host:port, which
  // picks the shard.
  std::optional<std::pair<error_kind, std::string>> precheck(const transfer& t,
                                                             std::string& endpoint) const {
    const auto& req = t.req;
    if (!is_token(req.method)) {
      return std::pair{error_kind::invalid, "invalid HTTP method \"" + req.method + "\""};
    }
    if (!valid_header_lines(req.headers)) {
      return std::pair{error_kind::invalid, std::string("invalid header line (needs \"Name: "
                                                        "value\" without CR, LF or NUL)")};
    }
    CURLU* u = curl_url();
    if (!u) return std::pair{error_kind::network, std::string("transport: out of memory")};
    std::optional<std::pair<error_kind, std::string>> problem;
    char* scheme = nullptr;
    char* host = nullptr;
    auto rc = curl_url_set(u, CURLUPART_URL, req.url.c_str(), 0);
    if (rc != CURLUE_OK) {
      // Not the URL itself: it may carry a password or a token (it is the subscription's).
      problem = {error_kind::invalid, std::string("invalid URL: ") + curl_url_strerror(rc)};
    } else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
               (std::strcmp(scheme, "http") != 0 && std::strcmp(scheme, "https") != 0)) {
      problem = {error_kind::invalid, "invalid URL: only http and https"};
    } else if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
      problem = {error_kind::invalid, "invalid URL: no host"};
    } else {
      char* port = nullptr;
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT);
      endpoint = std::string(scheme) + "://" + host + ":" + (port ? port : "");
      curl_free(port);
      if (!t.guarded && !options_.proxy.empty() && !guard_.allows_everything()) {
        problem = check_literal(host);
      }
    }
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return problem;
  }

  std::optional<std::pair<error_kind, std::string>> check_literal(std::string literal) const {
    if (literal.size() > 2 && literal.front() == '[')
      literal = literal.substr(1, literal.size() - 2);
    if (auto pct = literal.find('%'); pct != std::string::npos) literal.resize(pct);
    unsigned char buf[16];
    if (inet_pton(AF_INET, literal.c_str(), buf) == 1 ||
        inet_pton(AF_INET6, literal.c_str(), buf) == 1) {
      if (auto refused = guard_.check(literal)) return std::pair{error_kind::refused, *refused};
    }
    return std::nullopt;
  }

  // Sets the handle up for t.req; false when libcurl rejected an option (e.g. a feature missing
  // from this build).
  bool configure(transfer& t) {
    CURL* h = t.easy;
    const auto& req = t.req;
    bool ok = true;
    auto set = [&](CURLoption opt, auto value) {
      if (curl_easy_setopt(h, opt, value) != CURLE_OK) ok = false;
    };
    const bool with_body = !iequals(req.method, "GET") && !iequals(req.method, "HEAD");
    if (!t.configured || t.set_method != req.method || t.set_cert != req.client_cert ||
        t.set_key != req.client_key) {
      // First use, or a request of another shape: start from libcurl's defaults.
      if (t.touched) curl_easy_reset(h);
      t.touched = true;
      t.set_url.clear();
      t.set_connect_ms = t.set_total_ms = -1;
      set(CURLOPT_PRIVATE, static_cast<void*>(&t));
      set(CURLOPT_NOSIGNAL, 1L);
      set(CURLOPT_PROTOCOLS_STR, "http,https");
      set(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
      set(CURLOPT_FOLLOWLOCATION, 0L);
      set(CURLOPT_SSL_VERIFYPEER, options_.verify_tls ? 1L : 0L);
      set(CURLOPT_SSL_VERIFYHOST, options_.verify_tls ? 2L : 0L);
      if (!options_.ca_file.empty()) set(CURLOPT_CAINFO, options_.ca_file.c_str());
      // Only the option configures a proxy. An explicit empty proxy stops libcurl from picking
      // one up from the environment, and an explicit empty no-proxy list stops no_proxy from
      // sending a request around the configured proxy, where the connect-time guard (off when a
      // proxy is set) would not see its address. Neither is then read from the environment.
      set(CURLOPT_PROXY, options_.proxy.c_str());
      set(CURLOPT_NOPROXY, "");
      if (!req.client_cert.empty()) {
        set(CURLOPT_SSLCERT, req.client_cert.c_str());
        set(CURLOPT_SSLCERTTYPE, "PEM");
      }
      if (!req.client_key.empty()) {
        set(CURLOPT_SSLKEY, req.client_key.c_str());
        set(CURLOPT_SSLKEYTYPE, "PEM");
      }
      // The request carries User-Agent as one of its header lines (below), which libcurl copies
      // once; CURLOPT_USERAGENT would be formatted twice per request. A proxy's CONNECT does not
      // see the header list, so through a proxy the option is set as well (the line overrides
      // it on the request itself).
      if (!options_.proxy.empty()) set(CURLOPT_USERAGENT, options_.user_agent.c_str());
      set(CURLOPT_ERRORBUFFER, t.error);
      set(CURLOPT_WRITEFUNCTION, on_body);
      set(CURLOPT_WRITEDATA, static_cast<void*>(&t));
      set(CURLOPT_HEADERFUNCTION, on_header);
      set(CURLOPT_HEADERDATA, static_cast<void*>(&t));
      set(CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
      set(CURLOPT_OPENSOCKETDATA, static_cast<void*>(&t));
      if (iequals(req.method, "GET")) {
        set(CURLOPT_HTTPGET, 1L);
      } else if (iequals(req.method, "HEAD")) {
        set(CURLOPT_NOBODY, 1L);
      } else if (req.method != "POST") {
        set(CURLOPT_CUSTOMREQUEST, req.method.c_str());
      }
      t.set_method = req.method;
      t.set_cert = req.client_cert;
      t.set_key = req.client_key;
      t.configured = true;
    }
    if (t.set_url != req.url) {
      set(CURLOPT_URL, req.url.c_str());  // libcurl keeps its own copy
      t.set_url = req.url;
    }
    const long connect_ms =
        static_cast<long>(std::max<std::int64_t>(1, req.connect_timeout.count()));
    const long total_ms = static_cast<long>(std::max<std::int64_t>(1, req.timeout.count()));
    if (t.set_connect_ms != connect_ms) set(CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    if (t.set_total_ms != total_ms) set(CURLOPT_TIMEOUT_MS, total_ms);
    t.set_connect_ms = connect_ms;
    t.set_total_ms = total_ms;
    if (with_body) {
      set(CURLOPT_POSTFIELDS, req.body.data());
      set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
    }

    // The header list points into req.headers (no copies); libcurl only reads it.
    static char no_expect[] = "Expect:";              // no 100-continue round trip
    static char no_content_type[] = "Content-Type:";  // libcurl would label the body a form
    auto& nodes = t.header_nodes;
    nodes.clear();
    bool has_content_type = false;
    bool has_user_agent = false;
    for (const auto& hdr : req.headers) {
      if (starts_with_header(hdr, "Content-Type")) has_content_type = true;
      if (starts_with_header(hdr, "User-Agent")) has_user_agent = true;
      nodes.push_back(curl_slist{const_cast<char*>(hdr.c_str()), nullptr});
    }
    // libcurl asks for 100-continue only above a body size (1 MiB in 7.88, 1 KiB in the oldest
    // versions): below that the line would only cost header comparisons on every request.
    if (with_body && req.body.size() > 1024) nodes.push_back(curl_slist{no_expect, nullptr});
    if (with_body && !has_content_type) nodes.push_back(curl_slist{no_content_type, nullptr});
    if (!has_user_agent) nodes.push_back(curl_slist{user_agent_line_.data(), nullptr});
    for (std::size_t i = 0; i + 1 < nodes.size(); ++i) nodes[i].next = &nodes[i + 1];
    set(CURLOPT_HTTPHEADER, nodes.data());
    if (!ok) t.configured = false;
    return ok;
  }

  std::unique_ptr<transfer> take_transfer() {
    std::unique_ptr<transfer> t;
    if (!free_.empty()) {
      t = std::move(free_.back());
      free_.pop_back();
      return t;
    }
    t = std::make_unique<transfer>();
    t->max_body = options_.max_response_bytes;
    t->connections = &connections_;
    t->guard = &guard_;
    t->guarded = options_.proxy.empty() && !guard_.allows_everything();
    return t;
  }

  // Back to the pool (its handle keeps its options), or freed beyond the pool's bound.
  void recycle(std::unique_ptr<transfer> t) {
    if (free_.size() < max_free_transfers) free_.push_back(std::move(t));
  }

  void collect(shard& sh) {
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(sh.multi, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      CURL* h = msg->easy_handle;
      CURLcode code = msg->data.result;
      char* priv = nullptr;
      curl_easy_getinfo(h, CURLINFO_PRIVATE, &priv);
      auto* t = reinterpret_cast<transfer*>(priv);
      complete(*t, code);
      curl_multi_remove_handle(sh.multi, h);
      active_[t->index] = active_.back();
      active_[t->index]->index = t->index;
      active_.pop_back();
      retire(std::unique_ptr<transfer>(t));
    }
  }

  // A finished (or never started) request: its group may start the next one, its response goes
  // out with the next flush(), and the transfer goes back to the pool.
  void retire(std::unique_ptr<transfer> t) {
    leave_group(t->req);
    t->resp.request = std::move(t->req);  // its buffers go back to the caller for reuse
    done_.push_back(std::move(t->resp));
    recycle(std::move(t));
  }

  // Fills the response from the finished handle; must run before the handle is removed.
  void complete(transfer& t, CURLcode code) {
    auto& r = t.resp;
    long status = 0;
    curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &status);
    long request_size = 0;
    curl_easy_getinfo(t.easy, CURLINFO_REQUEST_SIZE, &request_size);
    r.request_length = request_length(t, static_cast<std::size_t>(request_size));
    r.duration = std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now() - t.started);
    if (code == CURLE_OK) {
      r.status = static_cast<int>(status);
      return;
    }
    r.status = 0;
    r.code = std::error_code(static_cast<int>(code), curl_category());
    if (t.refusal && !t.permitted) {
      r.kind = error_kind::refused;
      r.error = *t.refusal;
      // The dispatcher reports the refusal with its message (dead, with this reason).
      logger_->debug("transport: request {} not sent: {}", r.token, r.error);
      return;
    }
    r.kind = classify(code);
    r.error = t.error[0] ? std::string(t.error) : std::string(curl_easy_strerror(code));
    // Another address of the same name was allowed and failed on its own: that failure is
    // what counts (retryable), the refusal is context.
    if (t.refusal) r.error += "; also " + *t.refusal;
    logger_->debug("transport: request {} failed: {}", r.token, r.error);
  }

  // CURLINFO_REQUEST_SIZE counts the body only when libcurl sent it together with the head
  // (small bodies). The head is at least the request line plus the caller's headers, so a size
  // below that plus the body means the body was not counted.
  static std::size_t request_length(const transfer& t, std::size_t reported) {
    bool sends_body = !iequals(t.req.method, "GET") && !iequals(t.req.method, "HEAD");
    if (!sends_body || t.req.body.empty()) return reported;
    std::size_t head_floor = t.req.method.size() + std::strlen(" / HTTP/1.1\r\n\r\n");
    for (const auto& hdr : t.req.headers) head_floor += hdr.size() + 2;
    if (reported >= head_floor + t.req.body.size()) return reported;
    return reported + t.req.body.size();
  }

  // On the loop thread: the response goes out with the next flush().
  void finish_early(std::unique_ptr<transfer> t, error_kind kind, std::string message) {
    t->resp.kind = kind;
    t->resp.error = std::move(message);
    if (kind == error_kind::refused) {
      logger_->debug("transport: request {} not sent: {}", t->resp.token, t->resp.error);
    }
    retire(std::move(t));
  }

  static http_response cancelled_response(std::uint64_t token,
                                          std::string why = "transport stopped") {
    http_response resp;
    resp.token = token;
    resp.kind = error_kind::cancelled;
    resp.error = std::move(why);
    return resp;
  }

  void cancel_all() {
    for (auto* raw : active_) {
      std::unique_ptr<transfer> t(raw);
      curl_multi_remove_handle(t->home->multi, t->easy);
      t->resp.kind = error_kind::cancelled;
      t->resp.error = "transport stopped";
      t->resp.duration = std::chrono::duration_cast<std::chrono::microseconds>(
          std::chrono::steady_clock::now() - t->started);
      done_.push_back(std::move(t->resp));
    }
    active_.clear();
    std::deque<http_request> left;
    {
      std::lock_guard lock(mutex_);
      left.swap(queue_);
    }
    for (auto& req : left) done_.push_back(cancelled_response(req.token));
    for (auto& req : ready_) done_.push_back(cancelled_response(req.token));
    ready_.clear();
    for (auto& [id, g] : groups_)
      for (auto& req : g.blocked) done_.push_back(cancelled_response(req.token));
    groups_.clear();
    flush();
  }

  // Hands what completed in this loop turn to the caller in one call.
  void flush() {
    if (done_.empty()) return;
    in_flight_.fetch_sub(done_.size(), std::memory_order_relaxed);
    call_back(done_);
    done_.clear();
  }

  void call_back(std::vector<http_response>& batch) {
    try {
      on_complete_(std::move(batch));
    } catch (const std::exception& e) {
      logger_->error("transport: completion callback threw: {}", e.what());
    } catch (...) {
      logger_->error("transport: completion callback threw");
    }
  }

  // Idle transfers (and their handles) beyond this are freed: connections and DNS cache live in
  // the multi handle, so only the per-handle buffers and options would be kept.
  static constexpr std::size_t max_free_transfers = 256;

  transport_options options_;
  std::string user_agent_line_;  // "User-Agent: ...", pointed to by every header list
  address_guard guard_;
  batch_completion on_complete_;
  std::shared_ptr<spdlog::logger> logger_;
  // Endpoints are spread over this many multi handles by the epoll engine.
  static constexpr std::size_t epoll_shards = 64;
  static constexpr std::uint64_t wake_key = ~std::uint64_t{0};
  std::vector<std::unique_ptr<shard>> shards_;
  std::thread thread_;

  std::mutex join_mutex_;
  std::mutex mutex_;
  std::deque<http_request> queue_;
  std::vector<std::uint64_t> cancel_groups_;  // cancel_waiting() calls not yet handled
  bool stopping_ = false;

  std::atomic<std::size_t> in_flight_{0};
  std::atomic<std::uint64_t> connections_{0};

  // Loop thread only.
  std::vector<transfer*> active_;
  std::vector<std::unique_ptr<transfer>> free_;
  std::vector<http_response> done_;  // completed in this loop turn, not yet handed over
  std::deque<http_request> incoming_;
  std::deque<http_request> ready_;  // admitted, waiting for a running slot (max_running)
  struct group_state {
    std::size_t admitted = 0;          // running or in ready_
    std::deque<http_request> blocked;  // over the group's limit
  };
  std::unordered_map<std::uint64_t, group_state> groups_;
  // The last URL that passed precheck and the multi handle its endpoint maps to (most traffic
  // repeats a URL).
  std::string last_url_;
  shard* last_home_ = nullptr;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
};

transport::transport(transport_options options, batch_completion on_complete,
                     std::shared_ptr<spdlog::logger> logger)
    : impl_(std::make_unique<impl>(std::move(options), std::move(on_complete), std::move(logger))) {
}

transport::transport(transport_options options, completion on_complete,
                     std::shared_ptr<spdlog::logger> logger)
    : transport(std::move(options),
                on_complete ? batch_completion([each = std::move(on_complete)](
                                                   std::vector<http_response>&& batch) {
                  // Each response on its own: one that throws must not drop the others; the
                  // first error is rethrown for the transport to log.
                  std::exception_ptr first;
                  for (auto& r : batch) {
                    try {
                      each(std::move(r));
                    } catch (...) {
                      if (!first) first = std::current_exception();
                    }
                  }
                  if (first) std::rethrow_exception(first);
                })
                            : batch_completion{},
                std::move(logger)) {}

transport::~transport() = default;

void transport::submit(http_request req) {
  std::vector<http_request> one;
  one.push_back(std::move(req));
  impl_->submit(std::move(one));
}
void transport::submit(std::vector<http_request>&& batch) {
  impl_->submit(std::move(batch));
}
std::size_t transport::in_flight() const {
  return impl_->in_flight();
}
std::uint64_t transport::connections_opened() const {
  return impl_->connections_opened();
}
void transport::cancel_waiting(std::uint64_t group) {
  impl_->cancel_waiting(group);
}
void transport::stop() {
  impl_->stop();
}

}  // namespace hookline::detail
