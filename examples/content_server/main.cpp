// content_server: a small content repository that links hookline the way sensenet would.
// Content operations publish sensenet's events (with the versioning events on top); webhook
// subscriptions are managed under /webhooks; deliveries go through a durable SQLite outbox.
// The REST API is described in docs/getting-started.md.
#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>

#include <spdlog/sinks/stdout_sinks.h>

#include "content_tree.hpp"
#include "hookline/json.hpp"

#include "../common/serve.hpp"

namespace {

using content_server::actor;
using content_server::content_tree;
using content_server::op_error;
using json = nlohmann::json;

const char* const usage =
    "usage: content_server [--port P] [--host 127.0.0.1] [--store URI] [--subscriptions FILE]\n"
    "                      [--allow-private] [--retry-schedule S1,S2,...] [--timeout SECONDS]\n"
    "                      [--port-file PATH] [--quiet] [--verbose]\n"
    "\n"
    "  --port P            0 (the default) picks a free port; it is printed and written to\n"
    "                      --port-file\n"
    "  --store URI         delivery outbox: sqlite:PATH (default sqlite:./content_server.db),\n"
    "                      memory: or postgres:CONNINFO\n"
    "  --subscriptions F   where subscriptions are kept (default: the SQLite path +\n"
    "                      .subscriptions.json; none for memory:)\n"
    "  --allow-private     let webhooks go to loopback/private addresses (demo, tests)\n"
    "  --retry-schedule    delays in seconds between attempts, e.g. 1,2,4\n"
    "\n"
    "Examples:\n"
    "  content_server --port 8080\n"
    "  content_server --port 0 --port-file /tmp/cs.port --store sqlite:/tmp/cs.db "
    "--allow-private --retry-schedule 1,2,4\n";

struct settings {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string store = "sqlite:./content_server.db";
  std::string subscriptions;
  bool allow_private = false;
  std::optional<std::vector<hookline::duration>> schedule;
  std::optional<hookline::duration> timeout;
  std::string port_file;
  bool quiet = false;
  int verbosity = 0;
};

[[noreturn]] void bad_argument(const std::string& what) {
  std::cerr << "content_server: " << what << "\n\n" << usage;
  std::exit(2);
}

double to_seconds(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  if (v.empty() || end != v.c_str() + v.size() || !std::isfinite(d) || d < 0 || d > 86400.0 * 366) {
    bad_argument(flag + ": \"" + v + "\" is not a non-negative number of seconds");
  }
  return d;
}

hookline::duration ms(double seconds) {
  return hookline::duration(std::llround(seconds * 1000));
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
      const auto v = value();
      char* end = nullptr;
      const long p = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || end != v.c_str() + v.size() || p < 0 || p > 65535) {
        bad_argument("--port: \"" + v + "\" is not a port number (0 picks one)");
      }
      s.port = static_cast<int>(p);
    } else if (a == "--host") {
      s.host = value();
    } else if (a == "--store") {
      s.store = value();
    } else if (a == "--subscriptions") {
      s.subscriptions = value();
    } else if (a == "--allow-private") {
      s.allow_private = true;
    } else if (a == "--retry-schedule") {
      std::vector<hookline::duration> delays;
      std::string list = value();
      if (list != "none" && !list.empty()) {
        std::size_t start = 0;
        while (true) {
          const auto comma = list.find(',', start);
          delays.push_back(ms(to_seconds("--retry-schedule", list.substr(start, comma - start))));
          if (comma == std::string::npos) break;
          start = comma + 1;
        }
      }
      s.schedule = std::move(delays);
    } else if (a == "--timeout") {
      const double t = to_seconds(a, value());
      if (t <= 0) bad_argument("--timeout: must be more than 0");
      s.timeout = ms(t);
    } else if (a == "--port-file") {
      s.port_file = value();
    } else if (a == "--quiet") {
      s.quiet = true;
    } else if (a == "-v" || a == "--verbose") {
      ++s.verbosity;
    } else {
      bad_argument("unknown argument \"" + a + "\"");
    }
  }
  if (s.subscriptions.empty() && s.store.rfind("sqlite:", 0) == 0) {
    s.subscriptions = s.store.substr(7) + ".subscriptions.json";
  }
  return s;
}

