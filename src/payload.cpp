#include "hookline/payload.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <iterator>
#include <limits>
#include <optional>

#include "hookline/error.hpp"
#include "hookline/json.hpp"

namespace hookline {
namespace {

using namespace std::chrono;

// ---------------------------------------------------------------------------------------------
// Calendar arithmetic on whole seconds (int64), so offsets such as +5000years never overflow the
// nanosecond system_clock; results are kept to years 0000..9999, the range ISO 8601 writes with
// four digits.

constexpr std::int64_t first_second = -62167219200;  // 0000-01-01T00:00:00Z
constexpr std::int64_t last_second = 253402300799;   // 9999-12-31T23:59:59Z

struct instant {
  std::int64_t seconds = 0;  // since the Unix epoch
  std::int64_t nanos = 0;    // 0..999'999'999
};

instant to_instant(system_clock::time_point t) {
  const auto s = floor<seconds>(t);
  return {s.time_since_epoch().count(), duration_cast<nanoseconds>(t - s).count()};
}

std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  const auto q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

void append_digits(std::string& out, std::int64_t value, int width) {
  std::array<char, 20> buf{};
  int n = 0;
  do {
    buf[static_cast<std::size_t>(n++)] = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value > 0);
  for (int i = n; i < width; ++i) out += '0';
  while (n > 0) out += buf[static_cast<std::size_t>(--n)];
}

struct civil_time {
  year_month_day date;
  std::int64_t second_of_day = 0;
};

civil_time to_civil(std::int64_t secs) {
  const auto day = floor_div(secs, 86400);
  return {year_month_day{sys_days{days{day}}}, secs - day * 86400};
}

void append_date(std::string& out, const year_month_day& d) {
  append_digits(out, static_cast<int>(d.year()), 4);
  out += '-';
  append_digits(out, static_cast<unsigned>(d.month()), 2);
  out += '-';
  append_digits(out, static_cast<unsigned>(d.day()), 2);
}

void append_time(std::string& out, std::int64_t second_of_day) {
  append_digits(out, second_of_day / 3600, 2);
  out += ':';
  append_digits(out, second_of_day / 60 % 60, 2);
  out += ':';
  append_digits(out, second_of_day % 60, 2);
}

// `YYYY-MM-DDTHH:MM:SS.fffZ` with `fraction_digits` digits of the second: 3 for hookline's own
// times, 7 for .NET's round-trip form ("O") that sensenet's date templates write
// (2024-01-31T10:20:30.4560000Z).
std::string format_date_time(const instant& t, int fraction_digits = 3) {
  const auto c = to_civil(t.seconds);
  std::string out;
  out.reserve(21 + static_cast<std::size_t>(fraction_digits));
  append_date(out, c.date);
  out += 'T';
  append_time(out, c.second_of_day);
  out += '.';
  std::int64_t fraction = t.nanos;
  for (int i = fraction_digits; i < 9; ++i) fraction /= 10;
  append_digits(out, fraction, fraction_digits);
  out += 'Z';
  return out;
}

enum class time_unit { second, minute, hour, day, workday, week, month, year };

// sensenet's unit spellings (TemplateReplacerBase.EvaluateModifier), matched case-insensitively,
// plus the singular forms hookline accepted before ("second").
std::optional<time_unit> parse_unit(std::string_view u) {
  static constexpr std::array<std::pair<std::string_view, time_unit>, 24> units{{
      {"s", time_unit::second},       {"sec", time_unit::second},
      {"secs", time_unit::second},    {"second", time_unit::second},
      {"seconds", time_unit::second}, {"m", time_unit::minute},
      {"mins", time_unit::minute},    {"minute", time_unit::minute},
      {"minutes", time_unit::minute}, {"h", time_unit::hour},
      {"hour", time_unit::hour},      {"hours", time_unit::hour},
      {"d", time_unit::day},          {"day", time_unit::day},
      {"days", time_unit::day},       {"workdays", time_unit::workday},
      {"w", time_unit::week},         {"week", time_unit::week},
      {"weeks", time_unit::week},     {"month", time_unit::month},
      {"months", time_unit::month},   {"y", time_unit::year},
      {"year", time_unit::year},      {"years", time_unit::year},
  }};
  std::string lower(u);
  for (auto& ch : lower) ch = static_cast<char>(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
  for (const auto& [name, unit] : units) {
    if (lower == name) return unit;
  }
  return std::nullopt;
}

// `t` moved by `amount` units; nullopt when the result leaves years 0000..9999. Months and years
// move the calendar date and clamp the day to the month's end (Jan 31 + 1 month = Feb 28/29),
// like .NET's AddMonths that sensenet uses.
std::optional<instant> shift(instant t, std::int64_t amount, time_unit unit) {
  std::int64_t step = 0;
  switch (unit) {
    case time_unit::second:
      step = 1;
      break;
    case time_unit::minute:
      step = 60;
      break;
    case time_unit::hour:
      step = 3600;
      break;
    case time_unit::day:
      step = 86400;
      break;
    case time_unit::week:
      step = 604800;
      break;
    case time_unit::workday: {
      // Day by day, counting Monday to Friday only; a weekend start counts from that day.
      if (amount > 100000 || amount < -100000) return std::nullopt;
      const std::int64_t dir = amount < 0 ? -1 : 1;
      auto day = floor_div(t.seconds, 86400);
      const auto second_of_day = t.seconds - day * 86400;
      for (std::int64_t left = amount < 0 ? -amount : amount; left > 0;) {
        day += dir;
        const weekday wd{sys_days{days{day}}};
        if (wd != Saturday && wd != Sunday) --left;
      }
      t.seconds = day * 86400 + second_of_day;
      if (t.seconds < first_second || t.seconds > last_second) return std::nullopt;
      return t;
    }
    case time_unit::month:
    case time_unit::year: {
      const auto c = to_civil(t.seconds);
      const std::int64_t months_to_add = unit == time_unit::year ? amount * 12 : amount;
      const std::int64_t total = static_cast<int>(c.date.year()) * std::int64_t{12} +
                                 (static_cast<unsigned>(c.date.month()) - 1) + months_to_add;
      const auto y = floor_div(total, 12);
      if (y < 0 || y > 9999) return std::nullopt;
      const auto m = static_cast<unsigned>(total - y * 12 + 1);
      const year_month_day_last last{year{static_cast<int>(y)}, month_day_last{month{m}}};
      const auto d = std::min(c.date.day(), last.day());
      const sys_days day{year_month_day{year{static_cast<int>(y)}, month{m}, d}};
      t.seconds = day.time_since_epoch().count() * 86400 + c.second_of_day;
      return t;
    }
  }
  t.seconds += amount * step;  // amount is at most 9 digits: no overflow
  if (t.seconds < first_second || t.seconds > last_second) return std::nullopt;
  return t;
}

// ---------------------------------------------------------------------------------------------
// Templates

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '+' || c == '-' || c == '(' || c == ')';
}

// Scans JSON text for @@name@@, tracking whether each one sits inside a string literal. `on`
// (name, in_string, out) appends a replacement and returns true, or returns false to keep the
// original text. Everything else is copied as is.
template <class OnTemplate>
std::string scan_templates(std::string_view text, OnTemplate&& on) {
  std::string out;
  out.reserve(text.size() + 64);
  bool in_string = false;
  bool escaped = false;
  std::size_t copied = 0;
  std::size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
        ++i;
        continue;
      }
      if (c == '\\') {
        escaped = true;
        ++i;
        continue;
      }
      if (c == '"') {
        in_string = false;
        ++i;
        continue;
      }
    } else if (c == '"') {
      in_string = true;
      ++i;
      continue;
    }
    if (c == '@' && i + 1 < text.size() && text[i + 1] == '@') {
      std::size_t j = i + 2;
      while (j < text.size() && is_name_char(text[j])) ++j;
      if (j > i + 2 && j + 1 < text.size() && text[j] == '@' && text[j + 1] == '@') {
        out.append(text.substr(copied, i - copied));
        if (!on(text.substr(i + 2, j - i - 2), in_string, out))
          out.append(text.substr(i, j + 2 - i));
        i = j + 2;
        copied = i;
        continue;
      }
    }
    ++i;
  }
  out.append(text.substr(copied));
  return out;
}

