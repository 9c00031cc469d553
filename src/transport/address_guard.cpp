#include "transport/address_guard.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <charconv>
#include <cstring>

#include "hookline/error.hpp"

namespace hookline::detail {

namespace {

struct rule {
  ip_network net;
  const char* reason;
};

ip_network net4(std::uint8_t a, std::uint8_t b, std::uint8_t c, std::uint8_t d, int prefix) {
  ip_network n;
  n.bytes = {a, b, c, d};
  n.prefix = prefix;
  return n;
}

ip_network net6(std::initializer_list<std::uint16_t> groups, int prefix) {
  ip_network n;
  n.v6 = true;
  std::size_t i = 0;
  for (auto g : groups) {
    n.bytes[i++] = static_cast<std::uint8_t>(g >> 8);
    n.bytes[i++] = static_cast<std::uint8_t>(g & 0xff);
  }
  n.prefix = prefix;
  return n;
}

// First match wins, so the narrower rules come first.
const std::vector<rule>& v4_rules() {
  static const std::vector<rule> rules = {
      {net4(255, 255, 255, 255, 32), "broadcast"},
      {net4(0, 0, 0, 0, 32), "unspecified"},
      {net4(0, 0, 0, 0, 8), "\"this network\" (0.0.0.0/8)"},
      {net4(10, 0, 0, 0, 8), "private network (10.0.0.0/8)"},
      {net4(100, 64, 0, 0, 10), "shared address space / CGNAT (100.64.0.0/10)"},
      {net4(127, 0, 0, 0, 8), "loopback"},
      {net4(169, 254, 169, 254, 32), "link-local (cloud metadata service)"},
      {net4(169, 254, 0, 0, 16), "link-local (169.254.0.0/16)"},
      {net4(172, 16, 0, 0, 12), "private network (172.16.0.0/12)"},
      {net4(192, 0, 0, 0, 24), "IETF protocol assignments (192.0.0.0/24)"},
      {net4(192, 0, 2, 0, 24), "documentation (192.0.2.0/24)"},
      {net4(192, 88, 99, 0, 24), "6to4 relay anycast (192.88.99.0/24)"},
      {net4(192, 168, 0, 0, 16), "private network (192.168.0.0/16)"},
      {net4(198, 18, 0, 0, 15), "benchmarking (198.18.0.0/15)"},
      {net4(198, 51, 100, 0, 24), "documentation (198.51.100.0/24)"},
      {net4(203, 0, 113, 0, 24), "documentation (203.0.113.0/24)"},
      {net4(224, 0, 0, 0, 4), "multicast (224.0.0.0/4)"},
      {net4(240, 0, 0, 0, 4), "reserved (240.0.0.0/4)"},
  };
  return rules;
}

const std::vector<rule>& v6_rules() {
  static const std::vector<rule> rules = {
      {net6({}, 128), "unspecified"},
      {net6({0, 0, 0, 0, 0, 0, 0, 1}, 128), "loopback"},
      {net6({0x64, 0xff9b, 1}, 48), "local-use NAT64 (64:ff9b:1::/48)"},
      {net6({0x100}, 64), "discard-only (100::/64)"},
      {net6({0x2001, 0xdb8}, 32), "documentation (2001:db8::/32)"},
      // Teredo (2001::/32) hides a client's IPv4 address, loopback or private included, and a host
      // with a Teredo client would deliver there.
      {net6({0x2001}, 23), "IETF protocol assignments, Teredo included (2001::/23)"},
      {net6({0x3fff}, 20), "documentation (3fff::/20)"},
      {net6({0xfc00}, 7), "unique local / private network (fc00::/7)"},
      {net6({0xfe80}, 10), "link-local (fe80::/10)"},
      {net6({0xfec0}, 10), "site-local (fec0::/10)"},
      {net6({0xff00}, 8), "multicast (ff00::/8)"},
  };
  return rules;
}

struct embedding {
  ip_network net;
  std::size_t offset;  // where the IPv4 address sits in the 16 bytes
  const char* name;
};

const std::vector<embedding>& embeddings() {
  static const std::vector<embedding> list = {
      {net6({0, 0, 0, 0, 0, 0xffff}, 96), 12, "IPv4-mapped"},
      {net6({0, 0, 0, 0, 0xffff, 0}, 96), 12, "IPv4-translated"},
      {net6({0x64, 0xff9b}, 96), 12, "NAT64"},
      {net6({0x2002}, 16), 2, "6to4"},
      // Checked last: :: and ::1 are matched by the rules before this is reached.
      {net6({}, 96), 12, "IPv4-compatible"},
  };
  return list;
}

[[noreturn]] void bad_network(std::string_view text, const char* why) {
  throw hookline::error("allowed_cidrs: \"" + std::string(text) + "\" is not a valid CIDR: " + why);
}

}  // namespace

bool ip_network::contains(bool addr_v6, const std::uint8_t* addr) const {
  if (addr_v6 != v6) return false;
  int full = prefix / 8;
  if (std::memcmp(bytes.data(), addr, static_cast<std::size_t>(full)) != 0) return false;
  int rest = prefix % 8;
  if (rest == 0) return true;
  auto mask = static_cast<std::uint8_t>(0xff << (8 - rest));
  return (bytes[static_cast<std::size_t>(full)] & mask) ==
         (addr[static_cast<std::size_t>(full)] & mask);
}

ip_network parse_network(std::string_view text) {
  auto slash = text.find('/');
  std::string address(text.substr(0, slash));
  if (address.empty()) bad_network(text, "the address is missing");
  ip_network n;
  if (address.find(':') != std::string::npos) {
    n.v6 = true;
    if (inet_pton(AF_INET6, address.c_str(), n.bytes.data()) != 1) {
      bad_network(text, "not an IPv6 address");
    }
  } else if (inet_pton(AF_INET, address.c_str(), n.bytes.data()) != 1) {
    bad_network(text, "not an IPv4 address");
  }
  int max = n.v6 ? 128 : 32;
  n.prefix = max;
  if (slash != std::string_view::npos) {
    auto digits = text.substr(slash + 1);
    int prefix = -1;
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), prefix);
    if (digits.empty() || ec != std::errc{} || p != digits.data() + digits.size() || prefix < 0 ||
        prefix > max) {
      bad_network(text,
                  n.v6 ? "the prefix length must be 0..128" : "the prefix length must be 0..32");
    }
    n.prefix = prefix;
  }
  // Clear host bits so that contains() can compare whole bytes.
  for (int bit = n.prefix; bit < max; ++bit) {
    n.bytes[static_cast<std::size_t>(bit / 8)] &= static_cast<std::uint8_t>(~(0x80 >> (bit % 8)));
  }
  return n;
}