// Holds the dispatcher back until the subscriptions are loaded: the hub starts dispatching in
// its constructor, and a message whose subscription is not known yet must not be given up.
class gated_store final : public hookline::forwarding_store {
 public:
  using forwarding_store::forwarding_store;
  void open() {
    {
      std::lock_guard lock(mutex_);
      open_ = true;
    }
    cv_.notify_all();
  }
  std::vector<hookline::message> claim(const hookline::claim_request& r) override {
    {
      std::unique_lock lock(mutex_);
      if (!cv_.wait_for(lock, std::chrono::seconds(1), [&] { return open_; })) return {};
    }
    return forwarding_store::claim(r);
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = false;
};

void reply(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // Receivers' answers in the attempt log are not checked UTF-8: bad bytes become U+FFFD.
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void reply_error(httplib::Response& res, const op_error& e) {
  json body = {{"error", e.message}};
  if (e.status == 400) {
    json fields = json::array();
    for (const auto& f : e.fields) fields.push_back({{"field", f.field}, {"reason", f.reason}});
    body["invalidFields"] = std::move(fields);
  }
  reply(res, e.status, body);
}

void reply_invalid(httplib::Response& res, const std::string& what,
                   const std::vector<hookline::field_error>& errors) {
  reply_error(res, op_error{400, what + ": " + hookline::describe(errors), errors});
}

// An empty body is an empty object; anything else must be JSON.
std::optional<json> parse_body(const httplib::Request& req, httplib::Response& res) {
  if (req.body.find_first_not_of(" \t\r\n") == std::string::npos) return json::object();
  try {
    return json::parse(req.body);
  } catch (const json::parse_error& e) {
    const std::string why =
        "at byte " + std::to_string(e.byte) + ": " + hookline::json_error_reason(e);
    reply_error(res, op_error{400, "the body is not valid JSON: " + why, {{"body", why}}});
    return std::nullopt;
  }
}

actor actor_of(const httplib::Request& req) {
  actor who;
  if (req.has_header("X-User")) who.name = req.get_header_value("X-User");
  if (req.has_header("X-User-Id")) {
    who.id = std::strtoll(req.get_header_value("X-User-Id").c_str(), nullptr, 10);
  }
  return who;
}

json public_subscription(const hookline::subscription& s) {
  json j = hookline::subscription_to_json(s);
  j.erase("secret");
  j.erase("secrets");
  j["signed"] = !s.secrets.empty();
  j["secretCount"] = s.secrets.size();
  return j;
}

// The message as the library writes it (hookline/json.hpp), with its body.
json message_json(const hookline::message& m) {
  json j = m;
  try {
    j["body"] = json::parse(m.body);
  } catch (const json::exception&) {
    j["body"] = m.body;
  }
  return j;
}

std::string clock_time(hookline::time_point t) {
  // HH:MM:SS.mmm (UTC) out of the ISO 8601 form.
  const auto iso = hookline::format_iso8601(t);
  const auto tpos = iso.find('T');
  return tpos == std::string::npos ? iso : iso.substr(tpos + 1, 12);
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", s);
  return buf;
}

// The attempt log of one subscription as a readable table: when, what, the outcome and what
// happened next (retried after how long, delivered, given up).
std::string delivery_report(const std::string& id, const std::string& url,
                            const std::vector<hookline::attempt_record>& attempts,
                            const std::vector<hookline::message>& messages) {
  std::map<std::string, const hookline::message*> by_id;
  std::size_t pending = 0, delivered = 0, dead = 0;
  for (const auto& m : messages) {
    by_id[m.id] = &m;
    pending += m.status == hookline::message_status::pending;
    delivered += m.status == hookline::message_status::delivered;
    dead += m.status == hookline::message_status::dead;
  }
  std::string out = "subscription " + id + " -> " + url + "\n  " + std::to_string(messages.size()) +
                    " messages: " + std::to_string(delivered) + " delivered, " +
                    std::to_string(pending) + " pending, " + std::to_string(dead) + " dead; " +
                    std::to_string(attempts.size()) + " attempts\n";
  for (std::size_t i = 0; i < attempts.size(); ++i) {
    const auto& a = attempts[i];
    std::string path = "?";
    const hookline::message* m = by_id.count(a.message_id) ? by_id[a.message_id] : nullptr;
    if (m) {
      try {
        path = json::parse(m->body).value("path", "?");
      } catch (const json::exception&) {
      }
    }
    std::string result = a.status_code ? "HTTP " + std::to_string(a.status_code) : a.error;
    std::string next;
    if (a.success) {
      next = "delivered";
    } else {
      const hookline::attempt_record* later = nullptr;
      for (std::size_t k = i + 1; k < attempts.size() && !later; ++k) {
        if (attempts[k].message_id == a.message_id) later = &attempts[k];
      }
      if (later) {
        next =
            "retried " +
            seconds_text(std::chrono::duration<double>(later->started_at - a.started_at).count()) +
            " later";
      } else if (m && m->status == hookline::message_status::pending) {
        next = "next attempt at " + clock_time(m->next_attempt_at);
      } else if (m && m->status == hookline::message_status::dead) {
        next = "gave up: " + m->last_error;
      } else {
        next = "failed";
      }
    }
    char line[512];
    std::snprintf(line, sizeof line, "  %s  %-16s %-40s #%d  %-9s %7.1f ms  %s\n",
                  clock_time(a.started_at).c_str(), a.event_name.c_str(), path.c_str(), a.attempt,
                  result.c_str(), double(a.duration.count()) / 1000.0, next.c_str());
    out += line;
  }
  return out;
}

class server_state {
 public:
  server_state(const settings& s, hookline::hub& h) : settings_(s), hub_(h) {}

  void say(const std::string& line) {
    if (settings_.quiet) return;
    std::lock_guard lock(out_mutex_);
    std::cout << line << std::endl;
  }

  // Runs one content operation and publishes what it caused, under the tree lock so events
  // reach the outbox in the order the operations happened.
  void run(httplib::Response& res, const std::string& what, int ok_status,
           const std::function<content_tree::outcome(content_tree&)>& op) {
    std::lock_guard lock(tree_mutex_);
    auto outcome = op(tree_);
    if (auto* e = std::get_if<op_error>(&outcome)) {
      say(what + " -> " + std::to_string(e->status) + " " + e->message);
      reply_error(res, *e);
      return;
    }
    auto& r = std::get<content_tree::result>(outcome);
    json names = json::array();
    std::size_t messages = 0;
    if (!r.events.empty()) {
      try {
        messages = hub_.publish(std::span<const hookline::event>(r.events)).message_ids.size();
      } catch (const hookline::error& e) {
        reply(res, 503,
              {{"error", std::string("could not store the webhook messages: ") + e.what()}});
        return;
      }
    }
    std::string list;
    for (const auto& e : r.events) {
      names.push_back(e.event_name);
      list += (list.empty() ? "" : ", ") + e.event_name;
    }
    say(what + " -> " + (list.empty() ? std::string("no events") : list) + " (" +
        std::to_string(messages) + (messages == 1 ? " message)" : " messages)"));
    reply(res, ok_status, {{"content", r.content}, {"events", names}, {"messages", messages}});
  }

  std::optional<json> get(const std::string& path) {
    std::lock_guard lock(tree_mutex_);
    return tree_.get(path);
  }
  json trash() {
    std::lock_guard lock(tree_mutex_);
    return tree_.trash();
  }
  std::optional<hookline::event> event_for(const std::string& path, const std::string& name) {
    std::lock_guard lock(tree_mutex_);
    return tree_.event_for(path, name);
  }

  void save_subscriptions() {
    if (settings_.subscriptions.empty()) return;
    std::lock_guard lock(file_mutex_);
    hub_.subscriptions().save_file(settings_.subscriptions);
  }

  std::string new_subscription_id() {
    while (true) {
      auto id = "wh-" + std::to_string(++id_counter_);
      if (!hub_.subscriptions().get(id)) return id;
    }
  }

  hookline::hub& hub() { return hub_; }

 private:
  const settings& settings_;
  hookline::hub& hub_;
  std::mutex tree_mutex_, out_mutex_, file_mutex_;
  content_tree tree_;
  std::atomic<std::uint64_t> id_counter_{0};
};

void add_routes(httplib::Server& server, server_state& st) {
  server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    reply(res, 200,
          {{"name", "hookline content server example"},
           {"version", std::string(hookline::version())},
           {"endpoints",
            {"GET /content/<path>", "POST /content", "PATCH /content/<path>",
             "DELETE /content/<path>",
             "POST /content/<path>/(move|copy|rename|approve|reject|checkout|checkin|"
             "undocheckout|publish|trash|restore)",
             "GET /trash", "GET|POST /webhooks", "GET|PUT|DELETE /webhooks/<id>",
             "GET /webhooks/<id>/deliveries", "GET /webhooks/<id>/stats",
             "POST /webhooks/<id>/fire", "POST /deliveries/<message id>/redeliver"}}});
  });

