// registry::match() at 100, 10k and 100k subscriptions over a 6-level tree, about 10 matches per
// event. The index should make the cost depend on path depth and matches, not on the number of
// subscriptions: the program prints the 100k/100 ratio at the end (target: within 3x).

#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "hookline/registry.hpp"

namespace {

using namespace hookline;

constexpr int fanout = 10;
constexpr int depth = 6;
constexpr int hot_events = 8;
constexpr int planted_per_event = 10;

struct fixture {
  std::unique_ptr<registry> reg;
  std::vector<event> events;
  std::size_t subscriptions = 0;
};

std::string random_path(std::mt19937& rng, int levels) {
  std::string p = "/Root";
  for (int i = 0; i < levels; ++i) p += "/n" + std::to_string(rng() % fanout);
  return p;
}

// Ancestor of `leaf` at `level` (0 = /Root).
std::string ancestor(const std::string& leaf, int level) {
  std::size_t pos = 0;
  for (int i = 0; i <= level; ++i) pos = leaf.find('/', pos + 1);
  return pos == std::string::npos ? leaf : leaf.substr(0, pos);
}

subscription make(std::string id, std::string path, std::string type,
                  std::vector<std::string> events, bool all = false) {
  subscription s;
  s.id = std::move(id);
  s.url = "https://hooks.example.com/in";
  s.filter.path = std::move(path);
  s.filter.content_types = {{std::move(type), std::move(events)}};
  s.filter.triggers_for_all_events = all;
  return s;
}

// Every hot event gets exactly `planted_per_event` matching subscriptions on its ancestors (under
// a type no other event uses); the rest is noise: random nodes, types and events, a third of it on
// the same ancestors with types or events that do not match.
fixture build_tree(std::size_t n) {
  std::mt19937 rng(42);
  fixture f;
  std::vector<subscription> subs;
  std::vector<std::string> leaves;
  for (int k = 0; k < hot_events; ++k) {
    leaves.push_back(random_path(rng, depth));
    event e;
    e.event_name = "Create";
    e.path = leaves.back() + "/doc.txt";
    e.content_type = "Hot" + std::to_string(k);
    f.events.push_back(e);
    for (int j = 0; j < planted_per_event; ++j) {
      const std::string id = "hot-" + std::to_string(k) + "-" + std::to_string(j);
      const std::string path = ancestor(leaves.back(), j % (depth + 1));
      const std::string type = "Hot" + std::to_string(k);
      if (j % 3 == 0)
        subs.push_back(make(id, path, type, {"Create", "Modify"}));
      else if (j % 3 == 1)
        subs.push_back(make(id, path, type, {"All"}));
      else
        subs.push_back(make(id, path, type, {"Delete"}, true));
    }
  }
  static const std::vector<std::string> names = {"Create",  "Modify",   "Delete",
                                                 "Approve", "CheckOut", "Move"};
  for (std::size_t i = subs.size(); i < n; ++i) {
    const std::string id = "noise-" + std::to_string(i);
    if (i % 3 == 0) {
      // On an ancestor of a hot event, not matching it.
      const int k = static_cast<int>(rng() % hot_events);
      const std::string path = ancestor(leaves[k], static_cast<int>(rng() % (depth + 1)));
      switch (rng() % 3) {
        case 0:
          subs.push_back(make(id, path, "Type" + std::to_string(rng() % 50), {"All"}));
          break;
        case 1:
          subs.push_back(make(id, path, "Hot" + std::to_string(k), {"Delete", "Modify"}));
          break;
        default:
          subs.push_back(make(id, path, "*", {"Approve"}));
      }
    } else {
      subs.push_back(make(id, random_path(rng, 1 + static_cast<int>(rng() % depth)),
                          "Type" + std::to_string(rng() % 50), {names[rng() % names.size()]},
                          rng() % 4 == 0));
    }
  }
  f.subscriptions = subs.size();
  f.reg = std::make_unique<registry>();
  auto report = f.reg->replace_all(std::move(subs));
  if (!report.rejected.empty()) std::abort();
  return f;
}

// 100k subscriptions all on /Root, each with its own content type: the per-node type index keeps
// match() proportional to the matches.
fixture build_flat(std::size_t n) {
  fixture f;
  std::vector<subscription> subs;
  for (std::size_t i = 0; i < n; ++i)
    subs.push_back(
        make("flat-" + std::to_string(i), "/Root", "T" + std::to_string(i / 10), {"Create"}));
  event e;
  e.event_name = "Create";
  e.path = "/Root/a/b/c/d/e/f.txt";
  e.content_type = "T" + std::to_string(n / 20);
  f.events.push_back(e);
  f.subscriptions = subs.size();
  f.reg = std::make_unique<registry>();
  f.reg->replace_all(std::move(subs));
  return f;
}

fixture& cached(std::map<std::size_t, fixture>& cache, std::size_t n,
                fixture (*build)(std::size_t)) {
  auto it = cache.find(n);
  if (it == cache.end()) it = cache.emplace(n, build(n)).first;
  return it->second;
}

void run_match(benchmark::State& state, fixture& f) {
  std::size_t i = 0, matched = 0;
  for (auto _ : state) {
    auto result = f.reg->match(f.events[i++ % f.events.size()]);
    matched += result.size();
    benchmark::DoNotOptimize(result.data());
  }
  state.counters["subs"] = static_cast<double>(f.subscriptions);
  state.counters["matches"] =
      benchmark::Counter(static_cast<double>(matched), benchmark::Counter::kAvgIterations);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}

void BM_match(benchmark::State& state) {
  static std::map<std::size_t, fixture> cache;
  run_match(state, cached(cache, static_cast<std::size_t>(state.range(0)), build_tree));
}
BENCHMARK(BM_match)->Arg(100)->Arg(10000)->Arg(100000);

void BM_match_flat_root(benchmark::State& state) {
  static std::map<std::size_t, fixture> cache;
  run_match(state, cached(cache, static_cast<std::size_t>(state.range(0)), build_flat));
}
BENCHMARK(BM_match_flat_root)->Arg(100)->Arg(100000);

// Single writes with n registered: updates of existing subscriptions (which the delta index
// absorbs until it is folded into a new base, whose cost is amortised here) and add + remove.
void BM_update_one(benchmark::State& state) {
  static std::map<std::size_t, fixture> cache;
  fixture& f = cached(cache, static_cast<std::size_t>(state.range(0)), build_tree);
  const auto subs = f.reg->list();
  std::size_t i = 0;
  for (auto _ : state) {
    auto s = subs[(i * 7919) % subs.size()];
    s.filter.path = (i++ % 2) ? "/Root/n1" : "/Root/n2";
    f.reg->update(std::move(s));
  }
  state.counters["subs"] = static_cast<double>(f.subscriptions);
}
BENCHMARK(BM_update_one)->Arg(100)->Arg(100000)->Unit(benchmark::kMicrosecond);

void BM_add_remove(benchmark::State& state) {
  static std::map<std::size_t, fixture> cache;
  fixture& f = cached(cache, static_cast<std::size_t>(state.range(0)), build_tree);
  std::size_t i = 0;
  for (auto _ : state) {
    const std::string id = "write-" + std::to_string(i++ % 64);
    f.reg->upsert(make(id, "/Root/n1/n2", "File", {"Create"}));
    f.reg->remove(id);
  }
  state.counters["subs"] = static_cast<double>(f.subscriptions);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * 2));
}
BENCHMARK(BM_add_remove)->Arg(100)->Arg(100000)->Unit(benchmark::kMicrosecond);

