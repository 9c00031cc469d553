#pragma once
// SSRF guard: decides whether the transport may connect to an IP address. Thread safety:
// immutable after construction; check() may be called from any thread.

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hookline::detail {

/// An IPv4 or IPv6 network. IPv4 networks keep their 4 bytes in bytes[0..3].
struct ip_network {
  bool v6 = false;
  std::array<std::uint8_t, 16> bytes{};
  int prefix = 0;
  bool contains(bool addr_v6, const std::uint8_t* addr) const;
};

/// Parses "10.0.0.0/8", "fd00::/8", or a bare address (a single host). Host bits beyond the
/// prefix are ignored. Throws hookline::error naming `text` when it is not a network.
ip_network parse_network(std::string_view text);

/// The refusal rules. Refused unless allow_private_networks or an allow-listed network contains
/// the address: loopback, unspecified, private (RFC 1918, IPv6 ULA), CGNAT, link-local (incl.
/// cloud metadata 169.254.169.254), multicast, broadcast, reserved and documentation ranges, and
/// IPv4 addresses embedded in IPv6 (IPv4-mapped, IPv4-compatible, NAT64 64:ff9b::/96, 6to4),
/// which are judged by the IPv4 address inside.
class address_guard {
 public:
  /// Throws hookline::error naming the first malformed entry of `allowed_networks`.
  address_guard(bool allow_private_networks, const std::vector<std::string>& allowed_networks);

  /// nullopt when the connection may proceed; otherwise the complete human-readable refusal, e.g.
  /// "address 127.0.0.1 refused: loopback (set allow_private_networks or allowed_cidrs)".
  /// Addresses of other families (e.g. AF_UNIX) are refused.
  std::optional<std::string> check(const sockaddr* addr, socklen_t len) const;
  /// The same for a textual IPv4 or IPv6 address; throws hookline::error when `ip` is not one.
  std::optional<std::string> check(std::string_view ip) const;

  bool allows_everything() const noexcept { return allow_private_; }

 private:
  std::optional<std::string> check_bytes(bool v6, const std::uint8_t* addr) const;
  bool allow_listed(bool v6, const std::uint8_t* addr) const;

  bool allow_private_;
  std::vector<ip_network> allowed_;
};

/// Textual form of an IPv4 (4 bytes) or IPv6 (16 bytes) address.
std::string format_address(bool v6, const std::uint8_t* addr);

}  // namespace hookline::detail