  // Content.
  server.Post("/content", [&](const httplib::Request& req, httplib::Response& res) {
    auto body = parse_body(req, res);
    if (!body) return;
    const auto who = actor_of(req);
    std::string what = "create";
    if (body->is_object() && body->contains("parent") && body->contains("name") &&
        (*body)["parent"].is_string() && (*body)["name"].is_string()) {
      what += " " + (*body)["parent"].get<std::string>() + "/" + (*body)["name"].get<std::string>();
    }
    st.run(res, what, 201, [&](content_tree& t) { return t.create(*body, who); });
  });
  server.Post(
      R"(/content(/Root(?:/.*)?)/(move|copy|rename|approve|reject|checkout|checkin|undocheckout|publish|trash|restore))",
      [&](const httplib::Request& req, httplib::Response& res) {
        auto body = parse_body(req, res);
        if (!body) return;
        const auto path = content_server::normalise_path(req.matches[1]);
        const std::string verb = req.matches[2];
        if (path.empty()) return reply(res, 400, {{"error", "bad content path"}});
        const auto who = actor_of(req);
        st.run(res, verb + " " + path, 200,
               [&](content_tree& t) { return t.action(path, verb, *body, who); });
      });
  server.Get(
      R"(/content(/Root(?:/.*)?))", [&](const httplib::Request& req, httplib::Response& res) {
        const auto path = content_server::normalise_path(req.matches[1]);
        auto j = path.empty() ? std::nullopt : st.get(path);
        if (!j) return reply(res, 404, {{"error", "no content at " + std::string(req.matches[1])}});
        reply(res, 200, *j);
      });
  server.Patch(R"(/content(/Root(?:/.*)?))", [&](const httplib::Request& req,
                                                 httplib::Response& res) {
    auto body = parse_body(req, res);
    if (!body) return;
    const auto path = content_server::normalise_path(req.matches[1]);
    const auto who = actor_of(req);
    st.run(res, "modify " + path, 200, [&](content_tree& t) { return t.modify(path, *body, who); });
  });
  server.Delete(
      R"(/content(/Root(?:/.*)?))", [&](const httplib::Request& req, httplib::Response& res) {
        const auto path = content_server::normalise_path(req.matches[1]);
        const auto who = actor_of(req);
        st.run(res, "delete " + path, 200, [&](content_tree& t) { return t.remove(path, who); });
      });
  server.Get("/trash",
             [&](const httplib::Request&, httplib::Response& res) { reply(res, 200, st.trash()); });

