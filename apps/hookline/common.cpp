#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include <spdlog/sinks/base_sink.h>

#include "cli.hpp"

namespace hookline::cli {

console& console::instance() {
  static console c;
  return c;
}

void console::error_line(const std::string& line) {
  std::lock_guard lock(mutex_);
  std::string out;
  if (progress_shown_) out = "\r\033[K";
  progress_shown_ = false;
  out += line;
  out += '\n';
  std::fwrite(out.data(), 1, out.size(), stderr);
  std::fflush(stderr);
}

void console::progress_line(const std::string& line) {
  std::lock_guard lock(mutex_);
  std::string out = "\r\033[K" + line;
  std::fwrite(out.data(), 1, out.size(), stderr);
  std::fflush(stderr);
  progress_shown_ = true;
}

void console::clear_progress() {
  std::lock_guard lock(mutex_);
  if (!progress_shown_) return;
  std::fputs("\r\033[K", stderr);
  std::fflush(stderr);
  progress_shown_ = false;
}

namespace {

std::string trim(std::string_view s) {
  const auto* ws = " \t\r\n";
  const auto b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(ws);
  return std::string(s.substr(b, e - b + 1));
}

std::optional<double> parse_double(const std::string& s) {
  double v = 0;
  const auto* end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, v);
  if (ec != std::errc() || ptr != end || !std::isfinite(v)) return std::nullopt;
  return v;
}

// Routes the library's log lines through the console so they do not tear the progress line.
class console_sink final : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    std::string line(formatted.data(), formatted.size());
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    console::instance().error_line(line);
  }
  void flush_() override {}
};

}  // namespace

duration seconds_to_duration(double seconds, const char* flag) {
  if (!std::isfinite(seconds) || seconds < 0) {
    throw usage_error(std::string(flag) + ": must be a non-negative number of seconds");
  }
  if (seconds > 366.0 * 24 * 3600) {
    throw usage_error(std::string(flag) + ": more than a year is not a sensible delay");
  }
  return duration(std::llround(seconds * 1000.0));
}

std::vector<duration> parse_retry_schedule(const std::string& text) {
  std::vector<duration> out;
  const std::string all = trim(text);
  if (all == "none") return out;
  if (all.empty()) {
    throw usage_error(
        "--retry-schedule: empty; give the delays in seconds (e.g. 5,300,1800), or none for a "
        "single attempt");
  }
  std::size_t start = 0;
  std::size_t position = 1;
  while (true) {
    const auto comma = all.find(',', start);
    const std::string item = trim(std::string_view(all).substr(
        start, comma == std::string::npos ? std::string::npos : comma - start));
    const auto v = parse_double(item);
    if (!v || *v < 0) {
      throw usage_error("--retry-schedule: item " + std::to_string(position) + " (\"" + item +
                        "\") is not a non-negative number of seconds");
    }
    out.push_back(seconds_to_duration(*v, "--retry-schedule"));
    if (comma == std::string::npos) break;
    start = comma + 1;
    ++position;
  }
  return out;
}

void apply_delivery_flags(const delivery_flags& f, options& opts) {
  opts.delivery.allow_private_networks = f.allow_private;
  if (f.timeout_seconds) {
    // Checked before the conversion, so that -1 and 0 get the same message.
    if (!(*f.timeout_seconds > 0))
      throw usage_error("--timeout: must be a positive number of seconds");
    const auto d = seconds_to_duration(*f.timeout_seconds, "--timeout");
    if (d.count() <= 0) throw usage_error("--timeout: must be at least 0.001 seconds");
    opts.delivery.request_timeout = d;
    opts.delivery.connect_timeout = std::min(opts.delivery.connect_timeout, d);
    opts.store_settings.request_timeout = d;
  }
  if (f.retry_schedule) {
    opts.delivery.retry.schedule = parse_retry_schedule(*f.retry_schedule);
    opts.delivery.retry.max_attempts = 0;
  }
  if (f.concurrency) {
    if (*f.concurrency == 0) throw usage_error("--concurrency: must be at least 1");
    opts.delivery.max_in_flight = *f.concurrency;
  }
  if (f.endpoint_concurrency) {
    if (*f.endpoint_concurrency == 0) {
      throw usage_error("--endpoint-concurrency: must be at least 1");
    }
    opts.delivery.endpoint_concurrency = *f.endpoint_concurrency;
  }
}

