// receiver: a webhook endpoint for demos and tests. Verifies Standard Webhooks signatures
// (bad or stale -> 401), deduplicates by webhook-id, prints one line per event, and can
// pretend to fail (--fail-first, --fail-rate, --status, --delay).
#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <iostream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include <hookline/hookline.hpp>

#include "../common/serve.hpp"

namespace {

const char* const usage =
    "usage: receiver --port P [--host 127.0.0.1] [--secret whsec_...]... [--tolerance SECONDS]\n"
    "                [--fail-first N] [--fail-rate F] [--status CODE] [--delay MS] [--quiet]\n"
    "                [--port-file PATH]\n"
    "\n"
    "Accepts webhooks on every path and method. With --secret, requests whose signature is bad or\n"
    "whose timestamp is more than --tolerance seconds (default 300) off get 401 with the reason.\n"
    "A webhook-id seen before gets 200 and is reported as a duplicate. --fail-first N answers\n"
    "the first N requests with --status (default 503); --fail-rate F a random fraction F of them;\n"
    "--delay MS waits before answering. --port 0 picks a free port; it is printed as the first\n"
    "line ('listening on http://HOST:PORT') and written to --port-file. GET /_receiver/events\n"
    "returns what was received as JSON.\n"
    "\n"
    "Examples:\n"
    "  receiver --port 8080 --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"
    "  receiver --port 0 --port-file /tmp/port --fail-first 2 --status 500\n";

struct settings {
  std::string host = "127.0.0.1";
  int port = -1;
  std::vector<std::string> secrets;
  long tolerance_seconds = 300;
  double fail_rate = 0;
  int status = 503;
  long fail_first = 0;
  long delay_ms = 0;
  bool quiet = false;
  std::string port_file;
};

[[noreturn]] void bad_argument(const std::string& what) {
  std::cerr << "receiver: " << what << "\n\n" << usage;
  std::exit(2);
}

long to_long(const std::string& flag, const std::string& v, long min, long max) {
  try {
    std::size_t used = 0;
    const long n = std::stol(v, &used);
    if (used != v.size() || n < min || n > max) throw std::out_of_range(v);
    return n;
  } catch (const std::exception&) {
    bad_argument(flag + ": \"" + v + "\" is not a whole number from " + std::to_string(min) +
                 " to " + std::to_string(max));
  }
}

settings parse(int argc, char** argv) {
  settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) bad_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::cout << usage;
      std::exit(0);
    } else if (a == "--port") {
      s.port = static_cast<int>(to_long(a, value(), 0, 65535));
    } else if (a == "--host") {
      s.host = value();
    } else if (a == "--secret") {
      auto secret = value();
      if (auto why = hookline::check_secret(secret); !why.empty()) bad_argument("--secret: " + why);
      s.secrets.push_back(std::move(secret));
    } else if (a == "--tolerance") {
      s.tolerance_seconds = to_long(a, value(), 1, 365L * 24 * 3600);
    } else if (a == "--fail-rate") {
      const auto v = value();
      char* end = nullptr;
      s.fail_rate = std::strtod(v.c_str(), &end);
      if (end != v.c_str() + v.size() || !(s.fail_rate >= 0 && s.fail_rate <= 1)) {
        bad_argument("--fail-rate: \"" + v + "\" is not a fraction from 0 to 1");
      }
    } else if (a == "--status") {
      s.status = static_cast<int>(to_long(a, value(), 100, 599));
    } else if (a == "--fail-first") {
      s.fail_first = to_long(a, value(), 0, 1L << 40);
    } else if (a == "--delay") {
      s.delay_ms = to_long(a, value(), 0, 3600L * 1000);
    } else if (a == "--quiet") {
      s.quiet = true;
    } else if (a == "--port-file") {
      s.port_file = value();
    } else {
      bad_argument("unknown argument \"" + a + "\"");
    }
  }
  if (s.port < 0) bad_argument("--port is required (0 picks a free one)");
  return s;
}

// Remembers recent webhook-ids; old ones are forgotten so memory stays bounded.
class dedup {
 public:
  bool first_time(const std::string& id) {
    std::lock_guard lock(mutex_);
    if (!seen_.insert(id).second) return false;
    order_.push_back(id);
    if (order_.size() > 100000) {
      seen_.erase(order_.front());
      order_.pop_front();
    }
    return true;
  }

 private:
  std::mutex mutex_;
  std::unordered_set<std::string> seen_;
  std::deque<std::string> order_;
};

struct received {
  std::mutex mutex;
  nlohmann::json accepted = nlohmann::json::array();
  std::size_t duplicates = 0, rejected = 0, failed = 0;
};