  // Subscriptions.
  server.Get("/webhooks", [&](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    for (const auto& s : st.hub().subscriptions().list()) list.push_back(public_subscription(s));
    reply(res, 200, list);
  });
  server.Post("/webhooks", [&](const httplib::Request& req, httplib::Response& res) {
    auto body = parse_body(req, res);
    if (!body) return;
    if (!body->is_object()) {
      return reply_invalid(res, "invalid subscription", {{"", "must be a JSON object"}});
    }
    // The id as the library reads it (any spelling, or the sensenet Name); a new one only
    // when the body gives none.
    auto sub = hookline::subscription_from_json(*body);
    const bool id_problem = std::any_of(sub.parse_errors.begin(), sub.parse_errors.end(),
                                        [](const auto& e) { return e.field == "id"; });
    if (sub.id.empty() && !id_problem) sub.id = st.new_subscription_id();
    if (auto errors = hookline::validate(sub, st.hub().subscriptions().catalog());
        !errors.empty()) {
      return reply_invalid(res, "invalid subscription", errors);
    }
    try {
      st.hub().subscriptions().add(sub);
    } catch (const hookline::validation_error& e) {
      return reply_invalid(res, "invalid subscription", e.errors());
    } catch (const hookline::error& e) {
      return reply(res, 409, {{"error", e.what()}});
    }
    st.save_subscriptions();
    st.say("subscription " + sub.id + " created for " + sub.url);
    reply(res, 201, public_subscription(sub));
  });
  server.Get(R"(/webhooks/([^/]+))", [&](const httplib::Request& req, httplib::Response& res) {
    auto s = st.hub().subscriptions().get(std::string(req.matches[1]));
    if (!s) return reply(res, 404, {{"error", "no subscription " + std::string(req.matches[1])}});
    reply(res, 200, public_subscription(*s));
  });
  server.Put(R"(/webhooks/([^/]+))", [&](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    auto body = parse_body(req, res);
    if (!body) return;
    if (!body->is_object()) {
      return reply_invalid(res, "invalid subscription", {{"", "must be a JSON object"}});
    }
    auto old = st.hub().subscriptions().get(id);
    if (!old) return reply(res, 404, {{"error", "no subscription " + id}});
    auto sub = hookline::subscription_from_json(*body);
    if (!sub.id.empty() && sub.id != id) {
      return reply_invalid(res, "invalid subscription",
                           {{"id", "\"" + sub.id + "\" differs from the id in the URL"}});
    }
    sub.id = id;
    // Secrets are never shown by GET, so a PUT without them keeps the current ones.
    if (!body->contains("secret") && !body->contains("secrets")) sub.secrets = old->secrets;
    if (auto errors = hookline::validate(sub, st.hub().subscriptions().catalog());
        !errors.empty()) {
      return reply_invalid(res, "invalid subscription", errors);
    }
    try {
      st.hub().subscriptions().update(sub);
    } catch (const hookline::validation_error& e) {
      return reply_invalid(res, "invalid subscription", e.errors());
    } catch (const hookline::error& e) {
      return reply(res, 404, {{"error", e.what()}});
    }
    st.save_subscriptions();
    reply(res, 200, public_subscription(sub));
  });
  server.Delete(R"(/webhooks/([^/]+))", [&](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    if (!st.hub().subscriptions().remove(id)) {
      return reply(res, 404, {{"error", "no subscription " + id}});
    }
    st.save_subscriptions();
    res.status = 204;
  });
  server.Get(R"(/webhooks/([^/]+)/deliveries)", [&](const httplib::Request& req,
                                                    httplib::Response& res) {
    const std::string id = req.matches[1];
    hookline::attempt_query aq;
    aq.subscription_id = id;
    hookline::message_query mq;
    mq.subscription_id = id;
    if (req.has_param("limit")) {
      aq.limit = mq.limit = std::strtoull(req.get_param_value("limit").c_str(), nullptr, 10);
    }
    // Messages first: every attempt a delivered or dead message reflects is then in the log.
    auto messages = st.hub().store().query(mq);
    auto attempts = st.hub().store().attempts(aq);
    std::stable_sort(attempts.begin(), attempts.end(),
                     [](const auto& a, const auto& b) { return a.started_at < b.started_at; });
    if (req.get_param_value("format") == "text") {
      auto sub = st.hub().subscriptions().get(id);
      res.set_content(delivery_report(id, sub ? sub->url : std::string("?"), attempts, messages),
                      "text/plain; charset=utf-8");
      return;
    }
    json ja = json::array(), jm = json::array();
    for (const auto& a : attempts) ja.push_back(a);
    for (const auto& m : messages) jm.push_back(message_json(m));
    reply(res, 200, {{"subscriptionId", id}, {"attempts", ja}, {"messages", jm}});
  });
  server.Get(R"(/webhooks/([^/]+)/stats)",
             [&](const httplib::Request& req, httplib::Response& res) {
               const std::string id = req.matches[1];
               const auto s = st.hub().store().stats(id);
               hookline::message_query q;
               q.subscription_id = id;
               q.limit = 1000000;
               std::size_t pending = 0, delivered = 0, dead = 0;
               for (const auto& m : st.hub().store().query(q)) {
                 if (m.status == hookline::message_status::pending) ++pending;
                 if (m.status == hookline::message_status::delivered) ++delivered;
                 if (m.status == hookline::message_status::dead) ++dead;
               }
               json j = s;
               j["subscriptionId"] = id;
               j["messages"] = {{"pending", pending}, {"delivered", delivered}, {"dead", dead}};
               reply(res, 200, j);
             });
  server.Post(
      R"(/webhooks/([^/]+)/fire)", [&](const httplib::Request& req, httplib::Response& res) {
        const std::string id = req.matches[1];
        auto body = parse_body(req, res);
        if (!body) return;
        const json args = body->is_object() ? *body : json::object();
        const std::string path =
            content_server::normalise_path(args.value("path", std::string("/Root/Content")));
        const std::string name = args.value("eventName", std::string("Modify"));
        const auto canonical = st.hub().subscriptions().catalog().canonical(name);
        if (!canonical)
          return reply_invalid(res, "invalid event", {{"eventName", "unknown event " + name}});
        auto e = st.event_for(path, *canonical);
        if (!e) return reply(res, 404, {{"error", "no content at " + path}});
        try {
          const auto mid = st.hub().fire(id, *e);
          reply(res, 202, {{"messageId", mid}});
        } catch (const hookline::error& err) {
          reply(res, 404, {{"error", err.what()}});
        }
      });
  server.Post(R"(/deliveries/([^/]+)/redeliver)",
              [&](const httplib::Request& req, httplib::Response& res) {
                const std::string id = req.matches[1];
                if (!st.hub().redeliver(id))
                  return reply(res, 404, {{"error", "no message " + id}});
                reply(res, 202, {{"messageId", id}, {"status", "pending"}});
              });
}

}  // namespace

