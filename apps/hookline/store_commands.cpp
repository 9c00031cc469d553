// deliveries, attempts, stats, redeliver, recover and enable: operator commands that work on a
// store directly, so they need no subscriptions file and never send anything themselves (a
// worker delivers).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include <hookline/json.hpp>

#include "cli.hpp"

namespace hookline::cli {

namespace {

// Read-only commands must not create an empty SQLite file by mistake.
std::shared_ptr<delivery_store> open_existing_store(const std::string& uri) {
  if (uri == "memory" || uri.rfind("memory:", 0) == 0) {
    // A new process's memory store is always empty: an answer from it would mislead.
    throw usage_error("--store: " + uri +
                      " holds messages only inside the process that made it; give sqlite:PATH or "
                      "postgres:CONNINFO");
  }
  constexpr std::string_view sqlite = "sqlite:";
  if (uri.rfind(sqlite, 0) == 0) {
    std::string path = uri.substr(sqlite.size());
    path = path.substr(0, path.find('?'));  // options such as ?synchronous=full
    std::error_code ec;
    if (path != ":memory:" && !std::filesystem::exists(path, ec)) {
      throw usage_error("--store: " + uri + ": no such file");
    }
  }
  try {
    store_options so;
    so.logger = make_logger(0);  // the store's warnings (a reconnect) reach stderr
    return make_store(uri, so);
  } catch (const hookline::error& e) {
    throw usage_error(std::string("--store: ") + e.what());
  }
}

std::string when(time_point t) {
  return t == time_point{} ? std::string("-") : format_iso8601(t);
}

// One table cell from text a receiver or a network error chose: control characters (which a
// terminal would act on) become spaces, and a long text is cut at a character boundary.
std::string clip(std::string s, std::size_t max) {
  for (auto& c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) c = ' ';
  }
  if (s.size() > max) {
    std::size_t cut = max - 3;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    s = s.substr(0, cut) + "...";
  }
  return s;
}

// One JSON line; bytes that are not UTF-8 (a receiver's answer is not checked) become U+FFFD
// instead of ending the listing.
std::string json_line(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Columns padded to their widest cell, two spaces apart.
void print_table(const std::vector<std::string>& head,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width(head.size());
  for (std::size_t i = 0; i < head.size(); ++i) width[i] = head[i].size();
  for (const auto& r : rows) {
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  auto print = [&](const std::vector<std::string>& r) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    std::cout << line << "\n";
  };
  print(head);
  for (const auto& r : rows) print(r);
}

void print_messages(const std::vector<message>& ms) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : ms) {
    rows.push_back({m.id, m.subscription_id, m.event_name, std::string(to_string(m.status)),
                    std::to_string(m.attempts),
                    m.last_status ? std::to_string(m.last_status) : std::string("-"),
                    when(m.created_at),
                    m.status == message_status::pending ? when(m.next_attempt_at) : "-",
                    m.last_error.empty() ? std::string("-") : clip(m.last_error, 70)});
  }
  print_table({"MESSAGE", "SUBSCRIPTION", "EVENT", "STATUS", "ATTEMPTS", "HTTP", "CREATED",
               "NEXT ATTEMPT", "LAST ERROR"},
              rows);
}

std::string milliseconds_text(std::chrono::microseconds d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f ms", static_cast<double>(d.count()) / 1000.0);
  return buf;
}

void print_attempts(const std::vector<attempt_record>& as) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& a : as) {
    rows.push_back({when(a.started_at), a.message_id, a.subscription_id, std::to_string(a.attempt),
                    a.status_code ? std::to_string(a.status_code) : std::string("-"),
                    milliseconds_text(a.duration), a.success ? std::string("ok") : "failed",
                    a.error.empty() ? std::string("-") : clip(a.error, 60),
                    a.response_head.empty() ? std::string("-") : clip(a.response_head, 40)});
  }
  print_table({"STARTED", "MESSAGE", "SUBSCRIPTION", "ATTEMPT", "HTTP", "DURATION", "RESULT",
               "ERROR", "RESPONSE"},
              rows);
}

time_point parse_since(const std::string& since) {
  if (since.empty()) return time_point{};
  auto t = parse_iso8601(since);
  if (!t) {
    throw usage_error("--since: \"" + since +
                      "\" is not an ISO 8601 date or time (e.g. 2026-11-27 or "
                      "2026-11-27T08:00:00Z)");
  }
  return *t;
}

}  // namespace