bool is_blank(std::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; });
}

// The text of a string as it appears between the quotes of a JSON string literal. Invalid
// UTF-8 is replaced (U+FFFD) rather than allowed to break the body.
void append_escaped(std::string& out, std::string_view value) {
  const auto quoted = nlohmann::json(std::string(value))
                          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  out.append(quoted, 1, quoted.size() - 2);
}

void append_value(std::string& out, const nlohmann::json& value, bool in_string) {
  const auto dump = [](const nlohmann::json& v) {
    return v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  if (!in_string) {
    out += dump(value);
  } else if (value.is_string()) {
    append_escaped(out, value.get_ref<const std::string&>());
  } else if (!value.is_null()) {
    append_escaped(out, dump(value));
  }
}

nlohmann::json optional_string(const std::string& s) {
  return s.empty() ? nlohmann::json(nullptr) : nlohmann::json(s);
}

// A built-in event field named by a one-segment chain (content.Path), or nullopt.
std::optional<nlohmann::json> event_field(std::string_view name, const event& e) {
  if (iequals(name, "Path")) return nlohmann::json(e.path);
  if (iequals(name, "Name")) return nlohmann::json(e.name);
  if (iequals(name, "DisplayName")) return nlohmann::json(e.display_name);
  if (iequals(name, "Id") || iequals(name, "NodeId")) return nlohmann::json(e.node_id);
  if (iequals(name, "VersionId")) return nlohmann::json(e.version_id);
  if (iequals(name, "Version")) return nlohmann::json(e.version);
  if (iequals(name, "ContentType") || iequals(name, "Type")) return nlohmann::json(e.content_type);
  if (iequals(name, "ModifiedBy")) return nlohmann::json(e.modified_by);
  if (iequals(name, "PreviousVersion")) {
    return e.previous_version ? nlohmann::json(*e.previous_version) : nlohmann::json(nullptr);
  }
  if (iequals(name, "VersionModificationDate")) return optional_string(e.version_modification_date);
  return std::nullopt;
}

// Follows a dotted chain through the event's data: exact key first, then a case-insensitive
// match; numeric segments index arrays. Null when any step is missing.
nlohmann::json data_field(std::string_view chain, const event& e) {
  const nlohmann::json* cur = &e.data;
  std::size_t pos = 0;
  while (pos <= chain.size()) {
    const auto end = std::min(chain.find('.', pos), chain.size());
    const auto seg = chain.substr(pos, end - pos);
    pos = end + 1;
    const nlohmann::json* next = nullptr;
    if (cur->is_object() && !seg.empty()) {
      if (auto it = cur->find(seg); it != cur->end()) {
        next = &*it;
      } else {
        for (auto item = cur->begin(); item != cur->end(); ++item) {
          if (iequals(item.key(), seg)) {
            next = &item.value();
            break;
          }
        }
      }
    } else if (cur->is_array() && !seg.empty() && seg.size() <= 9 &&
               std::all_of(seg.begin(), seg.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      const auto index = std::stoul(std::string(seg));
      if (index < cur->size()) next = &(*cur)[index];
    }
    if (next == nullptr) return nullptr;
    cur = next;
  }
  return *cur;
}

// `s` as an int64 when it is written as one (digits, an optional '-', no leading zero).
std::optional<std::int64_t> whole_number(std::string_view s) {
  const auto digits_at = s.starts_with('-') ? 1u : 0u;
  if (s.size() == digits_at || s.size() > 19 || (s[digits_at] == '0' && s.size() > digits_at + 1))
    return std::nullopt;
  std::int64_t v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size()) return std::nullopt;
  return v;
}

struct modifier {
  std::int64_t amount = 0;
  std::string_view unit;  // empty: the template's default unit
};

// sensenet's date modifiers, after the template's name: `+3days`, `-2h`, `+4` (default unit) or
// the method form `.AddDays(3)`, `.Subtract(2)`, `.MinusHours(-1)` (operators Add, Plus, Minus,
// Subtract, Substract; case-insensitive). At most 9 digits. nullopt for anything else.
std::optional<modifier> parse_modifier(std::string_view rest) {
  while (rest.starts_with('.')) rest.remove_prefix(1);
  const auto is_letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  const auto read_number = [](std::string_view& r, std::int64_t& out) {
    std::int64_t sign = 1;
    if (!r.empty() && (r[0] == '+' || r[0] == '-')) {
      if (r[0] == '-') sign = -1;
      r.remove_prefix(1);
    }
    std::size_t k = 0;
    while (k < r.size() && r[k] >= '0' && r[k] <= '9') ++k;
    if (k == 0 || k > 9) return false;
    out = sign * std::stoll(std::string(r.substr(0, k)));
    r.remove_prefix(k);
    return true;
  };
  modifier m;
  if (rest.starts_with('+') || rest.starts_with('-')) {
    if (!read_number(rest, m.amount)) return std::nullopt;
    if (!std::all_of(rest.begin(), rest.end(), is_letter)) return std::nullopt;
    m.unit = rest;
    return m;
  }
  for (const auto& [op, sign] : {std::pair<std::string_view, std::int64_t>{"add", 1},
                                 {"plus", 1},
                                 {"minus", -1},
                                 {"subtract", -1},
                                 {"substract", -1}}) {
    if (rest.size() <= op.size() || !iequals(rest.substr(0, op.size()), op)) continue;
    auto r = rest.substr(op.size());
    std::size_t k = 0;
    while (k < r.size() && is_letter(r[k])) ++k;
    m.unit = r.substr(0, k);
    r.remove_prefix(k);
    if (!r.starts_with('(')) return std::nullopt;
    r.remove_prefix(1);
    if (!read_number(r, m.amount) || r != ")") return std::nullopt;
    m.amount *= sign;
    return m;
  }
  return std::nullopt;
}

// The value of a template, or nullopt for a name hookline does not know (left unchanged).
std::optional<nlohmann::json> resolve(std::string_view name, const event& e,
                                      const render_context& ctx) {
  const auto base_end = std::min(name.find_first_of(".+-"), name.size());
  const auto base = name.substr(0, base_end);
  const auto rest = name.substr(base_end);

  if (iequals(base, "content")) {
    if (rest.empty()) return nlohmann::json(e.node_id);
    if (rest.size() < 2 || rest[0] != '.') return std::nullopt;
    const auto chain = rest.substr(1);
    if (chain.find('.') == std::string_view::npos) {
      if (auto v = event_field(chain, e)) return v;
    }
    return data_field(chain, e);
  }

  // As sensenet: currentdate, currentday and today are today's midnight (UTC) and a modifier
  // without a unit counts days; currenttime is now and counts minutes.
  const bool midnight =
      iequals(base, "currentdate") || iequals(base, "currentday") || iequals(base, "today");
  if (midnight || iequals(base, "currenttime")) {
    auto t = to_instant(ctx.now);
    if (midnight) t = {floor_div(t.seconds, 86400) * 86400, 0};
    if (!rest.empty()) {
      const auto m = parse_modifier(rest);
      if (!m) return std::nullopt;
      const auto unit =
          m->unit.empty() ? std::optional<time_unit>(midnight ? time_unit::day : time_unit::minute)
                          : parse_unit(m->unit);
      if (!unit) return std::nullopt;
      const auto shifted = shift(t, m->amount, *unit);
      if (!shifted) return std::nullopt;
      t = *shifted;
    }
    if (t.seconds < first_second || t.seconds > last_second) return std::nullopt;
    return nlohmann::json(format_date_time(t, 7));
  }

  if (!rest.empty()) return std::nullopt;
  if (iequals(base, "currentuser")) {
    // sensenet writes the user's id: a user that is a whole number becomes a JSON number.
    if (const auto id = whole_number(e.current_user)) return nlohmann::json(*id);
    return optional_string(e.current_user);
  }
  if (iequals(base, "eventname")) return nlohmann::json(e.event_name);
  if (iequals(base, "repository")) return nlohmann::json(ctx.repository);
  return std::nullopt;
}

// nlohmann's reason with the position in the text as written, but not the text it last read:
// a payload may hold a token.
std::string parse_reason(const nlohmann::json::exception& ex) {
  // nlohmann's "parse error at line 1, column 29: ", kept; the rest without what it last read.
  std::string_view what = ex.what();
  if (const auto p = what.find("] "); p != std::string_view::npos) what.remove_prefix(p + 2);
  std::string position;
  if (what.starts_with("parse error")) position = std::string(what.substr(0, what.find(": ") + 2));
  return position + json_error_reason(ex);
}

const char* type_name(const nlohmann::json& j) {
  return j.type_name();
}

template <class Json>
Json expand_impl(std::string_view payload_text, const event& e, const render_context& ctx) {
  if (is_blank(payload_text)) return Json::object();
  const auto text =
      scan_templates(payload_text, [&](std::string_view name, bool in_string, std::string& out) {
        if (auto value = resolve(name, e, ctx)) {
          append_value(out, *value, in_string);
          return true;
        }
        if (in_string) return false;
        // Outside a string an unknown template would not be JSON: keep its text as a string.
        out += '"';
        out += "@@";
        out.append(name);
        out += "@@";
        out += '"';
        return true;
      });
  Json result;
  try {
    result = Json::parse(text);
  } catch (const nlohmann::json::exception& ex) {
    throw error("custom payload is not valid JSON after template expansion: " + parse_reason(ex));
  }
  if (!result.is_object()) {
    throw error(std::string("custom payload must be a JSON object, not ") + result.type_name());
  }
  return result;
}

template <class Json>
Json default_impl(const event& e, std::string_view subscription_id, const render_context& ctx) {
  Json j = Json::object();
  j["nodeId"] = e.node_id;
  j["versionId"] = e.version_id;
  j["version"] = e.version;
  j["previousVersion"] = e.previous_version ? Json(*e.previous_version) : Json(nullptr);
  j["versionModificationDate"] =
      e.version_modification_date.empty() ? Json(nullptr) : Json(e.version_modification_date);
  j["modifiedBy"] = e.modified_by;
  j["path"] = e.path;
  j["name"] = e.name;
  j["displayName"] = e.display_name;
  j["eventName"] = e.event_name;
  j["subscriptionId"] = std::string(subscription_id);
  j["sentTime"] = format_iso8601(ctx.now);
  j["repository"] = ctx.repository;
  j["changedFields"] = e.changed_fields;
  return j;
}

// True when `s` is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above
// U+10FFFF), exactly what nlohmann's serializer accepts without replacing anything.
bool valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    const unsigned c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    std::size_t n = 0;
    unsigned lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (static_cast<std::size_t>(end - p) <= n) return false;
    if (p[1] < lo || p[1] > hi) return false;
    for (std::size_t i = 2; i <= n; ++i) {
      if (p[i] < 0x80 || p[i] > 0xBF) return false;
    }
    p += n + 1;
  }
  return true;
}