std::shared_ptr<spdlog::logger> make_logger(int verbosity) {
  auto sink = std::make_shared<console_sink>();
  sink->set_pattern("hookline: %l: %v");
  auto logger = std::make_shared<spdlog::logger>("hookline", sink);
  logger->set_level(verbosity >= 2   ? spdlog::level::debug
                    : verbosity == 1 ? spdlog::level::info
                                     : spdlog::level::warn);
  return logger;
}

std::vector<std::size_t> subscription_lines_at(const std::string& text,
                                               const std::vector<std::string>& target) {
  struct frame {
    bool is_array = false;
    bool expect = true;  // array: a value comes next; object: a key comes next
    std::string key;
  };
  std::vector<frame> stack;
  std::vector<std::size_t> lines;
  std::size_t line = 1;
  auto in_target = [&] {
    if (stack.empty() || !stack.back().is_array || stack.size() != target.size() + 1) return false;
    for (std::size_t i = 0; i < target.size(); ++i) {
      if (stack[i].is_array || stack[i].key != target[i]) return false;
    }
    return true;
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r') continue;
    if (!stack.empty() && stack.back().is_array && stack.back().expect && c != ']') {
      if (in_target()) lines.push_back(line);
      stack.back().expect = false;
    }
    switch (c) {
      case '"': {
        std::string s;
        for (++i; i < text.size() && text[i] != '"'; ++i) {
          if (text[i] == '\\' && i + 1 < text.size()) ++i;
          if (text[i] == '\n') ++line;
          s += text[i];
        }
        if (!stack.empty() && !stack.back().is_array && stack.back().expect) {
          stack.back().key = std::move(s);
          stack.back().expect = false;
        }
        break;
      }
      case '{':
        stack.push_back({false, true, {}});
        break;
      case '[':
        stack.push_back({true, true, {}});
        break;
      case '}':
      case ']':
        if (!stack.empty()) stack.pop_back();
        break;
      case ',':
        if (!stack.empty()) stack.back().expect = true;
        break;
      default:
        break;
    }
  }
  return lines;
}

std::vector<std::size_t> subscription_lines(const std::string& text) {
  return subscription_lines_at(text, {});
}

