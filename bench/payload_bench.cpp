// Payload rendering and Standard Webhooks signing, the per-message CPU work of the dispatcher.
#include <benchmark/benchmark.h>

#include <chrono>
#include <string>

#include "hookline/payload.hpp"
#include "hookline/signing.hpp"
#include "signer.hpp"

namespace {

hookline::event typical_event() {
  hookline::event e;
  e.id = "evt-1";
  e.event_name = "Modify";
  e.path = "/Root/Content/Projects/Alpha/Docs/report-2024.docx";
  e.content_type = "File";
  e.node_id = 123456;
  e.name = "report-2024.docx";
  e.display_name = "Report 2024";
  e.version_id = 98765;
  e.version = "2.0.A";
  e.previous_version = "1.0.A";
  e.version_modification_date = "2024-01-31T10:20:30Z";
  e.modified_by = 17;
  e.current_user = "jdoe";
  e.changed_fields = {"DisplayName", "Binary"};
  e.data = {{"Manager", {{"DisplayName", "Alice Smith"}, {"Id", 9}}}, {"Size", 482133}};
  return e;
}

hookline::render_context typical_context() {
  hookline::render_context ctx;
  ctx.repository = "repo.example.com";
  return ctx;
}

// A typical custom payload: five templates, in strings and bare.
const char* const typical_payload = R"({
  "text": "@@content.DisplayName@@ changed by @@currentuser@@",
  "link": "https://repo.example.com@@content.Path@@",
  "manager": @@content.Manager.DisplayName@@,
  "due": "@@today+3days@@",
  "channel": "#docs"
})";

void render_body_typical(benchmark::State& state) {
  const auto e = typical_event();
  const auto ctx = typical_context();
  hookline::subscription s;
  s.id = "sub-1";
  s.payload = typical_payload;
  std::size_t bytes = 0;
  for (auto _ : state) {
    auto body = hookline::render_body(e, s, ctx);
    bytes = body.size();
    benchmark::DoNotOptimize(body);
  }
  state.counters["body_bytes"] = static_cast<double>(bytes);
}
BENCHMARK(render_body_typical);

void render_body_default_only(benchmark::State& state) {
  const auto e = typical_event();
  const auto ctx = typical_context();
  hookline::subscription s;
  s.id = "sub-1";
  for (auto _ : state) {
    auto body = hookline::render_body(e, s, ctx);
    benchmark::DoNotOptimize(body);
  }
}
BENCHMARK(render_body_default_only);

const std::string secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const std::string body_1k(1024, 'x');
constexpr std::int64_t timestamp = 1614265330;

void sign_1kb(benchmark::State& state) {
  for (auto _ : state) {
    auto sig = hookline::sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp, body_1k);
    benchmark::DoNotOptimize(sig);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * 1024);
}
BENCHMARK(sign_1kb);

// What the dispatcher does per message: the secret decoded and keyed once, then one HMAC.
void signer_header(benchmark::State& state) {
  hookline::detail::signer signer({secret});
  const std::string body(static_cast<std::size_t>(state.range(0)), 'x');
  for (auto _ : state) {
    auto sig = signer.header("msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp, body);
    benchmark::DoNotOptimize(sig);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(signer_header)->Arg(340)->Arg(1024);

void verify_1kb(benchmark::State& state) {
  const auto header = hookline::sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp, body_1k);
  const std::vector<std::string> secrets{secret};
  const auto now = std::chrono::system_clock::time_point{std::chrono::seconds{timestamp}};
  for (auto _ : state) {
    auto r = hookline::verify(secrets, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body_1k,
                              header, now);
    if (!r) state.SkipWithError("verification failed");
    benchmark::DoNotOptimize(r);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * 1024);
}
BENCHMARK(verify_1kb);

}  // namespace

BENCHMARK_MAIN();
