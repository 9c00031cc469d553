// dispatch, publish, worker and fire: the subcommands that run a hub.
#include <signal.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include "cli.hpp"

namespace hookline::cli {

namespace {

using steady = std::chrono::steady_clock;

// Everything a hub-running subcommand sets up before the first event.
struct session {
  subscriptions_file file;
  gated_store gate;
  std::unique_ptr<hub> h;
  /// For `--subscriptions postgres:...`: the registry follows the table while the command runs.
  std::unique_ptr<postgres_subscription_sync> sync;  // after h: stops before the hub goes
};

std::shared_ptr<delivery_store> open_store(const std::string& uri, const store_options& so) {
  try {
    return make_store(uri, so);
  } catch (const hookline::error& e) {
    throw usage_error(std::string("--store: ") + e.what());
  }
}

options base_options(const std::string& store_uri, const delivery_flags& df, int verbosity,
                     bool dispatch, gated_store& gate) {
  options opts;
  apply_delivery_flags(df, opts);
  opts.logger = make_logger(verbosity);
  opts.store_settings.logger = opts.logger;  // reconnects, dropped results: on stderr too
  opts.dispatch = dispatch;
  gate = make_gated_store(open_store(store_uri, opts.store_settings));
  opts.store = store_uri;
  opts.store_instance = gate.store;
  opts.hooks.on_dead = [](const message& m, const std::string& reason) {
    // The SSRF guard's hint names the library's options; here the flag does that.
    std::string why = reason;
    constexpr std::string_view hint = "(set allow_private_networks or allowed_cidrs)";
    if (const auto at = why.find(hint); at != std::string::npos)
      why.replace(at, hint.size(), "(--allow-private permits it)");
    console::instance().error_line("dead: message " + m.id + " (subscription \"" +
                                   m.subscription_id + "\", " + m.event_name + " event " +
                                   m.event_id + ", " + std::to_string(m.attempts) +
                                   (m.attempts == 1 ? " attempt" : " attempts") + "): " + why);
  };
  opts.hooks.on_subscription_disabled = [](const std::string& id, const std::string& reason) {
    console::instance().error_line("subscription \"" + id + "\" disabled: " + reason);
  };
  return opts;
}

void start_session(session& s, const std::string& subscriptions_path, options opts) {
  try {
    s.h = std::make_unique<hub>(std::move(opts));
  } catch (const hookline::error& e) {
    throw usage_error(e.what());
  }
  load_subscriptions(s.h->subscriptions(), s.file);
  if (!s.file.postgres.empty()) {
    postgres_subscription_sync::options so;
    so.states = s.gate.store;  // a subscription a 410 disabled stays disabled through reloads
    so.on_load = [path = s.file.path, first = true](const load_report& r,
                                                    const std::string& error) mutable {
      if (!error.empty()) {
        console::instance().error_line("hookline: reloading subscriptions from " + path + ": " +
                                       error);
        return;
      }
      // The first load repeats what load_subscriptions() above already reported.
      if (!std::exchange(first, false)) {
        subscriptions_file f;
        f.path = path;
        for (const auto& line : describe_rejections(f, r, "skipped"))
          console::instance().error_line(line);
      }
    };
    try {
      s.sync = std::make_unique<postgres_subscription_sync>(s.h->subscriptions(), s.file.postgres,
                                                            std::move(so));
    } catch (const hookline::error& e) {
      throw usage_error(std::string("--subscriptions: ") + e.what());
    }
  }
  s.gate.open();
  (void)subscriptions_path;
}

// What the store still holds; the summary line is printed even when the store cannot say.
void set_store_pending(hub& h, summary& s) {
  try {
    s.pending = h.store().count_pending(std::chrono::system_clock::now());
  } catch (const hookline::error& e) {
    s.pending_unknown = true;
    console::instance().error_line(std::string("hookline: cannot count pending messages: ") +
                                   e.what());
  }
}

// The store may be out of reach for a while (a PostgreSQL restart): its calls retry for 30 s,
// then fail. A draining command says so once and keeps waiting until `deadline`. True when
// nothing is pending.
bool wait_idle_through_outages(hub& h, steady::time_point deadline) {
  bool told = false;
  while (true) {
    try {
      const auto left = std::max(steady::duration::zero(), deadline - steady::now());
      return h.wait_idle(std::chrono::duration_cast<duration>(left));
    } catch (const hookline::error& e) {
      if (!told)
        console::instance().error_line(std::string("hookline: ") + e.what() +
                                       "; still waiting for the store");
      told = true;
      if (steady::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  }
}

std::string rate(std::uint64_t n, double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f/s", seconds > 0 ? double(n) / seconds : 0.0);
  return buf;
}

// Publishes every line of the input; returns the number of bad lines.
struct publish_totals {
  std::uint64_t published = 0;
  std::uint64_t messages = 0;
  std::uint64_t errors = 0;
};

void report_line(const std::string& source, std::size_t line, const std::string& what) {
  console::instance().error_line(source + ":" + std::to_string(line) + ": " + what);
}

std::optional<event> parse_event_line(const std::string& text, const event_catalog& catalog,
                                      const std::string& source, std::size_t line) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    report_line(source, line,
                "not valid JSON at byte " + std::to_string(e.byte) + ": " + json_error_reason(e));
    return std::nullopt;
  }
  try {
    return event_from_json(j, catalog);
  } catch (const validation_error& e) {
    report_line(source, line, "invalid event: " + describe(e.errors()));
  } catch (const hookline::error& e) {
    report_line(source, line, std::string("invalid event: ") + e.what());
  } catch (const nlohmann::json::exception& e) {
    report_line(source, line, "invalid event: " + json_error_reason(e));
  }
  return std::nullopt;
}

void publish_input(hub& h, line_reader& reader, publish_totals& t) {
  const auto& catalog = h.subscriptions().catalog();
  while (true) {
    std::size_t first = 0;
    auto lines = reader.next_batch(first, 1024);
    if (lines.empty()) break;
    std::vector<event> events;
    std::vector<std::size_t> event_lines;
    for (std::size_t i = 0; i < lines.size(); ++i) {
      if (lines[i].find_first_not_of(" \t") == std::string::npos) continue;
      if (auto e = parse_event_line(lines[i], catalog, reader.display_name(), first + i)) {
        events.push_back(std::move(*e));
        event_lines.push_back(first + i);
      } else {
        ++t.errors;
      }
    }
    if (events.empty()) continue;
    try {
      auto r = h.publish(std::span<const event>(events));
      t.published += events.size();
      t.messages += r.message_ids.size();
    } catch (const hookline::error&) {
      // Find out which event the batch failed on, so the error names its line.
      for (std::size_t i = 0; i < events.size(); ++i) {
        try {
          auto r = h.publish(events[i]);
          ++t.published;
          t.messages += r.message_ids.size();
        } catch (const hookline::error& e) {
          report_line(reader.display_name(), event_lines[i],
                      std::string("not published: ") + e.what());
          ++t.errors;
        }
      }
    }
  }
}

// Exit 3 only when messages are still pending: a request under way when the drain timeout
// passed may still have settled its message while the hub stopped.
int finish(const summary& s) {
  std::cout << s.to_json_line() << std::endl;
  if (s.pending_unknown) return exit_failed;
  if (s.pending > 0) return exit_drain_timeout;
  if (s.errors > 0) return exit_failed;
  return exit_ok;
}

int run_publishing(const run_flags& f, bool dispatch) {
  session s;
  s.file = read_subscriptions_file(f.subscriptions);
  line_reader reader(f.events);
  const auto drain = seconds_to_duration(f.delivery.drain_timeout_seconds, "--drain-timeout");
  auto opts = base_options(f.store, f.delivery, f.verbosity, dispatch, s.gate);
  start_session(s, f.subscriptions, std::move(opts));
  hub& h = *s.h;

  publish_totals t;
  progress bar([&](double secs) {
    const auto c = h.counters();
    std::ostringstream o;
    o << "published " << c.published << " (" << rate(c.published, secs) << "), messages "
      << c.messages;
    if (dispatch) {
      o << ", delivered " << c.delivered << " (" << rate(c.delivered, secs) << "), dead " << c.dead
        << ", pending " << (c.messages - std::min(c.messages, c.delivered + c.dead));
    }
    return o.str();
  });
  publish_input(h, reader, t);
  if (dispatch) wait_idle_through_outages(h, steady::now() + drain);
  bar.finish();
  h.stop(std::chrono::seconds(1));

  summary sum;
  const auto c = h.counters();
  sum.published = t.published;
  sum.messages = t.messages;
  sum.delivered = c.delivered;
  sum.dead = c.dead;
  // publish leaves its messages for a worker: pending is what the store now holds.
  set_store_pending(h, sum);
  sum.errors = t.errors;
  if (!dispatch) {
    std::cout << sum.to_json_line() << std::endl;
    return sum.errors > 0 || sum.pending_unknown ? exit_failed : exit_ok;
  }
  return finish(sum);
}

}  // namespace

int run_dispatch(const run_flags& f) {
  return run_publishing(f, true);
}
int run_publish(const run_flags& f) {
  return run_publishing(f, false);
}

// A draining worker with nothing to do for a while says why it still waits: messages whose next
// attempt is later, or that another worker holds (after a crash, until its leases run out).
// Without it a worker waiting out a dead worker's leases looks hung.
class quiet_notice {
 public:
  void check(hub& h, steady::time_point now) {
    const auto c = h.counters();
    const std::uint64_t seen = c.attempts + c.delivered + c.dead;
    if (seen != seen_ || now - since_ < std::chrono::seconds(5)) {
      if (seen != seen_) since_ = now;
      seen_ = seen;
      return;
    }
    since_ = now;  // looked again in 5 s
    const auto wall = std::chrono::system_clock::now();
    const auto due = h.store().next_due(wall);
    if (!due || *due <= wall + std::chrono::seconds(1) || due == told_) return;
    told_ = due;
    const auto pending = h.store().count_pending(wall);
    console::instance().error_line(
        "hookline worker: " + std::to_string(pending) + (pending == 1 ? " message" : " messages") +
        " pending, none due before " + format_iso8601(*due) +
        " (a retry's delay, or the lease of a worker that has them or crashed with them)");
  }

