#include "test_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <unordered_map>

namespace hookline::test {

namespace {

using clock_type = std::chrono::steady_clock;

// Requests larger than this are refused: tests never need more, and it bounds a broken client.
constexpr std::size_t max_head_bytes = 64 * 1024;
constexpr std::size_t max_body_bytes = 64 * 1024 * 1024;

constexpr std::uint64_t listen_key = 0;
constexpr std::uint64_t wake_key = ~std::uint64_t{0};

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

const char* reason_phrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 303:
      return "See Other";
    case 304:
      return "Not Modified";
    case 307:
      return "Temporary Redirect";
    case 308:
      return "Permanent Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 408:
      return "Request Timeout";
    case 410:
      return "Gone";
    case 413:
      return "Payload Too Large";
    case 425:
      return "Too Early";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Status";
  }
}

std::system_error sys_error(const char* what) {
  return std::system_error(errno, std::generic_category(), what);
}

}  // namespace

// Named rather than anonymous: the implementation class below has members of these types.
namespace server_detail {

enum class parse_state { incomplete, complete, bad };

struct connection {
  int fd = -1;
  std::uint64_t id = 0;
  std::string in;
  std::string out;
  std::size_t out_offset = 0;
  bool awaiting_answer = false;  // a delayed answer is scheduled; later requests wait
  bool close_after_write = false;
  bool sent_continue = false;
  bool want_write = false;
};

struct pending_answer {
  std::uint64_t connection = 0;
  response answer;
  bool head = false;
  bool close = false;
};

}  // namespace server_detail

using server_detail::connection;
using server_detail::parse_state;
using server_detail::pending_answer;

std::optional<std::string> recorded_request::header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (iequals(n, name)) return v;
  }
  return std::nullopt;
}

response response::of(int status, std::string body, header_list headers) {
  response r;
  r.status = status;
  r.body = std::move(body);
  r.headers = std::move(headers);
  return r;
}

response response::slow(std::chrono::milliseconds delay, int status) {
  response r;
  r.status = status;
  r.delay = delay;
  return r;
}

response response::dropped(std::chrono::milliseconds delay) {
  response r;
  r.drop = true;
  r.delay = delay;
  return r;
}