std::string format_address(bool v6, const std::uint8_t* addr) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(v6 ? AF_INET6 : AF_INET, addr, buf, sizeof buf);
  return buf;
}

address_guard::address_guard(bool allow_private_networks,
                             const std::vector<std::string>& allowed_networks)
    : allow_private_(allow_private_networks) {
  allowed_.reserve(allowed_networks.size());
  for (const auto& text : allowed_networks) allowed_.push_back(parse_network(text));
}

bool address_guard::allow_listed(bool v6, const std::uint8_t* addr) const {
  for (const auto& n : allowed_) {
    if (n.contains(v6, addr)) return true;
  }
  return false;
}

std::optional<std::string> address_guard::check_bytes(bool v6, const std::uint8_t* addr) const {
  if (allow_private_ || allow_listed(v6, addr)) return std::nullopt;
  std::string reason;
  for (const auto& r : v6 ? v6_rules() : v4_rules()) {
    if (r.net.contains(v6, addr)) {
      reason = r.reason;
      break;
    }
  }
  if (reason.empty() && v6) {
    for (const auto& e : embeddings()) {
      if (!e.net.contains(true, addr)) continue;
      const std::uint8_t* inner = addr + e.offset;
      if (allow_listed(false, inner)) return std::nullopt;
      for (const auto& r : v4_rules()) {
        if (r.net.contains(false, inner)) {
          reason = std::string(r.reason) + " (IPv4 " + format_address(false, inner) + " inside a " +
                   e.name + " IPv6 address)";
          break;
        }
      }
      break;
    }
  }
  if (reason.empty()) return std::nullopt;
  return "address " + format_address(v6, addr) + " refused: " + reason +
         " (set allow_private_networks or allowed_cidrs)";
}

std::optional<std::string> address_guard::check(const sockaddr* addr, socklen_t len) const {
  if (addr && addr->sa_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(addr);
    return check_bytes(false, reinterpret_cast<const std::uint8_t*>(&in->sin_addr));
  }
  if (addr && addr->sa_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(addr);
    return check_bytes(true, in6->sin6_addr.s6_addr);
  }
  if (allow_private_) return std::nullopt;
  return std::string("address of family ") + std::to_string(addr ? addr->sa_family : -1) +
         " refused: only IPv4 and IPv6 connections are allowed";
}

std::optional<std::string> address_guard::check(std::string_view ip) const {
  std::string text(ip);
  std::uint8_t bytes[16] = {};
  if (inet_pton(AF_INET, text.c_str(), bytes) == 1) return check_bytes(false, bytes);
  if (inet_pton(AF_INET6, text.c_str(), bytes) == 1) return check_bytes(true, bytes);
  throw hookline::error("\"" + text + "\" is not an IPv4 or IPv6 address");
}

}  // namespace hookline::detail