 private:
  std::uint64_t seen_ = 0;
  steady::time_point since_ = steady::now();
  std::optional<hookline::time_point> told_;
};

int run_worker(const run_flags& f) {
  session s;
  s.file = read_subscriptions_file(f.subscriptions);
  const bool limited = f.drain && f.drain_timeout_given;
  const auto drain = seconds_to_duration(f.delivery.drain_timeout_seconds, "--drain-timeout");

  // Blocked before the hub starts its threads, so they inherit the mask and only sigtimedwait
  // below sees SIGINT/SIGTERM.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto opts = base_options(f.store, f.delivery, f.verbosity, true, s.gate);
  start_session(s, f.subscriptions, std::move(opts));
  hub& h = *s.h;

  progress bar([&](double secs) {
    const auto c = h.counters();
    std::ostringstream o;
    o << "delivered " << c.delivered << " (" << rate(c.delivered, secs) << "), dead " << c.dead
      << ", attempts " << c.attempts << ", retries " << c.retries;
    return o.str();
  });

  const auto started = steady::now();
  int signal_seen = 0;
  quiet_notice quiet;
  bool store_down = false;
  while (true) {
    if (f.drain) {
      // A store outage (its calls fail after 30 s) is waited out, as by a worker without --drain.
      try {
        if (h.wait_idle(std::chrono::milliseconds(200))) break;
        quiet.check(h, steady::now());
        store_down = false;
      } catch (const hookline::error& e) {
        if (!store_down)
          console::instance().error_line(std::string("hookline worker: ") + e.what() +
                                         "; still waiting for the store");
        store_down = true;
        // An error that comes at once (not an outage's 30 s of retries) must not spin.
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
    }
    timespec wait{};
    wait.tv_nsec = f.drain ? 0 : 200'000'000;
    siginfo_t info{};
    if (const int sig = sigtimedwait(&stop_signals, &info, &wait); sig > 0) {
      signal_seen = sig;
      break;
    }
    if (limited && steady::now() - started >= drain) break;
  }
  bar.finish();
  if (signal_seen) {
    console::instance().error_line(std::string("hookline worker: ") +
                                   (signal_seen == SIGINT ? "SIGINT" : "SIGTERM") +
                                   ", stopping (in-flight requests get 5 s to finish)");
  }
  h.stop(std::chrono::seconds(5));

  summary sum;
  const auto c = h.counters();
  sum.delivered = c.delivered;
  sum.dead = c.dead;
  set_store_pending(h, sum);
  std::cout << sum.to_json_line() << std::endl;
  if (sum.pending_unknown) return exit_failed;
  // As for dispatch: what the stop let finish is not pending.
  if (f.drain && sum.pending > 0) return exit_drain_timeout;
  return exit_ok;
}

namespace {

event default_fire_event(const subscription& sub) {
  event e;
  e.path = sub.filter.path.empty() ? "/Root" : sub.filter.path;
  e.event_name = "Create";
  e.content_type = "Folder";
  for (const auto& ct : sub.filter.content_types) {
    if (ct.name != "*" && !ct.name.empty()) e.content_type = ct.name;
    for (const auto& name : ct.events) {
      if (name != all_events) {
        e.event_name = name;
        break;
      }
    }
    break;
  }
  const auto slash = e.path.find_last_of('/');
  e.name = slash == std::string::npos ? e.path : e.path.substr(slash + 1);
  e.display_name = e.name;
  e.current_user = "hookline fire";
  return e;
}

struct fire_outcome {
  bool done = false;
  bool delivered = false;
  std::string reason;
  int attempts = 0;
  int last_status = 0;
};

}  // namespace

int run_fire(const fire_flags& f) {
  auto file = read_subscriptions_file(f.subscriptions);
  delivery_flags df = f.delivery;
  // A manual trigger answers now: one attempt unless a schedule is asked for.
  if (!df.retry_schedule) df.retry_schedule = "none";

  std::mutex mutex;
  std::condition_variable cv;
  std::map<std::string, fire_outcome> outcomes;
  std::map<std::string, std::vector<attempt_record>> attempts;

  session s;
  s.file = std::move(file);
  auto opts = base_options(f.store, df, f.verbosity, true, s.gate);
  opts.hooks.on_attempt = [&](const attempt_record& a) {
    std::lock_guard lock(mutex);
    attempts[a.message_id].push_back(a);
  };
  opts.hooks.on_delivered = [&](const message& m) {
    {
      std::lock_guard lock(mutex);
      outcomes[m.id] = {true, true, {}, m.attempts, m.last_status};
    }
    cv.notify_all();
  };
  auto on_dead = opts.hooks.on_dead;
  opts.hooks.on_dead = [&, on_dead](const message& m, const std::string& reason) {
    {
      std::lock_guard lock(mutex);
      outcomes[m.id] = {true, false, reason, m.attempts, m.last_status};
    }
    cv.notify_all();
    on_dead(m, reason);
  };
  const auto request_timeout = opts.delivery.request_timeout;
  const auto schedule = opts.delivery.retry.schedule;
  start_session(s, f.subscriptions, std::move(opts));
  hub& h = *s.h;

  auto sub = h.subscriptions().get(f.subscription_id);
  if (!sub) {
    for (std::size_t i = 0; i < s.file.list.size(); ++i) {
      const auto& j = s.file.list[i];
      const auto sid = j.is_object() ? subscription_from_json(j).id : std::string();
      if (sid == f.subscription_id) {
        load_report r;
        r.rejected.push_back(
            {i, sid, validate(subscription_from_json(j), h.subscriptions().catalog())});
        for (const auto& line : describe_rejections(s.file, r, "cannot be fired")) {
          console::instance().error_line(line);
        }
        return exit_usage;
      }
    }
    throw usage_error("--subscription: no subscription \"" + f.subscription_id + "\" in " +
                      f.subscriptions);
  }
  if (!sub->enabled) {
    console::instance().error_line("subscription \"" + sub->id +
                                   "\" is disabled; enable it to fire it");
    return exit_failed;
  }

  event e;
  if (f.event_json.empty()) {
    e = default_fire_event(*sub);
  } else {
    const std::string text = f.event_json == "-" ? read_stdin() : f.event_json;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& pe) {
      throw usage_error("EVENT_JSON: not valid JSON at byte " + std::to_string(pe.byte) + ": " +
                        json_error_reason(pe));
    }
    try {
      e = event_from_json(j, h.subscriptions().catalog());
    } catch (const validation_error& ve) {
      throw usage_error("EVENT_JSON: invalid event: " + describe(ve.errors()));
    } catch (const hookline::error& he) {
      throw usage_error(std::string("EVENT_JSON: ") + he.what());
    }
  }

  const std::string id = h.fire(sub->id, e);
  // Bound the wait by what the schedule can take, so a misbehaving endpoint cannot hang us.
  auto bound = std::chrono::milliseconds(10000);
  for (const auto& d : schedule) bound += d;
  bound += (schedule.size() + 1) * (request_timeout + std::chrono::seconds(5));

  fire_outcome out;
  std::vector<attempt_record> tries;
  {
    std::unique_lock lock(mutex);
    cv.wait_for(lock, bound, [&] { return outcomes[id].done; });
    out = outcomes[id];
    tries = attempts[id];
  }
  h.stop(std::chrono::seconds(1));

  for (const auto& a : tries) {
    std::ostringstream o;
    o << "attempt " << a.attempt << " " << a.http_method << " " << a.url << ": ";
    if (a.status_code) o << "HTTP " << a.status_code;
    if (!a.error.empty()) o << (a.status_code ? " " : "") << a.error;
    o << " in " << (a.duration.count() / 1000.0) << " ms";
    std::cout << o.str() << "\n";
  }
  nlohmann::json result = {
      {"messageId", id},
      {"subscriptionId", sub->id},
      {"status", !out.done       ? "pending"
                 : out.delivered ? "delivered"
                                 : "dead"},
      {"attempts", std::max<std::size_t>(std::size_t(std::max(out.attempts, 0)), tries.size())},
      {"httpStatus", out.last_status},
      {"error", out.reason}};
  std::cout << result.dump() << std::endl;
  if (!out.done) return exit_drain_timeout;
  return out.delivered ? exit_ok : exit_failed;
}

}  // namespace hookline::cli