class test_server::impl {
 public:
  impl() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) throw sys_error("test_server: socket");
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd_, SOMAXCONN) != 0) {
      auto e = sys_error("test_server: bind/listen");
      ::close(listen_fd_);
      throw e;
    }
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);

    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (epoll_fd_ < 0 || wake_fd_ < 0) {
      auto e = sys_error("test_server: epoll/eventfd");
      close_fds();
      throw e;
    }
    add(listen_fd_, listen_key, EPOLLIN);
    add(wake_fd_, wake_key, EPOLLIN);
    thread_ = std::thread([this] { run(); });
  }

  ~impl() {
    stop_.store(true);
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
    thread_.join();
    for (auto& [id, c] : connections_) ::close(c.fd);
    connections_.clear();
    close_fds();
  }

  std::uint16_t port() const { return port_; }

  // --- programming (any thread) ---
  void set_default(response r) {
    std::lock_guard lock(mutex_);
    default_response_ = std::move(r);
  }
  void set_handler(handler h) {
    std::lock_guard lock(mutex_);
    default_handler_ = std::move(h);
  }
  void respond(const std::string& path, response r) {
    std::lock_guard lock(mutex_);
    one_shots_[path].push_back(std::move(r));
  }
  void respond_always(const std::string& path, response r) {
    std::lock_guard lock(mutex_);
    path_handlers_[path] = [r = std::move(r)](const recorded_request&) { return r; };
  }
  void on(const std::string& path, handler h) {
    std::lock_guard lock(mutex_);
    path_handlers_[path] = std::move(h);
  }
  void reset() {
    std::lock_guard lock(mutex_);
    requests_.clear();
    one_shots_.clear();
    path_handlers_.clear();
    default_handler_ = nullptr;
    default_response_ = response{};
  }

  std::vector<recorded_request> requests(std::optional<std::string_view> path) const {
    std::lock_guard lock(mutex_);
    if (!path) return requests_;
    std::vector<recorded_request> out;
    for (const auto& r : requests_) {
      if (r.path == *path) out.push_back(r);
    }
    return out;
  }
  std::size_t count(std::optional<std::string_view> path) const {
    std::lock_guard lock(mutex_);
    return count_locked(path);
  }
  bool wait_for(std::optional<std::string_view> path, std::size_t n,
                std::chrono::milliseconds timeout) const {
    std::unique_lock lock(mutex_);
    return arrived_.wait_for(lock, timeout, [&] { return count_locked(path) >= n; });
  }
  std::uint64_t accepted() const { return accepted_.load(); }
  std::size_t open() const { return open_.load(); }

 private:
  std::size_t count_locked(std::optional<std::string_view> path) const {
    if (!path) return requests_.size();
    return static_cast<std::size_t>(std::count_if(requests_.begin(), requests_.end(),
                                                  [&](const auto& r) { return r.path == *path; }));
  }

  void close_fds() {
    if (listen_fd_ >= 0) ::close(listen_fd_);
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
    listen_fd_ = epoll_fd_ = wake_fd_ = -1;
  }

  void add(int fd, std::uint64_t key, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = key;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0)
      throw sys_error("test_server: epoll_ctl");
  }

  // --- the loop (server thread only) ---
  void run() {
    pthread_setname_np(pthread_self(), "test-server");
    std::vector<epoll_event> events(256);
    while (!stop_.load()) {
      int timeout_ms = -1;
      if (!timers_.empty()) {
        auto wait = timers_.begin()->first - clock_type::now();
        auto ms = std::chrono::ceil<std::chrono::milliseconds>(wait).count();
        timeout_ms = static_cast<int>(std::clamp<long long>(ms, 0, 60'000));
      }
      int n = ::epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()), timeout_ms);
      if (n < 0 && errno != EINTR) break;
      for (int i = 0; i < n; ++i) {
        auto key = events[i].data.u64;
        if (key == wake_key) continue;
        if (key == listen_key) {
          accept_all();
          continue;
        }
        auto it = connections_.find(key);
        if (it == connections_.end()) continue;
        auto flags = events[i].events;
        if (flags & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
          if (!read_from(it->second)) {
            close_connection(key);
            continue;
          }
        }
        if (flags & EPOLLOUT) {
          if (!flush(it->second)) close_connection(key);
        }
      }
      fire_timers();
    }
  }

  void accept_all() {
    for (;;) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;  // EAGAIN, or out of descriptors: the backlog keeps the rest waiting
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      auto id = ++next_id_;
      connection c;
      c.fd = fd;
      c.id = id;
      connections_.emplace(id, std::move(c));
      add(fd, id, EPOLLIN | EPOLLRDHUP);
      accepted_.fetch_add(1);
      open_.fetch_add(1);
    }
  }

  void close_connection(std::uint64_t id) {
    auto it = connections_.find(id);
    if (it == connections_.end()) return;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, it->second.fd, nullptr);
    ::close(it->second.fd);
    connections_.erase(it);
    open_.fetch_sub(1);
  }

  // False when the connection is finished and must be closed.
  bool read_from(connection& c) {
    char buf[64 * 1024];
    for (;;) {
      auto n = ::recv(c.fd, buf, sizeof buf, 0);
      if (n > 0) {
        c.in.append(buf, static_cast<std::size_t>(n));
        if (n < static_cast<ssize_t>(sizeof buf)) break;
        continue;
      }
      if (n == 0) return false;  // the peer closed (or gave up waiting for a slow answer)
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      return false;
    }
    return process(c);
  }

  // Handles every complete request buffered on `c` that may be answered now.
  bool process(connection& c) {
    while (!c.awaiting_answer && !c.close_after_write) {
      recorded_request req;
      bool keep_alive = true;
      std::size_t consumed = 0;
      auto state = parse(c, req, keep_alive, consumed);
      if (state == parse_state::incomplete) break;
      if (state == parse_state::bad) {
        c.out += "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        c.close_after_write = true;
        break;
      }
      c.in.erase(0, consumed);
      c.sent_continue = false;
      req.connection = c.id;
      req.arrived = clock_type::now();
      auto answer = choose_and_record(req);
      pending_answer p{c.id, std::move(answer), req.method == "HEAD", !keep_alive};
      if (p.answer.delay.count() > 0) {
        c.awaiting_answer = true;
        timers_.emplace(req.arrived + p.answer.delay, std::move(p));
        break;
      }
      if (p.answer.drop) return false;
      emit(c, p);
    }
    return flush(c);
  }

  parse_state parse(connection& c, recorded_request& req, bool& keep_alive, std::size_t& consumed) {
    // A TLS ClientHello on this plain port: answer in plain HTTP as nginx does, so the client
    // fails its handshake at once instead of waiting for a timeout.
    if (!c.in.empty() && c.in.front() == '\x16') return parse_state::bad;
    auto head_end = c.in.find("\r\n\r\n");
    if (head_end == std::string::npos) {
      return c.in.size() > max_head_bytes ? parse_state::bad : parse_state::incomplete;
    }
    std::string_view head(c.in.data(), head_end);
    auto line_end = head.find("\r\n");
    auto request_line = head.substr(0, line_end);
    auto sp1 = request_line.find(' ');
    auto sp2 = request_line.rfind(' ');
    if (sp1 == std::string_view::npos || sp2 == sp1) return parse_state::bad;
    req.method = std::string(request_line.substr(0, sp1));
    req.target = std::string(request_line.substr(sp1 + 1, sp2 - sp1 - 1));
    auto version = request_line.substr(sp2 + 1);
    if (version.substr(0, 5) != "HTTP/") return parse_state::bad;
    auto q = req.target.find('?');
    req.path = req.target.substr(0, q);
    if (q != std::string::npos) req.query = req.target.substr(q + 1);
    keep_alive = version != "HTTP/1.0";

    std::optional<std::size_t> content_length;
    bool chunked = false;
    bool expect_continue = false;
    std::size_t pos = line_end == std::string_view::npos ? head.size() : line_end + 2;
    while (pos < head.size()) {
      auto end = head.find("\r\n", pos);
      if (end == std::string_view::npos) end = head.size();
      auto line = head.substr(pos, end - pos);
      pos = end + 2;
      auto colon = line.find(':');
      if (colon == std::string_view::npos) return parse_state::bad;
      auto name = trim(line.substr(0, colon));
      auto value = trim(line.substr(colon + 1));
      req.headers.emplace_back(std::string(name), std::string(value));
      if (iequals(name, "Content-Length")) {
        std::size_t v = 0;
        auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
        if (ec != std::errc{} || p != value.data() + value.size() || v > max_body_bytes) {
          return parse_state::bad;
        }
        content_length = v;
      } else if (iequals(name, "Transfer-Encoding")) {
        chunked = iequals(value, "chunked");
        if (!chunked) return parse_state::bad;
      } else if (iequals(name, "Connection")) {
        if (iequals(value, "close")) keep_alive = false;
        if (iequals(value, "keep-alive")) keep_alive = true;
      } else if (iequals(name, "Expect")) {
        expect_continue = iequals(value, "100-continue");
      }
    }

    std::size_t body_start = head_end + 4;
    if (chunked) {
      auto state = parse_chunked(c.in, body_start, req.body, consumed);
      if (state == parse_state::incomplete) maybe_continue(c, expect_continue);
      return state;
    }
    std::size_t len = content_length.value_or(0);
    if (c.in.size() - body_start < len) {
      maybe_continue(c, expect_continue);
      return parse_state::incomplete;
    }
    req.body = c.in.substr(body_start, len);
    consumed = body_start + len;
    return parse_state::complete;
  }

  static parse_state parse_chunked(const std::string& in, std::size_t pos, std::string& body,
                                   std::size_t& consumed) {
    body.clear();
    for (;;) {
      auto eol = in.find("\r\n", pos);
      if (eol == std::string::npos) return parse_state::incomplete;
      std::size_t size = 0;
      auto [p, ec] = std::from_chars(in.data() + pos, in.data() + eol, size, 16);
      if (ec != std::errc{} || size > max_body_bytes) return parse_state::bad;
      (void)p;  // chunk extensions after the size are allowed and ignored
      pos = eol + 2;
      if (size == 0) {
        // Trailer fields, then an empty line.
        for (;;) {
          auto end = in.find("\r\n", pos);
          if (end == std::string::npos) return parse_state::incomplete;
          bool empty = end == pos;
          pos = end + 2;
          if (empty) {
            consumed = pos;
            return parse_state::complete;
          }
        }
      }
      if (in.size() < pos + size + 2) return parse_state::incomplete;
      body.append(in, pos, size);
      if (in.compare(pos + size, 2, "\r\n") != 0) return parse_state::bad;
      pos += size + 2;
      if (body.size() > max_body_bytes) return parse_state::bad;
    }
  }

  static void maybe_continue(connection& c, bool expect_continue) {
    if (expect_continue && !c.sent_continue) {
      c.out += "HTTP/1.1 100 Continue\r\n\r\n";
      c.sent_continue = true;
    }
  }

  response choose_and_record(const recorded_request& req) {
    handler h;
    {
      std::lock_guard lock(mutex_);
      requests_.push_back(req);
      arrived_.notify_all();
      auto it = one_shots_.find(req.path);
      if (it != one_shots_.end() && !it->second.empty()) {
        auto r = std::move(it->second.front());
        it->second.pop_front();
        return r;
      }
      if (auto ph = path_handlers_.find(req.path); ph != path_handlers_.end()) {
        h = ph->second;
      } else if (default_handler_) {
        h = default_handler_;
      } else {
        return default_response_;
      }
    }
    return h(req);  // outside the lock: a handler may call back into the server
  }

  static void emit(connection& c, const pending_answer& p) {
    const auto& r = p.answer;
    std::string out =
        "HTTP/1.1 " + std::to_string(r.status) + " " + reason_phrase(r.status) + "\r\n";
    bool has_length = false;
    for (const auto& [n, v] : r.headers) {
      if (iequals(n, "Content-Length")) has_length = true;
      out += n + ": " + v + "\r\n";
    }
    bool bodyless = r.status < 200 || r.status == 204 || r.status == 304;
    if (!has_length && !bodyless)
      out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
    bool close = p.close || r.close;
    if (close) out += "Connection: close\r\n";
    out += "\r\n";
    if (!p.head && !bodyless) out += r.body;
    c.out += out;
    if (close) c.close_after_write = true;
  }

  // False when the connection must be closed.
  bool flush(connection& c) {
    while (c.out_offset < c.out.size()) {
      auto n = ::send(c.fd, c.out.data() + c.out_offset, c.out.size() - c.out_offset, MSG_NOSIGNAL);
      if (n > 0) {
        c.out_offset += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        set_want_write(c, true);
        return true;
      }
      if (n < 0 && errno == EINTR) continue;
      return false;
    }
    c.out.clear();
    c.out_offset = 0;
    set_want_write(c, false);
    return !c.close_after_write;
  }

  void set_want_write(connection& c, bool want) {
    if (c.want_write == want) return;
    c.want_write = want;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0u);
    ev.data.u64 = c.id;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  void fire_timers() {
    auto now = clock_type::now();
    while (!timers_.empty() && timers_.begin()->first <= now) {
      auto node = timers_.extract(timers_.begin());
      auto& p = node.mapped();
      auto it = connections_.find(p.connection);
      if (it == connections_.end()) continue;  // the client gave up meanwhile
      auto& c = it->second;
      c.awaiting_answer = false;
      if (p.answer.drop) {
        close_connection(p.connection);
        continue;
      }
      emit(c, p);
      if (!process(c)) close_connection(p.connection);
    }
  }

  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::uint16_t port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> accepted_{0};
  std::atomic<std::size_t> open_{0};

  // Server thread only.
  std::uint64_t next_id_ = 0;
  std::unordered_map<std::uint64_t, connection> connections_;
  std::multimap<clock_type::time_point, pending_answer> timers_;

  // Shared, under mutex_.
  mutable std::mutex mutex_;
  mutable std::condition_variable arrived_;
  std::vector<recorded_request> requests_;
  std::map<std::string, std::deque<response>, std::less<>> one_shots_;
  std::map<std::string, handler, std::less<>> path_handlers_;
  handler default_handler_;
  response default_response_;
};