void print(const settings& s, const std::string& line) {
  if (s.quiet) return;
  static std::mutex m;
  std::lock_guard lock(m);
  std::cout << line << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  const settings s = parse(argc, argv);

  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  httplib::Server server;
  // httplib parks one thread per keep-alive connection; a sender may hold many at once.
  server.new_task_queue = [] { return new httplib::ThreadPool(256); };
  dedup seen;
  received log;
  std::atomic<long> requests{0};
  std::mt19937_64 rng{std::random_device{}()};
  std::mutex rng_mutex;

  server.Get("/_receiver/events", [&](const httplib::Request&, httplib::Response& res) {
    std::lock_guard lock(log.mutex);
    nlohmann::json j = {{"accepted", log.accepted},
                        {"duplicates", log.duplicates},
                        {"rejected", log.rejected},
                        {"failed", log.failed}};
    res.set_content(j.dump(), "application/json");
  });

  auto handle = [&](const httplib::Request& req, httplib::Response& res) {
    if (s.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(s.delay_ms));
    const auto now = std::chrono::system_clock::now();
    const std::string id = req.get_header_value("webhook-id");
    std::string event_name = "-", path = "-";
    try {
      const auto body = nlohmann::json::parse(req.body);
      if (body.is_object()) {
        if (body.contains("eventName") && body["eventName"].is_string()) {
          event_name = body["eventName"].get<std::string>();
        }
        if (body.contains("path") && body["path"].is_string()) path = body["path"];
      }
    } catch (const nlohmann::json::exception&) {
      // Not JSON: still a request worth answering; the line shows "-".
    }
    const std::string head = hookline::format_iso8601(now) + " " + (id.empty() ? "-" : id) + " " +
                             event_name + " " + path;

    if (!s.secrets.empty()) {
      std::string why;
      if (id.empty())
        why = "missing webhook-id header";
      else if (!req.has_header("webhook-timestamp"))
        why = "missing webhook-timestamp header";
      else if (!req.has_header("webhook-signature"))
        why = "missing webhook-signature header";
      else {
        auto r = hookline::verify(s.secrets, id, req.get_header_value("webhook-timestamp"),
                                  req.body, req.get_header_value("webhook-signature"), now,
                                  std::chrono::seconds(s.tolerance_seconds));
        if (!r) why = r.reason;
      }
      if (!why.empty()) {
        {
          std::lock_guard lock(log.mutex);
          ++log.rejected;
        }
        res.status = 401;
        res.set_content(nlohmann::json({{"error", why}}).dump(), "application/json");
        print(s, head + " rejected 401: " + why);
        return;
      }
    }

    // Only requests that passed verification count toward --fail-first.
    const long n = ++requests;
    bool fail = n <= s.fail_first;
    if (!fail && s.fail_rate > 0) {
      std::lock_guard lock(rng_mutex);
      fail = std::uniform_real_distribution<double>(0, 1)(rng) < s.fail_rate;
    }
    if (fail) {
      {
        std::lock_guard lock(log.mutex);
        ++log.failed;
      }
      res.status = s.status;
      res.set_content(nlohmann::json({{"error", "simulated failure"}}).dump(), "application/json");
      print(s, head + " failed " + std::to_string(s.status) + " (simulated)");
      return;
    }

    if (!id.empty() && !seen.first_time(id)) {
      {
        std::lock_guard lock(log.mutex);
        ++log.duplicates;
      }
      res.status = 200;
      res.set_content(R"({"duplicate":true})", "application/json");
      print(s, head + " duplicate");
      return;
    }
    {
      std::lock_guard lock(log.mutex);
      nlohmann::json entry = {{"time", hookline::format_iso8601(now)},
                              {"id", id},
                              {"eventName", event_name},
                              {"path", path},
                              {"method", req.method},
                              {"target", req.path}};
      try {
        entry["body"] = nlohmann::json::parse(req.body);
      } catch (const nlohmann::json::exception&) {
        entry["body"] = req.body;
      }
      log.accepted.push_back(std::move(entry));
    }
    res.status = 200;
    res.set_content(R"({"ok":true})", "application/json");
    print(s, head);
  };
  const char* any = R"(/.*)";
  server.Post(any, handle);
  server.Put(any, handle);
  server.Patch(any, handle);
  server.Delete(any, handle);
  server.Get(any, handle);

  const int port = hookline::examples::bind_server(server, "receiver", s.host, s.port);
  if (port <= 0) return 1;
  hookline::examples::write_port_file(s.port_file, port);
  std::cout << "listening on http://" << s.host << ":" << port << std::endl;

  hookline::examples::serve_until_signalled(server, stop_signals);
  return 0;
}
