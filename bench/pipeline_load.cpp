// pipeline_load: whole-pipeline throughput and latency of hookline against a plain libcurl multi
// loop posting the same body at the same concurrency to the same receiver, in the same run.
// Paired samples (raw, hookline) alternate so machine noise hits both; the median of the paired
// ratios is reported with its spread (see shared/reference/measurements.md).
//
// Usage: pipeline_load --url http://127.0.0.1:PORT/hook [--messages N] [--concurrency K]
//                      [--pairs P] [--work DIR] [--publishes N]
//                      [--only memory|sqlite|postgres|publish] [--raw-headers none|webhook]
// With HOOKLINE_BENCH_PG set (a libpq conninfo) it also measures the PostgreSQL store with one and
// two workers. With HOOKLINE_BENCH_TRACE set, each pipeline sample says on stderr when publishing
// ended (and how many were delivered by then) and when the last delivery came. scripts/bench.sh
// starts nginx and PostgreSQL and runs it.
#include <curl/curl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <hookline/hookline.hpp>

namespace {

using clock_type = std::chrono::steady_clock;

struct config {
  std::string url;
  std::size_t messages = 20000;
  std::size_t publishes = 2000;  ///< durable publish latency: events in all (4 threads)
  std::size_t concurrency = 64;
  std::size_t pairs = 5;
  std::string work = "/tmp";
  /// "webhook": the raw loop also sends hookline's webhook-* headers and User-Agent.
  std::string raw_headers = "none";
  /// "memory", "sqlite", "postgres" or "publish" (durable publish latency): only that part
  std::string only;
};

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

std::string sample_body() {
  // About 300 bytes, like the bodies hookline renders for a content event.
  std::string body =
      R"({"nodeId":42,"versionId":7,"version":"1.0.A","previousVersion":null,)"
      R"("versionModificationDate":"2026-11-27T08:00:00Z","modifiedBy":1,)"
      R"("path":"/Root/Content/Docs/report.pdf","name":"report.pdf","displayName":"Report",)"
      R"("eventName":"Create","subscriptionId":"bench","sentTime":"2026-11-27T08:00:00.000Z",)"
      R"("repository":"bench","changedFields":[]})";
  return body;
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// What each thread of this process used so far, by thread name (threads of the same name are
// summed): CPU seconds and context switches. Says where a message's CPU goes.
struct thread_use {
  double cpu = 0;
  double switches = 0;  // voluntary + involuntary
};

std::map<std::string, thread_use> thread_usage() {
  std::map<std::string, thread_use> out;
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream stat(task.path() / "stat");
    std::string line;
    std::getline(stat, line);
    auto open = line.find('('), close = line.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    std::string name = line.substr(open + 1, close - open - 1);
    std::istringstream rest(line.substr(close + 2));
    std::string field;
    double utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14) utime = std::stod(field);
      if (i == 15) stime = std::stod(field);
    }
    auto& use = out[name];
    use.cpu += (utime + stime) / tick;
    std::ifstream status(task.path() / "status");
    while (std::getline(status, line)) {
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0 ||
          line.rfind("nonvoluntary_ctxt_switches:", 0) == 0)
        use.switches += std::stod(line.substr(line.find(':') + 1));
    }
  }
  return out;
}

size_t discard(char*, size_t size, size_t n, void*) {
  return size * n;
}