// `s` as a JSON string, byte for byte what nlohmann's dump() writes for valid UTF-8 (not ASCII
// only): the short escapes, \u00xx in lower case for other control characters, the rest as is.
void append_json_string(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  out += '"';
  std::size_t run = 0;  // start of the bytes not yet copied
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        out += "\\u00";
        out += hex[c >> 4];
        out += hex[c & 15];
    }
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

void append_json_number(std::string& out, std::int64_t v) {
  char buf[24];
  const auto [end, ec] = std::to_chars(std::begin(buf), std::end(buf), v);
  out.append(buf, static_cast<std::size_t>(end - buf));
}

// The default body written directly: the same bytes as default_impl<ordered_json>(...).dump(),
// at a fraction of the cost (the body is rendered once per message, on the publisher's thread).
// Empty when a string is not valid UTF-8: the caller then takes nlohmann's path, which replaces
// the bad bytes.
std::string default_body_text(const event& e, std::string_view subscription_id,
                              const render_context& ctx) {
  const std::string sent = format_iso8601(ctx.now);
  const std::string_view texts[] = {
      e.version,
      e.previous_version ? std::string_view(*e.previous_version) : std::string_view(),
      e.version_modification_date,
      e.path,
      e.name,
      e.display_name,
      e.event_name,
      subscription_id,
      sent,
      ctx.repository};
  std::size_t size = 256;
  for (auto t : texts) {
    if (!valid_utf8(t)) return {};
    size += t.size();
  }
  for (const auto& f : e.changed_fields) {
    if (!valid_utf8(f)) return {};
    size += f.size() + 3;
  }
  std::string out;
  out.reserve(size + size / 8);
  out += "{\"nodeId\":";
  append_json_number(out, e.node_id);
  out += ",\"versionId\":";
  append_json_number(out, e.version_id);
  out += ",\"version\":";
  append_json_string(out, e.version);
  out += ",\"previousVersion\":";
  if (e.previous_version) {
    append_json_string(out, *e.previous_version);
  } else {
    out += "null";
  }
  out += ",\"versionModificationDate\":";
  if (e.version_modification_date.empty()) {
    out += "null";
  } else {
    append_json_string(out, e.version_modification_date);
  }
  out += ",\"modifiedBy\":";
  append_json_number(out, e.modified_by);
  out += ",\"path\":";
  append_json_string(out, e.path);
  out += ",\"name\":";
  append_json_string(out, e.name);
  out += ",\"displayName\":";
  append_json_string(out, e.display_name);
  out += ",\"eventName\":";
  append_json_string(out, e.event_name);
  out += ",\"subscriptionId\":";
  append_json_string(out, subscription_id);
  out += ",\"sentTime\":";
  append_json_string(out, sent);
  out += ",\"repository\":";
  append_json_string(out, ctx.repository);
  out += ",\"changedFields\":[";
  for (std::size_t i = 0; i < e.changed_fields.size(); ++i) {
    if (i > 0) out += ',';
    append_json_string(out, e.changed_fields[i]);
  }
  out += "]}";
  return out;
}

