// subscriptions validate|import|list|remove, sign and verify: helpers that send nothing.
#include <charconv>
#include <iostream>
#include <map>

#include "cli.hpp"

namespace hookline::cli {

namespace {

struct checked_file {
  load_report report;
  std::vector<subscription> valid;
};

// Every entry of a file checked as the registry would load it, plus ids repeated in the file.
checked_file check_entries(const subscriptions_file& file) {
  const event_catalog catalog;
  checked_file out;
  std::map<std::string, std::size_t> first_with_id;
  for (std::size_t i = 0; i < file.list.size(); ++i) {
    const auto& j = file.list[i];
    std::vector<field_error> errors;
    std::optional<subscription> sub;
    if (!j.is_object()) {
      errors.push_back(
          {"", "a subscription must be a JSON object, got " + std::string(j.type_name())});
    } else {
      try {
        sub = subscription_from_json(j);
        errors = validate(*sub, catalog);
      } catch (const hookline::error& e) {
        errors.push_back({"", e.what()});
      }
    }
    const std::string id = sub ? sub->id : std::string();
    if (!id.empty()) {
      auto [it, fresh] = first_with_id.emplace(id, i);
      if (!fresh) {
        std::string where = "entry " + std::to_string(it->second + 1);
        if (auto line = file.line_of(it->second); line)
          where += " (line " + std::to_string(line) + ")";
        errors.push_back({"id", "duplicate: " + where + " has the same id"});
      }
    }
    if (!errors.empty()) {
      out.report.rejected.push_back({i, id, std::move(errors)});
    } else {
      ++out.report.loaded;
      out.valid.push_back(std::move(*sub));
    }
  }
  return out;
}

std::string postgres_conninfo(const std::string& store) {
  constexpr std::string_view scheme = "postgres:";
  if (store.rfind(scheme, 0) != 0 || store.size() == scheme.size()) {
    throw usage_error(
        "--store: subscriptions live in a PostgreSQL database: give "
        "postgres:CONNINFO, not " +
        redact_store_uri(store));
  }
  return store.substr(scheme.size());
}

}  // namespace

int run_validate(const std::string& path) {
  const auto file = read_subscriptions_file(path);
  const auto checked = check_entries(file);
  for (const auto& line : describe_rejections(file, checked.report, "is invalid"))
    std::cout << line << "\n";
  const auto n = file.list.size();
  std::cout << file.path << ": " << n << " subscription" << (n == 1 ? "" : "s") << ", "
            << checked.report.loaded << " valid, " << checked.report.rejected.size() << " invalid"
            << std::endl;
  return checked.report.rejected.empty() ? exit_ok : exit_failed;
}

int run_import(const std::string& store, const std::string& path) {
  const auto conninfo = postgres_conninfo(store);
  const auto file = read_subscriptions_file(path);
  const auto checked = check_entries(file);
  for (const auto& line : describe_rejections(file, checked.report, "is invalid, not imported"))
    console::instance().error_line(line);
  // Stored in hookline's own form (camelCase, a string id), whatever form the file used.
  for (const auto& sub : checked.valid)
    save_postgres_subscription(conninfo, subscription_to_json(sub));
  std::cout << file.path << ": " << checked.valid.size() << " subscription"
            << (checked.valid.size() == 1 ? "" : "s") << " imported into "
            << redact_store_uri(store) << ", " << checked.report.rejected.size() << " invalid"
            << std::endl;
  return checked.report.rejected.empty() ? exit_ok : exit_failed;
}

int run_list(const std::string& store) {
  for (const auto& row : load_postgres_subscriptions(postgres_conninfo(store)))
    std::cout << row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  std::cout.flush();
  return exit_ok;
}

int run_remove(const std::string& store, const std::string& id) {
  if (!remove_postgres_subscription(postgres_conninfo(store), id)) {
    console::instance().error_line("subscriptions remove: no subscription \"" + id + "\" in " +
                                   redact_store_uri(store));
    return exit_failed;
  }
  std::cout << "subscription \"" << id << "\" removed; running workers drop it at once"
            << std::endl;
  return exit_ok;
}

namespace {

std::optional<std::int64_t> parse_int64(const std::string& s) {
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

int run_sign(const sign_flags& f) {
  const auto ts = parse_int64(f.timestamp);
  if (!ts) {
    throw usage_error("--timestamp: \"" + f.timestamp +
                      "\" is not an integer (seconds since 1970)");
  }
  for (const auto& s : f.secrets) {
    if (auto why = check_secret(s); !why.empty()) throw usage_error("--secret: " + why);
  }
  const std::string body = read_stdin();
  std::string value;
  try {
    value = f.secrets.size() == 1 ? sign(f.secrets.front(), f.id, *ts, body)
                                  : signature_header(f.secrets, f.id, *ts, body);
  } catch (const hookline::error& e) {
    throw usage_error(std::string("--secret: ") + e.what());
  }
  std::cout << value << std::endl;
  return exit_ok;
}

int run_verify(const sign_flags& f) {
  for (const auto& s : f.secrets) {
    if (auto why = check_secret(s); !why.empty()) {
      console::instance().error_line("invalid: --secret: " + why);
      return exit_failed;
    }
  }
  const std::string body = read_stdin();
  auto now = std::chrono::system_clock::now();
  std::chrono::seconds tolerance(300);
  if (f.tolerance_seconds) {
    if (*f.tolerance_seconds < 0) throw usage_error("--tolerance: must be 0 or more seconds");
    tolerance = std::chrono::seconds(static_cast<std::int64_t>(*f.tolerance_seconds));
    if (*f.tolerance_seconds == 0) {
      // 0 = do not check the time: pretend "now" is the signed timestamp.
      if (auto ts = parse_int64(f.timestamp)) {
        now = std::chrono::system_clock::time_point(std::chrono::seconds(*ts));
        tolerance = std::chrono::seconds(60);
      }
    }
  }
  verify_result r;
  try {
    r = verify(f.secrets, f.id, f.timestamp, body, f.signature, now, tolerance);
  } catch (const hookline::error& e) {
    r.ok = false;
    r.reason = e.what();
  }
  if (!r) {
    console::instance().error_line("invalid: " + r.reason);
    return exit_failed;
  }
  std::cout << "valid" << std::endl;
  return exit_ok;
}

}  // namespace hookline::cli