// The yardstick: curl_multi_perform + curl_multi_poll keeping `k` POSTs in flight, reusing easy
// handles and connections. Returns messages per second.
double raw_loop(const config& cfg, const std::string& body) {
  CURLM* multi = curl_multi_init();
  std::vector<CURL*> handles(cfg.concurrency);
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Expect:");
  if (cfg.raw_headers == "webhook") {
    // The headers hookline adds (same sizes): isolates the cost of the larger request.
    headers = curl_slist_append(headers, "webhook-id: msg_2fQxY7Kp9LmN3vB8wR4tZ6hJ1cD5eA0s");
    headers = curl_slist_append(headers, "webhook-timestamp: 1795781541");
    headers = curl_slist_append(
        headers, "webhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    headers = curl_slist_append(headers, "User-Agent: hookline/0.1.0");
  }
  auto start_one = [&](CURL* h) {
    curl_easy_setopt(h, CURLOPT_URL, cfg.url.c_str());
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_multi_add_handle(multi, h);
  };
  std::size_t started = 0, done = 0, ok = 0;
  auto t0 = clock_type::now();
  for (auto*& h : handles) {
    h = curl_easy_init();
    if (started < cfg.messages) {
      start_one(h);
      ++started;
    }
  }
  while (done < cfg.messages) {
    int running = 0;
    curl_multi_perform(multi, &running);
    int left = 0;
    while (CURLMsg* m = curl_multi_info_read(multi, &left)) {
      if (m->msg != CURLMSG_DONE) continue;
      CURL* h = m->easy_handle;
      long status = 0;
      curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
      if (m->data.result == CURLE_OK && status / 100 == 2) ++ok;
      curl_multi_remove_handle(multi, h);
      ++done;
      if (started < cfg.messages) {
        start_one(h);
        ++started;
      }
    }
    if (done < cfg.messages) curl_multi_poll(multi, nullptr, 0, 100, nullptr);
  }
  double elapsed = seconds_since(t0);
  for (auto* h : handles) curl_easy_cleanup(h);
  curl_slist_free_all(headers);
  curl_multi_cleanup(multi);
  if (ok != cfg.messages) std::cerr << "raw loop: only " << ok << " of " << done << " were 2xx\n";
  return static_cast<double>(cfg.messages) / elapsed;
}

hookline::subscription bench_subscription(const std::string& url) {
  return hookline::subscription_from_json(
      {{"id", "bench"},
       {"url", url},
       {"secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
       {"filter",
        {{"path", "/Root/Content"},
         {"contentTypes", {{{"name", "File"}, {"events", {"Create", "Modify"}}}}}}}});
}

std::vector<hookline::event> make_events(std::size_t n) {
  std::vector<hookline::event> events(n);
  for (std::size_t i = 0; i < n; ++i) {
    auto& e = events[i];
    e.event_name = "Create";
    e.path = "/Root/Content/Docs/file-" + std::to_string(i) + ".pdf";
    e.content_type = "File";
    e.name = "file-" + std::to_string(i) + ".pdf";
    e.node_id = static_cast<std::int64_t>(i);
    e.version = "1.0.A";
  }
  return events;
}

hookline::options pipeline_options(const config& cfg, const std::string& store) {
  hookline::options opts;
  opts.store = store;
  opts.delivery.allow_private_networks = true;
  opts.delivery.max_in_flight = cfg.concurrency;
  opts.delivery.endpoint_concurrency = cfg.concurrency;
  opts.delivery.breaker.enabled = false;
  return opts;
}

// Publishes cfg.messages events (one message each) and waits until all are delivered.
// Returns messages per second, publish included.
// With `per_thread`, adds each thread's CPU (µs) and context switches per message to it.
double pipeline(const config& cfg, const std::string& store,
                std::map<std::string, thread_use>* per_thread = nullptr) {
  auto events = make_events(cfg.messages);
  std::mutex m;
  std::condition_variable cv;
  std::atomic<std::size_t> delivered{0};
  auto opts = pipeline_options(cfg, store);
  opts.hooks.on_delivered = [&](const hookline::message&) {
    if (++delivered == cfg.messages) {
      std::lock_guard lock(m);
      cv.notify_all();
    }
  };
  hookline::hub hub(opts);
  hub.subscriptions().add(bench_subscription(cfg.url));
  auto threads_before = thread_usage();
  auto t0 = clock_type::now();
  const std::size_t batch = 500;
  for (std::size_t i = 0; i < events.size(); i += batch) {
    auto n = std::min(batch, events.size() - i);
    hub.publish(std::span<const hookline::event>(events.data() + i, n));
  }
  if (std::getenv("HOOKLINE_BENCH_TRACE"))
    std::fprintf(stderr, "published all in %.3f s, %zu delivered meanwhile\n", seconds_since(t0),
                 delivered.load());
  {
    std::unique_lock lock(m);
    if (!cv.wait_for(lock, std::chrono::minutes(5),
                     [&] { return delivered.load() == cfg.messages; })) {
      std::cerr << "pipeline(" << store << "): timed out with " << delivered << " delivered\n";
    }
  }
  double elapsed = seconds_since(t0);
  if (std::getenv("HOOKLINE_BENCH_TRACE"))
    std::fprintf(stderr, "all delivered in %.3f s\n", elapsed);
  if (per_thread) {
    for (const auto& [name, use] : thread_usage()) {
      auto& sum = (*per_thread)[name];
      sum.cpu += (use.cpu - threads_before[name].cpu) * 1e6 / double(cfg.messages);
      sum.switches += (use.switches - threads_before[name].switches) / double(cfg.messages);
    }
  }
  hub.stop();
  return static_cast<double>(cfg.messages) / elapsed;
}

struct spread {
  double median = 0, min = 0, max = 0;
};

spread summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  auto idx = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  return v[idx];
}

void report(const std::string& name, const std::vector<double>& raw,
            const std::vector<double>& hook) {
  std::vector<double> ratios;
  for (std::size_t i = 0; i < raw.size(); ++i) ratios.push_back(hook[i] / raw[i]);
  auto r = summarize(ratios);
  auto a = summarize(raw);
  auto b = summarize(hook);
  std::printf(
      "%-28s raw %8.0f/s  hookline %8.0f/s  ratio median %.3f (min %.3f, max %.3f, %zu "
      "pairs)\n",
      name.c_str(), a.median, b.median, r.median, r.min, r.max, raw.size());
}

// Open-loop latency: publish at a steady pace and time publish -> 2xx per message.
void latency(const config& cfg) {
  const std::size_t n = 4000;
  const auto interval = std::chrono::microseconds(500);  // 2,000 events/s
  auto events = make_events(n);
  std::mutex m;
  std::map<std::string, clock_type::time_point> sent;
  std::vector<double> lat;
  lat.reserve(n);
  std::condition_variable cv;
  auto opts = pipeline_options(cfg, "memory:");
  opts.hooks.on_delivered = [&](const hookline::message& msg) {
    auto now = clock_type::now();
    std::lock_guard lock(m);
    auto it = sent.find(msg.id);
    if (it != sent.end())
      lat.push_back(std::chrono::duration<double, std::micro>(now - it->second).count());
    cv.notify_all();
  };
  hookline::hub hub(opts);
  hub.subscriptions().add(bench_subscription(cfg.url));
  auto next = clock_type::now();
  for (auto& e : events) {
    std::this_thread::sleep_until(next);
    next += interval;
    std::lock_guard lock(m);  // held across publish so the hook cannot run before we record
    auto t = clock_type::now();
    auto r = hub.publish(e);
    for (auto& id : r.message_ids) sent[id] = t;
  }
  {
    std::unique_lock lock(m);
    cv.wait_for(lock, std::chrono::seconds(30), [&] { return lat.size() == n; });
  }
  hub.stop();
  std::printf("latency publish->2xx at 2000/s: p50 %.0f us  p99 %.0f us  (%zu samples)\n",
              percentile(lat, 0.5), percentile(lat, 0.99), lat.size());
}

long rss_bytes() {
  std::ifstream f("/proc/self/statm");
  long pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

// 1,000,000 messages waiting for a retry an hour from now: memory per message beyond its body,
// and the dispatcher's CPU while they wait.
void pending_cost(const config& cfg) {
  const std::size_t n = 1000000;
  const std::string body = sample_body();
  auto store = hookline::make_store("memory:");
  auto now = std::chrono::system_clock::now();
  long before = rss_bytes();
  {
    std::vector<hookline::message> batch;
    for (std::size_t i = 0; i < n; ++i) {
      hookline::message msg;
      msg.id = "msg_" + std::to_string(10000000 + i) + "abcdefghijklmnop";
      msg.subscription_id = "bench";
      msg.event_id = "evt_" + std::to_string(10000000 + i);
      msg.event_name = "Create";
      msg.url = cfg.url;
      msg.http_method = "POST";
      msg.body = body;
      msg.attempts = 1;
      msg.created_at = now;
      msg.next_attempt_at = now + std::chrono::hours(1);
      batch.push_back(std::move(msg));
      if (batch.size() == 10000) {
        store->enqueue(batch);
        batch.clear();
      }
    }
  }
  long after = rss_bytes();
  double per = static_cast<double>(after - before) / static_cast<double>(n);
  std::printf("1,000,000 pending retries: %.0f bytes each, %.0f beyond the %zu-byte body\n", per,
              per - static_cast<double>(body.size()), body.size());

  auto opts = pipeline_options(cfg, "memory:");
  opts.store_instance = store;
  hookline::hub hub(opts);
  hub.subscriptions().add(bench_subscription(cfg.url));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  double c0 = cpu_seconds();
  auto t0 = clock_type::now();
  std::this_thread::sleep_for(std::chrono::seconds(3));
  double cpu = (cpu_seconds() - c0) / seconds_since(t0);
  std::printf("dispatcher CPU while 1,000,000 retries wait: %.2f %% of a core\n", cpu * 100.0);
  hub.stop(std::chrono::milliseconds(100));
}

// Publish latency of single events into a durable store from several threads (group commit).
void durable_publish_latency(const config& cfg, const std::string& store, const char* name) {
  auto opts = pipeline_options(cfg, store);
  opts.dispatch = false;
  hookline::hub hub(opts);
  hub.subscriptions().add(bench_subscription(cfg.url));
  const std::size_t threads = 4, per_thread = std::max<std::size_t>(1, cfg.publishes / threads);
  std::vector<std::vector<double>> lat(threads);
  std::vector<std::thread> pool;
  auto t0 = clock_type::now();
  for (std::size_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      auto events = make_events(per_thread);
      for (auto& e : events) {
        auto s = clock_type::now();
        hub.publish(e);
        lat[t].push_back(std::chrono::duration<double, std::micro>(clock_type::now() - s).count());
      }
    });
  }
  for (auto& th : pool) th.join();
  double elapsed = seconds_since(t0);
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::printf(
      "%s publish of one event, 4 threads: p50 %.0f us  p90 %.0f us  p99 %.0f us  p99.9 %.0f us  "
      "max %.0f us  (%.0f events/s)\n",
      name, percentile(all, 0.5), percentile(all, 0.9), percentile(all, 0.99),
      percentile(all, 0.999), percentile(all, 1.0), static_cast<double>(all.size()) / elapsed);
  hub.stop();
}

