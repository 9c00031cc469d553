// subscriptions validate, sign and verify: offline helpers that send nothing.
#include <charconv>
#include <iostream>
#include <map>

#include "cli.hpp"

namespace hookline::cli {

int run_validate(const std::string& path) {
  const auto file = read_subscriptions_file(path);
  const event_catalog catalog;
  load_report report;
  std::map<std::string, std::size_t> first_with_id;
  for (std::size_t i = 0; i < file.list.size(); ++i) {
    const auto& j = file.list[i];
    std::vector<field_error> errors;
    std::string id;
    if (!j.is_object()) {
      errors.push_back(
          {"", "a subscription must be a JSON object, got " + std::string(j.type_name())});
    } else {
      try {
        auto sub = subscription_from_json(j);
        id = sub.id;
        errors = validate(sub, catalog);
      } catch (const hookline::error& e) {
        errors.push_back({"", e.what()});
      }
    }
    if (!id.empty()) {
      auto [it, fresh] = first_with_id.emplace(id, i);
      if (!fresh) {
        std::string where = "entry " + std::to_string(it->second + 1);
        if (auto line = file.line_of(it->second); line)
          where += " (line " + std::to_string(line) + ")";
        errors.push_back({"id", "duplicate: " + where + " has the same id"});
      }
    }
    if (!errors.empty())
      report.rejected.push_back({i, id, std::move(errors)});
    else
      ++report.loaded;
  }
  for (const auto& line : describe_rejections(file, report, "is invalid"))
    std::cout << line << "\n";
  const auto n = file.list.size();
  std::cout << path << ": " << n << " subscription" << (n == 1 ? "" : "s") << ", " << report.loaded
            << " valid, " << report.rejected.size() << " invalid" << std::endl;
  return report.rejected.empty() ? exit_ok : exit_failed;
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