subscriptions_file read_subscriptions_file(const std::string& path) {
  if (path.rfind("postgres:", 0) == 0) {
    subscriptions_file f;
    f.path = redact_store_uri(path);
    f.postgres = path.substr(std::string_view("postgres:").size());
    try {
      for (auto& row : load_postgres_subscriptions(f.postgres)) f.list.push_back(std::move(row));
    } catch (const hookline::error& e) {
      throw usage_error(std::string("--subscriptions: ") + e.what());
    }
    return f;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw usage_error("subscriptions file " + path + ": cannot read: " + std::strerror(errno));
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw usage_error("subscriptions file " + path + ": read error");

  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    std::size_t line = 1, column = 1;
    for (std::size_t i = 0; i + 1 < e.byte && i < text.size(); ++i) {
      if (text[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    throw usage_error(path + ":" + std::to_string(line) + ":" + std::to_string(column) +
                      ": not valid JSON: " + json_error_reason(e));
  }

  subscriptions_file f;
  f.path = path;
  std::vector<std::string> where;
  if (j.is_array()) {
    f.list = std::move(j);
  } else if (j.is_object() && j.contains("subscriptions") && j["subscriptions"].is_array()) {
    f.list = std::move(j["subscriptions"]);
    where = {"subscriptions"};
  } else if (j.is_object() && j.contains("d") && j["d"].is_object() && j["d"].contains("results") &&
             j["d"]["results"].is_array()) {
    f.list = std::move(j["d"]["results"]);
    where = {"d", "results"};
  } else if (j.is_object() && (j.contains("id") || j.contains("url") || j.contains("Id") ||
                               j.contains("WebHookUrl"))) {
    f.list = nlohmann::json::array({std::move(j)});
    f.lines = {1};
    return f;
  } else {
    throw usage_error(
        path +
        ":1: expected a JSON array of subscriptions, an object with a "
        "\"subscriptions\" array, or a sensenet export ({\"d\": {\"results\": [...]}})");
  }
  f.lines = subscription_lines_at(text, where);
  return f;
}

std::vector<std::string> describe_rejections(const subscriptions_file& file,
                                             const load_report& report, const char* verb) {
  std::vector<std::string> out;
  for (const auto& r : report.rejected) {
    std::string head = file.path;
    if (auto line = file.line_of(r.index); line) head += ":" + std::to_string(line);
    head += ": subscription ";
    if (!r.id.empty()) {
      head += "\"" + r.id + "\" (entry " + std::to_string(r.index + 1) + ")";
    } else {
      head += "entry " + std::to_string(r.index + 1) + " (no id)";
    }
    head += " " + std::string(verb) + ": " + std::to_string(r.errors.size()) + " invalid field" +
            (r.errors.size() == 1 ? "" : "s");
    out.push_back(head);
    for (const auto& e : r.errors) {
      out.push_back("  " + (e.field.empty() ? std::string("(entry)") : e.field) + ": " + e.reason);
    }
  }
  return out;
}

load_report load_subscriptions(registry& reg, const subscriptions_file& file) {
  load_report report = reg.load_json(file.list);
  for (const auto& line : describe_rejections(file, report, "skipped")) {
    console::instance().error_line(line);
  }
  return report;
}

namespace {

// Forwards everything; claim() first waits for the gate so no message is handled before the
// subscriptions are loaded.
class gate_wrapper final : public forwarding_store {
 public:
  using forwarding_store::forwarding_store;
  void open() {
    {
      std::lock_guard lock(mutex_);
      open_ = true;
    }
    cv_.notify_all();
  }
  std::vector<message> claim(const claim_request& req) override {
    {
      std::unique_lock lock(mutex_);
      if (!cv_.wait_for(lock, std::chrono::seconds(1), [&] { return open_; })) return {};
    }
    return forwarding_store::claim(req);
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = false;
};

}  // namespace

gated_store make_gated_store(std::shared_ptr<delivery_store> inner) {
  auto g = std::make_shared<gate_wrapper>(std::move(inner));
  return {g, [g] { g->open(); }};
}

progress::progress(sample_fn sample) : sample_(std::move(sample)), enabled_(isatty(2) == 1) {
  if (!enabled_) return;
  thread_ = std::thread([this] {
    const auto start = std::chrono::steady_clock::now();
    std::unique_lock lock(mutex_);
    while (!cv_.wait_for(lock, std::chrono::seconds(1), [&] { return done_; })) {
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      lock.unlock();
      console::instance().progress_line(sample_(elapsed));
      lock.lock();
    }
  });
}

progress::~progress() {
  finish();
}

void progress::finish() {
  {
    std::lock_guard lock(mutex_);
    done_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (enabled_) console::instance().clear_progress();
}

std::string summary::to_json_line() const {
  // Fixed key order, which nlohmann::json (sorted keys) would not keep.
  std::ostringstream o;
  o << "{\"published\":" << published << ",\"messages\":" << messages
    << ",\"delivered\":" << delivered << ",\"dead\":" << dead << ",\"pending\":";
  if (pending_unknown)
    o << "null";
  else
    o << pending;
  o << ",\"errors\":" << errors << "}";
  return o.str();
}

line_reader::line_reader(const std::string& path) {
  if (path == "-" || path.empty()) {
    fd_ = 0;
    display_name_ = "<stdin>";
    return;
  }
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    throw usage_error("events file " + path + ": cannot read: " + std::strerror(errno));
  }
  owns_fd_ = true;
  display_name_ = path;
}

line_reader::~line_reader() {
  if (owns_fd_) ::close(fd_);
}

std::vector<std::string> line_reader::next_batch(std::size_t& first_line, std::size_t max_lines) {
  std::vector<std::string> lines;
  first_line = line_no_ + 1;
  while (true) {
    std::size_t pos = 0;
    while (lines.size() < max_lines) {
      const auto nl = buffer_.find('\n', pos);
      if (nl == std::string::npos) break;
      std::string line = buffer_.substr(pos, nl - pos);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      lines.push_back(std::move(line));
      pos = nl + 1;
    }
    buffer_.erase(0, pos);
    if (!lines.empty()) break;
    if (eof_) {
      if (!buffer_.empty()) {
        if (buffer_.back() == '\r') buffer_.pop_back();
        lines.push_back(std::move(buffer_));
        buffer_.clear();
      }
      break;
    }
    char chunk[65536];
    const ssize_t n = ::read(fd_, chunk, sizeof chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw usage_error(display_name_ + ": read error: " + std::strerror(errno));
    }
    if (n == 0) {
      eof_ = true;
    } else {
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }
  line_no_ += lines.size();
  return lines;
}

std::string read_stdin() {
  std::string body;
  char chunk[65536];
  while (true) {
    const ssize_t n = ::read(0, chunk, sizeof chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw usage_error(std::string("stdin: read error: ") + std::strerror(errno));
    }
    if (n == 0) break;
    body.append(chunk, static_cast<std::size_t>(n));
  }
  return body;
}

}  // namespace hookline::cli