test_server::test_server() : impl_(std::make_unique<impl>()) {}
test_server::~test_server() = default;

std::uint16_t test_server::port() const {
  return impl_->port();
}

std::string test_server::url(std::string_view path) const {
  std::string out = "http://127.0.0.1:" + std::to_string(impl_->port());
  if (path.empty() || path.front() != '/') out += '/';
  out += path;
  return out;
}

void test_server::set_default(response r) {
  impl_->set_default(std::move(r));
}
void test_server::set_handler(handler h) {
  impl_->set_handler(std::move(h));
}
void test_server::respond(const std::string& path, response r) {
  impl_->respond(path, std::move(r));
}
void test_server::script(const std::string& path, std::vector<response> rs) {
  for (auto& r : rs) impl_->respond(path, std::move(r));
}
void test_server::respond_always(const std::string& path, response r) {
  impl_->respond_always(path, std::move(r));
}
void test_server::on(const std::string& path, handler h) {
  impl_->on(path, std::move(h));
}

std::vector<recorded_request> test_server::requests() const {
  return impl_->requests(std::nullopt);
}
std::vector<recorded_request> test_server::requests(std::string_view path) const {
  return impl_->requests(path);
}
std::size_t test_server::request_count() const {
  return impl_->count(std::nullopt);
}
std::size_t test_server::request_count(std::string_view path) const {
  return impl_->count(path);
}
bool test_server::wait_for_requests(std::size_t n, std::chrono::milliseconds timeout) const {
  return impl_->wait_for(std::nullopt, n, timeout);
}
bool test_server::wait_for_requests(std::string_view path, std::size_t n,
                                    std::chrono::milliseconds timeout) const {
  return impl_->wait_for(path, n, timeout);
}
std::uint64_t test_server::connections_accepted() const {
  return impl_->accepted();
}
std::size_t test_server::open_connections() const {
  return impl_->open();
}
void test_server::reset() {
  impl_->reset();
}

}  // namespace hookline::test
