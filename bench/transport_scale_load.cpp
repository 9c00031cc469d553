// Scale check of the private transport: N requests kept in flight against a loopback server that
// answers each after a delay (slow endpoints), for both loop engines. Prints completions per
// second against the ideal N / delay, and CPU per completion of the transport's thread.
//
// Usage: transport_scale_load [N=2000] [delay_ms=1000] [seconds=5] [ramp_seconds=5] [engine=both]
//                             [url|-] [servers=1]
// `servers` spreads the requests over that many loopback servers (distinct endpoints, so libcurl
// keeps a connection pool per server as it would for distinct receivers).
// With a url (e.g. an nginx answering 204), requests go there instead and delay_ms is ignored:
// that measures throughput at concurrency N.
// The process needs two descriptors per request (client and server side); RLIMIT_NOFILE is raised
// to its hard limit.

#include <dirent.h>
#include <sys/resource.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "transport/transport.hpp"

// The loopback server of the tests, compiled in: load programs do not link the test support
// library.
#include "../tests/support/test_server.cpp"  // NOLINT(bugprone-suspicious-include)

namespace {

using namespace std::chrono_literals;
using hookline::detail::http_request;
using hookline::detail::http_response;
using hookline::detail::loop_engine;
using hookline::detail::transport;
using hookline::detail::transport_options;

// CPU seconds of the threads with this name.
double thread_cpu(const std::string& name) {
  double total = 0;
  DIR* d = opendir("/proc/self/task");
  if (!d) return 0;
  while (auto* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream f(std::string("/proc/self/task/") + e->d_name + "/stat");
    std::string line;
    std::getline(f, line);
    auto l = line.find('(');
    auto r = line.rfind(')');
    if (l == std::string::npos || r == std::string::npos) continue;
    if (line.substr(l + 1, r - l - 1) != name) continue;
    std::istringstream rest(line.substr(r + 2));
    std::string tok;
    long ticks = 0;
    for (int field = 3; field <= 15 && rest >> tok; ++field) {
      if (field == 14 || field == 15) ticks += std::stol(tok);
    }
    total += static_cast<double>(ticks) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
  closedir(d);
  return total;
}

void run(loop_engine engine, std::size_t n, std::chrono::milliseconds delay, int seconds, int ramp,
         const std::string& target, std::size_t servers) {
  std::vector<std::unique_ptr<hookline::test::test_server>> pool;
  std::vector<std::string> urls;
  for (std::size_t i = 0; i < std::max<std::size_t>(1, servers); ++i) {
    pool.push_back(std::make_unique<hookline::test::test_server>());
    pool.back()->set_default(hookline::test::response::slow(delay));
    urls.push_back(target.empty() ? pool.back()->url("/slow") : target);
  }
  std::atomic<std::size_t> done{0};
  std::atomic<std::size_t> failed{0};
  std::atomic<bool> refill{true};
  auto make = [&](std::uint64_t token) {
    http_request r;
    r.token = token;
    r.url = urls[token % urls.size()];
    r.body = R"({"eventName":"Create","path":"/Root/Content/a.txt"})";
    r.headers = {"Content-Type: application/json"};
    r.timeout = 120s;
    r.connect_timeout = 60s;
    return r;
  };
  transport_options options;
  options.allow_private_networks = true;
  options.engine = engine;
  transport* self = nullptr;
  transport t(
      options,
      [&](http_response&& r) {
        if (r.status < 200 || r.status > 299) ++failed;
        ++done;
        if (refill.load()) self->submit(make(r.token));
      },
      nullptr);
  self = &t;
  for (std::size_t i = 0; i < n; ++i) t.submit(make(i));
  std::this_thread::sleep_for(std::chrono::seconds(ramp));
  auto d0 = done.load();
  auto c0 = thread_cpu("hookline-net");
  auto w0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  auto d1 = done.load();
  auto c1 = thread_cpu("hookline-net");
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  refill = false;
  double rate = static_cast<double>(d1 - d0) / wall;
  double ideal =
      target.empty() ? static_cast<double>(n) * 1000.0 / static_cast<double>(delay.count()) : rate;
  std::printf(
      "%-5s N=%-6zu completions/s=%-8.0f ideal=%-8.0f ratio=%.2f  net-thread CPU=%.2f cores, "
      "%.0f us/completion  failed=%zu connections=%llu\n",
      engine == loop_engine::epoll ? "epoll" : "poll", n, rate, ideal, rate / ideal,
      (c1 - c0) / wall, d1 > d0 ? (c1 - c0) / static_cast<double>(d1 - d0) * 1e6 : 0.0,
      failed.load(), static_cast<unsigned long long>(t.connections_opened()));
  t.stop();
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t n = argc > 1 ? std::stoul(argv[1]) : 2000;
  std::chrono::milliseconds delay(argc > 2 ? std::stol(argv[2]) : 1000);
  int seconds = argc > 3 ? std::stoi(argv[3]) : 5;
  int ramp = argc > 4 ? std::stoi(argv[4]) : 5;
  std::string engine = argc > 5 ? argv[5] : "both";
  std::string target = argc > 6 && std::string(argv[6]) != "-" ? argv[6] : "";
  std::size_t servers = argc > 7 ? std::stoul(argv[7]) : 1;
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0) {
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
  if (engine == "epoll" || engine == "both")
    run(loop_engine::epoll, n, delay, seconds, ramp, target, servers);
  if (engine == "poll" || engine == "both")
    run(loop_engine::poll, n, delay, seconds, ramp, target, servers);
  return 0;
}