// PostgreSQL: publish N, then drain with one worker and with two workers at once.
void postgres_workers(const config& cfg, const std::string& conninfo) {
  const std::string uri = "postgres:" + conninfo;
  for (int workers : {1, 2}) {
    {
      auto opts = pipeline_options(cfg, uri);
      opts.dispatch = false;
      hookline::hub publisher(opts);
      publisher.subscriptions().add(bench_subscription(cfg.url));
      auto events = make_events(cfg.messages);
      for (std::size_t i = 0; i < events.size(); i += 500) {
        auto n = std::min<std::size_t>(500, events.size() - i);
        publisher.publish(std::span<const hookline::event>(events.data() + i, n));
      }
      publisher.stop();
    }
    std::atomic<std::size_t> delivered{0};
    std::vector<std::unique_ptr<hookline::hub>> hubs;
    auto t0 = clock_type::now();
    for (int w = 0; w < workers; ++w) {
      auto opts = pipeline_options(cfg, uri);
      opts.worker_id = "bench-worker-" + std::to_string(w);
      opts.hooks.on_delivered = [&](const hookline::message&) { ++delivered; };
      hubs.push_back(std::make_unique<hookline::hub>(opts));
      hubs.back()->subscriptions().add(bench_subscription(cfg.url));
    }
    while (delivered.load() < cfg.messages && seconds_since(t0) < 300) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    double elapsed = seconds_since(t0);
    for (auto& h : hubs) h->stop();
    std::printf("PostgreSQL store, %d worker(s): %.0f messages/s end to end (%zu delivered)\n",
                workers, static_cast<double>(delivered.load()) / elapsed, delivered.load());
  }
}

}  // namespace

