#include "base64.hpp"

#include <array>
#include <cstdint>

namespace hookline::detail {
namespace {

constexpr std::string_view alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

constexpr std::uint8_t invalid = 0xff;

constexpr std::array<std::uint8_t, 256> make_decode_table() {
  std::array<std::uint8_t, 256> table{};
  for (auto& v : table) v = invalid;
  for (std::size_t i = 0; i < alphabet.size(); ++i) {
    table[static_cast<unsigned char>(alphabet[i])] = static_cast<std::uint8_t>(i);
  }
  return table;
}

constexpr auto decode_table = make_decode_table();

}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  base64_append(out, bytes);
  return out;
}

void base64_append(std::string& out, std::string_view bytes) {
  const auto byte = [&](std::size_t i) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i]));
  };
  const std::size_t at = out.size();
  out.resize(at + (bytes.size() + 2) / 3 * 4);
  char* p = out.data() + at;
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t n = byte(i) << 16 | byte(i + 1) << 8 | byte(i + 2);
    *p++ = alphabet[(n >> 18) & 63];
    *p++ = alphabet[(n >> 12) & 63];
    *p++ = alphabet[(n >> 6) & 63];
    *p++ = alphabet[n & 63];
  }
  const std::size_t rest = bytes.size() - i;
  if (rest == 0) return;
  const std::uint32_t n = byte(i) << 16 | (rest == 2 ? byte(i + 1) << 8 : 0);
  *p++ = alphabet[(n >> 18) & 63];
  *p++ = alphabet[(n >> 12) & 63];
  *p++ = rest == 2 ? alphabet[(n >> 6) & 63] : '=';
  *p = '=';
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    std::size_t padding = 0;
    if (last) {
      if (text[i + 3] == '=') padding = text[i + 2] == '=' ? 2 : 1;
    }
    std::uint32_t n = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      std::uint8_t v = 0;
      if (k < 4 - padding) {
        v = decode_table[static_cast<unsigned char>(text[i + k])];
        if (v == invalid) return std::nullopt;
      }
      n = n << 6 | v;
    }
    out += static_cast<char>((n >> 16) & 0xff);
    if (padding == 2) {
      if ((n & 0xffff) != 0) return std::nullopt;  // non-canonical trailing bits
      break;
    }
    out += static_cast<char>((n >> 8) & 0xff);
    if (padding == 1) {
      if ((n & 0xff) != 0) return std::nullopt;
      break;
    }
    out += static_cast<char>(n & 0xff);
  }
  return out;
}

}  // namespace hookline::detail