void BM_replace_all(benchmark::State& state) {
  fixture f = build_tree(static_cast<std::size_t>(state.range(0)));
  const auto subs = f.reg->list();
  for (auto _ : state) f.reg->replace_all(subs);
  state.counters["subs"] = static_cast<double>(subs.size());
}
BENCHMARK(BM_replace_all)->Arg(100000)->Unit(benchmark::kMillisecond)->Iterations(3);

class ratio_reporter : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, double> ns;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs)
      if (r.run_type == Run::RT_Iteration && !r.error_occurred)
        ns[r.benchmark_name()] = r.GetAdjustedCPUTime();  // the host is shared: CPU is steadier
    ConsoleReporter::ReportRuns(runs);
  }
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  ratio_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  auto ratio = [&](const char* big, const char* small, const char* label) {
    auto b = reporter.ns.find(big), s = reporter.ns.find(small);
    if (b == reporter.ns.end() || s == reporter.ns.end() || s->second <= 0) return;
    std::printf("%s: 100k/100 = %.2fx (target <= 3x)\n", label, b->second / s->second);
  };
  ratio("BM_match/100000", "BM_match/100", "match, 6-level tree");
  ratio("BM_match_flat_root/100000", "BM_match_flat_root/100", "match, all on /Root");
  return 0;
}
