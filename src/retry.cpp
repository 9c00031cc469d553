#include "hookline/retry.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <ctime>
#include <string>

namespace hookline {

std::vector<duration> retry_policy::default_schedule() {
  using namespace std::chrono;
  // Standard Webhooks: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
  return {seconds(5), minutes(5), minutes(30), hours(2), hours(5),
          hours(10),  hours(14),  hours(20),   hours(24)};
}

std::size_t retry_policy::attempts_allowed() const {
  return max_attempts != 0 ? max_attempts : schedule.size() + 1;
}

std::optional<duration> retry_policy::next_delay(std::size_t attempt,
                                                 std::optional<duration> retry_after,
                                                 std::mt19937_64& rng) const {
  if (attempt == 0) attempt = 1;
  if (attempt >= attempts_allowed()) return std::nullopt;
  // Past the end of the schedule (max_attempts above its size + 1) the last delay repeats; an
  // empty schedule with max_attempts > 1 retries at once.
  duration base{0};
  if (!schedule.empty()) base = schedule[std::min(attempt - 1, schedule.size() - 1)];
  double factor = 1.0;
  const double j = std::clamp(jitter, 0.0, 1.0);
  if (j > 0 && base.count() > 0) {
    std::uniform_real_distribution<double> dist(1.0 - j, 1.0 + j);
    factor = dist(rng);
  }
  auto delay = duration(static_cast<duration::rep>(std::llround(double(base.count()) * factor)));
  if (retry_after) {
    const auto bound = std::clamp(*retry_after, duration{0}, retry_after_max);
    delay = std::max(delay, bound);
  }
  return std::max(delay, duration{0});
}

bool retry_policy::expired(time_point created_at, time_point at) const {
  return max_age.count() > 0 && at - created_at >= max_age;
}

namespace {

bool parse_int(std::string_view s, int& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && p == s.data() + s.size();
}

int month_index(std::string_view m) {
  static constexpr std::string_view names[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                               "jul", "aug", "sep", "oct", "nov", "dec"};
  if (m.size() != 3) return -1;
  std::string lower(m);
  for (auto& c : lower) c = char(std::tolower(static_cast<unsigned char>(c)));
  for (int i = 0; i < 12; ++i)
    if (names[i] == lower) return i;
  return -1;
}

std::vector<std::string_view> split_ws(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    std::size_t j = i;
    while (j < s.size() && s[j] != ' ' && s[j] != '\t') ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

bool parse_hms(std::string_view s, int& h, int& m, int& sec) {
  if (s.size() != 8 || s[2] != ':' || s[5] != ':') return false;
  return parse_int(s.substr(0, 2), h) && parse_int(s.substr(3, 2), m) &&
         parse_int(s.substr(6, 2), sec) && h < 24 && m < 60 && sec <= 60;
}

// RFC 9110 HTTP-date: IMF-fixdate, the obsolete RFC 850 form and asctime().
std::optional<time_point> parse_http_date(std::string_view v) {
  auto parts = split_ws(v);
  int day = 0, month = -1, year = 0, h = 0, m = 0, s = 0;
  if (parts.size() == 6 && parts[5] == "GMT") {  // Sun, 06 Nov 1994 08:49:37 GMT
    if (!parse_int(parts[1], day) || (month = month_index(parts[2])) < 0 ||
        !parse_int(parts[3], year) || !parse_hms(parts[4], h, m, s))
      return std::nullopt;
  } else if (parts.size() == 4 && parts[3] == "GMT") {  // Sunday, 06-Nov-94 08:49:37 GMT
    auto d = parts[1];
    if (d.size() != 9 || d[2] != '-' || d[6] != '-') return std::nullopt;
    if (!parse_int(d.substr(0, 2), day) || (month = month_index(d.substr(3, 3))) < 0 ||
        !parse_int(d.substr(7, 2), year) || !parse_hms(parts[2], h, m, s))
      return std::nullopt;
    year += year < 70 ? 2000 : 1900;
  } else if (parts.size() == 5) {  // Sun Nov  6 08:49:37 1994
    if ((month = month_index(parts[1])) < 0 || !parse_int(parts[2], day) ||
        !parse_hms(parts[3], h, m, s) || !parse_int(parts[4], year))
      return std::nullopt;
  } else {
    return std::nullopt;
  }
  if (day < 1 || day > 31 || year < 1970) return std::nullopt;
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = month;
  tm.tm_mday = day;
  tm.tm_hour = h;
  tm.tm_min = m;
  tm.tm_sec = s;
  const std::time_t t = timegm(&tm);
  if (t == std::time_t(-1)) return std::nullopt;
  return std::chrono::system_clock::from_time_t(t);
}

}  // namespace

std::optional<duration> parse_retry_after(std::string_view value, time_point now) {
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t' || value.back() == '\r'))
    value.remove_suffix(1);
  if (value.empty()) return std::nullopt;
  if (std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    // Absurdly long numbers saturate rather than fail: the cap applies later anyway.
    if (value.size() > 9) return std::chrono::duration_cast<duration>(std::chrono::hours(24 * 365));
    int secs = 0;
    if (!parse_int(value, secs)) return std::nullopt;
    return std::chrono::duration_cast<duration>(std::chrono::seconds(secs));
  }
  auto at = parse_http_date(value);
  if (!at) return std::nullopt;
  auto d = std::chrono::duration_cast<duration>(*at - now);
  return std::max(d, duration{0});
}

}  // namespace hookline