// Digits [first, first+count) of s as a number; false when any is not a digit.
bool digits(std::string_view s, std::size_t first, std::size_t count, int& value) {
  if (first + count > s.size()) return false;
  value = 0;
  for (std::size_t i = first; i < first + count; ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    value = value * 10 + (s[i] - '0');
  }
  return true;
}

}  // namespace

nlohmann::json default_payload(const event& e, std::string_view subscription_id,
                               const render_context& ctx) {
  return default_impl<nlohmann::json>(e, subscription_id, ctx);
}

nlohmann::json expand_payload(std::string_view payload_text, const event& e,
                              const render_context& ctx) {
  return expand_impl<nlohmann::json>(payload_text, e, ctx);
}

namespace {

// Json.NET's JObject.Merge with its defaults, as sensenet merges the custom payload: a null does
// not replace a value and an array is appended to an array; anything else replaces. (Objects
// would merge key by key, but the default body holds none.)
void merge_over(nlohmann::ordered_json& into, nlohmann::ordered_json&& from) {
  for (auto& [key, value] : from.items()) {
    auto it = into.find(key);
    if (it == into.end()) {
      into[key] = std::move(value);
    } else if (value.is_null()) {
      continue;
    } else if (it->is_array() && value.is_array()) {
      for (auto& item : value) it->push_back(std::move(item));
    } else {
      *it = std::move(value);
    }
  }
}

}  // namespace