int run_deliveries(const deliveries_flags& f) {
  message_query q;
  if (!f.status.empty()) {
    q.status = parse_message_status(f.status);
    if (!q.status)
      throw usage_error("--status: \"" + f.status + "\" is not pending, delivered or dead");
  }
  if (!f.subscription.empty()) q.subscription_id = f.subscription;
  q.limit = f.limit + 1;  // one more, to tell whether the limit cut the list short
  auto store = open_existing_store(f.store);
  auto ms = store->query(q);
  if (ms.size() > f.limit) {
    ms.resize(f.limit);
    console::instance().error_line("hookline deliveries: stopped at the limit of " +
                                   std::to_string(f.limit) +
                                   (f.limit == 1 ? " message" : " messages") + "; --limit sets it");
  }
  if (f.json) {
    for (const auto& m : ms) std::cout << json_line(m) << "\n";
  } else {
    print_messages(ms);
  }
  std::cout.flush();
  return exit_ok;
}

int run_attempts(const attempts_flags& f) {
  attempt_query q;
  if (!f.message.empty()) q.message_id = f.message;
  if (!f.subscription.empty()) q.subscription_id = f.subscription;
  if (!f.since.empty()) q.since = parse_since(f.since);
  q.limit = f.limit + 1;  // one more, to tell whether the limit cut the list short
  auto store = open_existing_store(f.store);
  auto as = store->attempts(q);
  if (as.size() > f.limit) {
    as.erase(as.begin());  // oldest first: the extra one is the oldest
    console::instance().error_line("hookline attempts: the most recent " + std::to_string(f.limit) +
                                   " only (--limit sets how many)");
  }
  if (f.json) {
    for (const auto& a : as) std::cout << json_line(a) << "\n";
  } else {
    print_attempts(as);
  }
  std::cout.flush();
  return exit_ok;
}

int run_stats(const stats_flags& f) {
  auto store = open_existing_store(f.store);
  std::vector<std::vector<std::string>> rows;
  for (const auto& id : f.subscriptions) {
    const auto st = store->stats(id);
    if (f.json) {
      nlohmann::json j = st;
      j["subscriptionId"] = id;
      std::cout << json_line(j) << "\n";
      continue;
    }
    char rate[16];
    std::snprintf(rate, sizeof rate, "%.1f%%", st.success_rate() * 100.0);
    rows.push_back({id, std::to_string(st.calls), std::to_string(st.status_1xx),
                    std::to_string(st.status_2xx), std::to_string(st.status_3xx),
                    std::to_string(st.status_4xx), std::to_string(st.status_5xx),
                    std::to_string(st.failures), std::to_string(st.errors),
                    st.calls ? std::string(rate) : std::string("-"),
                    std::to_string(st.request_bytes), std::to_string(st.response_bytes)});
  }
  if (!f.json) {
    print_table({"SUBSCRIPTION", "CALLS", "1XX", "2XX", "3XX", "4XX", "5XX", "FAILURES", "ERRORS",
                 "SUCCESS", "REQUEST BYTES", "RESPONSE BYTES"},
                rows);
  }
  std::cout.flush();
  return exit_ok;
}

int run_redeliver(const std::string& uri, const std::string& message_id) {
  auto store = open_existing_store(uri);
  if (!store->redeliver(message_id, std::chrono::system_clock::now())) {
    console::instance().error_line("redeliver: no message \"" + message_id + "\" in " +
                                   redact_store_uri(uri));
    return exit_failed;
  }
  std::cout << "message " << message_id
            << " is pending again; a running worker (or the next one) delivers it" << std::endl;
  return exit_ok;
}

int run_enable(const std::string& uri, const std::string& subscription_id) {
  auto store = open_existing_store(uri);
  const auto states = store->load_states();
  const auto it = std::find_if(states.begin(), states.end(), [&](const subscription_state& s) {
    return s.subscription_id == subscription_id;
  });
  if (it == states.end() || !it->disabled) {
    std::cout << "subscription \"" << subscription_id << "\" is not disabled in this store"
              << std::endl;
    return exit_ok;
  }
  // Enabled, and its failure timer starts over.
  store->save_state({subscription_id, false, {}, std::nullopt});
  std::cout << "subscription \"" << subscription_id << "\" enabled (it was disabled: "
            << (it->reason.empty() ? "no reason saved" : it->reason)
            << "); workers started from now on send to it, running ones keep it disabled until "
               "they are restarted"
            << std::endl;
  return exit_ok;
}

int run_recover(const std::string& uri, const std::string& subscription_id,
                const std::string& since) {
  const time_point from = parse_since(since);
  auto store = open_existing_store(uri);
  const auto n = store->recover(subscription_id, from, std::chrono::system_clock::now());
  std::cout << "recovered " << n << " dead message" << (n == 1 ? "" : "s") << " of subscription \""
            << subscription_id << "\"" << (since.empty() ? "" : " since " + since) << std::endl;
  return exit_ok;
}

}  // namespace hookline::cli