int main(int argc, char** argv) {
  config cfg;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--url")
      cfg.url = v;
    else if (k == "--publishes")
      cfg.publishes = std::stoul(v);
    else if (k == "--messages")
      cfg.messages = std::stoul(v);
    else if (k == "--concurrency")
      cfg.concurrency = std::stoul(v);
    else if (k == "--pairs")
      cfg.pairs = std::stoul(v);
    else if (k == "--work")
      cfg.work = v;
    else if (k == "--only")
      cfg.only = v;
    else if (k == "--raw-headers")
      cfg.raw_headers = v;
    else {
      std::cerr << "unknown option " << k << "\n";
      return 2;
    }
  }
  if (cfg.url.empty()) {
    std::cerr << "usage: pipeline_load --url URL [--messages N] [--concurrency K] [--pairs P] "
                 "[--publishes N]\n";
    return 2;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const std::string body = sample_body();
  std::printf(
      "pipeline_load: %zu messages per sample, concurrency %zu, %zu pairs, receiver %s, raw loop "
      "headers: %s\n",
      cfg.messages, cfg.concurrency, cfg.pairs, cfg.url.c_str(), cfg.raw_headers.c_str());

  std::vector<double> raw, mem, raw2, lite, raw_cpu, mem_cpu;
  std::map<std::string, thread_use> mem_threads, lite_threads;
  auto print_threads = [&](const std::map<std::string, thread_use>& threads) {
    std::printf("%-28s", "hookline by thread");
    const double n = double(cfg.pairs);
    for (const auto& [name, use] : threads)
      if (use.cpu / n >= 0.5)
        std::printf("  %s %.1f us %.2f sw", name.c_str(), use.cpu / n, use.switches / n);
    std::printf("  (CPU and context switches per message)\n");
  };
  // CPU per message (all threads of this process) is steadier than rates on a shared machine:
  // it says how much of a core each message costs whatever else is running.
  auto cpu_us = [&](double c0) { return (cpu_seconds() - c0) * 1e6 / double(cfg.messages); };
  if (cfg.only == "publish") {
    for (std::size_t p = 0; p < cfg.pairs; ++p) {
      auto db = std::filesystem::path(cfg.work) / "publish.db";
      std::filesystem::remove(db);
      durable_publish_latency(cfg, "sqlite:" + db.string(), "sqlite");
    }
    curl_global_cleanup();
    return 0;
  }
  if (cfg.only == "postgres") {
    const char* pg = std::getenv("HOOKLINE_BENCH_PG");
    if (pg == nullptr) {
      std::cerr << "--only postgres needs HOOKLINE_BENCH_PG (a libpq conninfo)\n";
      return 2;
    }
    double c0 = cpu_seconds();
    const double r = raw_loop(cfg, body);
    std::printf("%-28s raw %8.0f/s  (%.1f us CPU per message)\n", "raw loop, same run", r,
                cpu_us(c0));
    postgres_workers(cfg, pg);
    curl_global_cleanup();
    return 0;
  }
  for (std::size_t p = 0; p < cfg.pairs && cfg.only != "sqlite"; ++p) {
    double c0 = cpu_seconds();
    raw.push_back(raw_loop(cfg, body));
    raw_cpu.push_back(cpu_us(c0));
    c0 = cpu_seconds();
    mem.push_back(pipeline(cfg, "memory:", &mem_threads));
    mem_cpu.push_back(cpu_us(c0));
  }
  if (cfg.only != "sqlite") {
    report("memory store vs raw loop", raw, mem);
    auto a = summarize(raw_cpu);
    auto b = summarize(mem_cpu);
    std::printf("%-28s raw %.1f us (%.1f-%.1f)  hookline %.1f us (%.1f-%.1f)\n", "CPU per message",
                a.median, a.min, a.max, b.median, b.min, b.max);
    print_threads(mem_threads);
  }
  if (cfg.only == "memory") {
    curl_global_cleanup();
    return 0;
  }
  auto db = std::filesystem::path(cfg.work) / "pipeline.db";
  for (std::size_t p = 0; p < cfg.pairs; ++p) {
    std::filesystem::remove(db);
    // The last sample's file writes are flushed now, outside both timings, so that the kernel's
    // writeback does not slow the raw loop that comes next (which would flatter the ratio).
    ::sync();
    raw2.push_back(raw_loop(cfg, body));
    lite.push_back(pipeline(cfg, "sqlite:" + db.string(), &lite_threads));
  }
  report("sqlite store vs raw loop", raw2, lite);
  print_threads(lite_threads);
  if (cfg.only == "sqlite") {
    curl_global_cleanup();
    return 0;
  }
  {
    std::vector<double> ratios;
    for (std::size_t i = 0; i < lite.size(); ++i) ratios.push_back(lite[i] / mem[i]);
    auto r = summarize(ratios);
    std::printf("%-28s ratio median %.3f (min %.3f, max %.3f)\n", "sqlite vs memory store",
                r.median, r.min, r.max);
  }
  latency(cfg);
  std::filesystem::remove(db);
  durable_publish_latency(cfg, "sqlite:" + db.string(), "sqlite");
  pending_cost(cfg);
  if (const char* pg = std::getenv("HOOKLINE_BENCH_PG")) postgres_workers(cfg, pg);
  curl_global_cleanup();
  return 0;
}