std::string render_body(const event& e, const subscription& s, const render_context& ctx) {
  if (is_blank(s.payload)) {
    if (auto text = default_body_text(e, s.id, ctx); !text.empty()) return text;
  }
  // ordered_json keeps sensenet's field order, then the custom keys in the order written.
  auto body = default_impl<nlohmann::ordered_json>(e, s.id, ctx);
  if (!is_blank(s.payload)) {
    auto custom = expand_impl<nlohmann::ordered_json>(s.payload, e, ctx);
    merge_over(body, std::move(custom));
  }
  return body.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string check_payload(std::string_view payload_text) {
  if (is_blank(payload_text)) return {};
  // Bare templates become `null` padded to the same length, so parse positions stay true to the
  // text the user wrote; templates inside strings are already valid string content.
  const auto text =
      scan_templates(payload_text, [](std::string_view name, bool in_string, std::string& out) {
        if (in_string) return false;
        out += "null";
        out.append(name.size(), ' ');
        return true;
      });
  nlohmann::json parsed;
  try {
    parsed = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& ex) {
    return "not valid JSON: " + parse_reason(ex);
  }
  if (!parsed.is_object()) return std::string("must be a JSON object, not ") + type_name(parsed);
  return {};
}

std::string format_iso8601(std::chrono::system_clock::time_point t) {
  return format_date_time(to_instant(t));
}

std::optional<std::chrono::system_clock::time_point> parse_iso8601(std::string_view s) {
  int y = 0, mo = 0, d = 0;
  if (!digits(s, 0, 4, y) || s.size() < 10 || s[4] != '-' || !digits(s, 5, 2, mo) || s[7] != '-' ||
      !digits(s, 8, 2, d)) {
    return std::nullopt;
  }
  const year_month_day date{year{y}, month{static_cast<unsigned>(mo)},
                            day{static_cast<unsigned>(d)}};
  if (!date.ok()) return std::nullopt;
  std::int64_t secs = sys_days{date}.time_since_epoch().count() * std::int64_t{86400};
  std::int64_t nanos = 0;
  if (s.size() == 10) return system_clock::time_point{seconds{secs}};

  if (s[10] != 'T' && s[10] != 't') return std::nullopt;
  int hh = 0, mm = 0, ss = 0;
  if (!digits(s, 11, 2, hh) || s.size() < 16 || s[13] != ':' || !digits(s, 14, 2, mm)) {
    return std::nullopt;
  }
  std::size_t pos = 16;
  if (pos < s.size() && s[pos] == ':') {
    if (!digits(s, pos + 1, 2, ss)) return std::nullopt;
    pos += 3;
    if (pos < s.size() && (s[pos] == '.' || s[pos] == ',')) {
      ++pos;
      const auto start = pos;
      std::int64_t scale = 100'000'000;
      while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
        nanos += (s[pos] - '0') * scale;  // digits past nanoseconds are read and dropped
        scale /= 10;
        ++pos;
      }
      if (pos == start) return std::nullopt;
    }
  }
  // 60 admits a leap second (it reads as the first second of the next minute).
  if (hh > 23 || mm > 59 || ss > 60) return std::nullopt;
  secs += hh * 3600 + mm * 60 + ss;

  if (pos < s.size()) {
    const char sign = s[pos];
    if ((sign == 'Z' || sign == 'z') && pos + 1 == s.size()) {
      pos = s.size();
    } else if (sign == '+' || sign == '-') {
      int oh = 0, om = 0;
      if (!digits(s, pos + 1, 2, oh)) return std::nullopt;
      pos += 3;
      if (pos < s.size()) {
        if (s[pos] == ':') ++pos;
        if (!digits(s, pos, 2, om)) return std::nullopt;
        pos += 2;
      }
      if (pos != s.size() || oh > 23 || om > 59) return std::nullopt;
      const int offset = (oh * 3600 + om * 60) * (sign == '+' ? 1 : -1);
      secs -= offset;
    } else {
      return std::nullopt;
    }
  }
  // Beyond system_clock's nanosecond range (about 1677..2262) the value cannot be represented.
  constexpr std::int64_t limit = std::numeric_limits<std::int64_t>::max() / 1'000'000'000 - 1;
  if (secs > limit || secs < -limit) return std::nullopt;
  return system_clock::time_point{duration_cast<system_clock::duration>(seconds{secs}) +
                                  duration_cast<system_clock::duration>(nanoseconds{nanos})};
}

}  // namespace hookline