int main(int argc, char** argv) {
  const settings s = parse(argc, argv);

  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto logger = std::make_shared<spdlog::logger>("hookline",
                                                 std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_level(s.verbosity >= 2   ? spdlog::level::debug
                    : s.verbosity == 1 ? spdlog::level::info
                                       : spdlog::level::warn);

  hookline::options opts;
  opts.logger = logger;
  opts.delivery.allow_private_networks = s.allow_private;
  if (s.schedule) opts.delivery.retry.schedule = *s.schedule;
  if (s.timeout) {
    opts.delivery.request_timeout = *s.timeout;
    opts.delivery.connect_timeout = std::min(opts.delivery.connect_timeout, *s.timeout);
    opts.store_settings.request_timeout = *s.timeout;
  }
  opts.registry.types = std::make_shared<content_server::type_hierarchy>();
  opts.repository = "content-server";
  opts.hooks.on_dead = [logger](const hookline::message& m, const std::string& reason) {
    logger->warn("gave up on message {} to subscription {}: {}", m.id, m.subscription_id, reason);
  };
  opts.hooks.on_subscription_disabled = [logger](const std::string& id, const std::string& why) {
    logger->warn("subscription {} disabled: {}", id, why);
  };
  std::shared_ptr<gated_store> gate;
  try {
    gate = std::make_shared<gated_store>(hookline::make_store(s.store, opts.store_settings));
  } catch (const hookline::error& e) {
    std::cerr << "content_server: --store: " << e.what() << "\n";
    return 2;
  }
  opts.store = s.store;
  opts.store_instance = gate;
  hookline::hub hub(opts);

  if (!s.subscriptions.empty() && std::filesystem::exists(s.subscriptions)) {
    try {
      auto report = hub.subscriptions().load_file(s.subscriptions);
      for (const auto& r : report.rejected) {
        std::cerr << "content_server: " << s.subscriptions << ": subscription \"" << r.id
                  << "\" skipped: " << hookline::describe(r.errors) << "\n";
      }
    } catch (const hookline::error& e) {
      std::cerr << "content_server: " << e.what() << "\n";
      return 2;
    }
  }
  gate->open();

  httplib::Server server;
  server_state state(s, hub);
  add_routes(server, state);
  server.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        reply(res, 500, {{"error", what}});
      });

  const int port = hookline::examples::bind_server(server, "content_server", s.host, s.port);
  if (port <= 0) return 1;
  hookline::examples::write_port_file(s.port_file, port);
  std::cout << "content server listening on http://" << s.host << ":" << port << " (store "
            << s.store << ")" << std::endl;

  hookline::examples::serve_until_signalled(server, stop_signals);
  hub.stop(std::chrono::seconds(5));
  return 0;
}
