#pragma once
// Private helpers shared by the model (event, filter, subscription) and the registry.
// Thread safety: reentrant free functions.

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "hookline/error.hpp"
#include "hookline/filter.hpp"

namespace hookline::detail {

inline char ascii_lower(char c) noexcept {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

/// `text` with control characters (below 0x20, and 0x7f) written as \xNN: what a receiver or an
/// event producer sends must not forge log lines or drive a terminal.
inline std::string printable(std::string_view text) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += ch;
    }
  }
  return out;
}

inline std::string ascii_upper(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return out;
}

inline std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = ascii_lower(c);
  return out;
}

inline bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

/// Where a value was found in a JSON object, and under which of the accepted key spellings.
struct found_key {
  const nlohmann::json* value = nullptr;
  std::string key;
  explicit operator bool() const noexcept { return value != nullptr; }
};

/// Looks up any of `names` in `obj`, ignoring case (sensenet's Newtonsoft.Json binds property
/// names case-insensitively, so exports written by hand or by other tools differ in case). When
/// several keys match with different values, an error naming `field` is recorded and the first
/// spelling in `names` order wins.
found_key find_key(const nlohmann::json& obj, std::initializer_list<std::string_view> names,
                   std::string_view field, std::vector<field_error>& errors);

/// Parses a filter from JSON, recording every problem under `prefix` (e.g. "filter") instead of
/// stopping at the first one.
void parse_filter(const nlohmann::json& j, filter& f, const std::string& prefix,
                  std::vector<field_error>& errors);

/// "a JSON object", "a string", ... for error messages.
std::string describe_type(const nlohmann::json& j);

/// Splits a content path into lower-cased segments, skipping empty ones (so "/Root//a/" and
/// "/root/A" give {"root", "a"}). Paths compare case-insensitively, as sensenet's InTree does.
std::vector<std::string> path_key(std::string_view path);

}  // namespace hookline::detail
