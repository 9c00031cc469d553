#include "transport/address_guard.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <string>

#include "hookline/error.hpp"

using hookline::detail::address_guard;
using hookline::detail::parse_network;

namespace {

const address_guard strict(false, {});

// The refusal's reason, or "" when the address is allowed.
std::string refusal(const address_guard& g, const std::string& ip) {
  return g.check(ip).value_or("");
}

bool refused(const std::string& ip) {
  return strict.check(ip).has_value();
}

}  // namespace

TEST(address_guard, refuses_ipv4_special_ranges) {
  for (const char* ip : {"127.0.0.1",   "127.255.255.254", "0.0.0.0",    "0.1.2.3",
                         "10.0.0.1",    "10.255.255.255",  "172.16.0.1", "172.31.255.255",
                         "192.168.0.1", "192.168.255.255", "100.64.0.1", "100.127.255.255",
                         "169.254.0.1", "169.254.169.254", "224.0.0.1",  "239.255.255.255",
                         "240.0.0.1",   "255.255.255.255", "192.0.2.1",  "198.18.0.1",
                         "203.0.113.9"}) {
    EXPECT_TRUE(refused(ip)) << ip;
  }
}

TEST(address_guard, allows_public_addresses_next_to_refused_ranges) {
  for (const char* ip : {"8.8.8.8", "1.1.1.1", "172.15.255.255", "172.32.0.0", "100.63.255.255",
                         "100.128.0.0", "11.0.0.0", "126.255.255.255", "128.0.0.0", "169.253.0.1",
                         "192.167.255.255", "192.169.0.0", "223.255.255.255", "2606:4700::1111",
                         "2001:4860:4860::8888", "2a00:1450:4001::1", "2001:200::1", "4000::1"}) {
    EXPECT_FALSE(refused(ip)) << ip << ": " << refusal(strict, ip);
  }
}

TEST(address_guard, refuses_ipv6_special_ranges) {
  for (const char* ip : {"::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "febf::1", "ff02::1",
                         "ff0e::1", "2001:db8::1", "100::1", "fec0::1",
                         "2001:0:4136:e378:8000:63bf:80ff:fffe", "2001:1ff::1", "3fff::1"}) {
    EXPECT_TRUE(refused(ip)) << ip;
  }
}

TEST(address_guard, judges_ipv4_hidden_in_ipv6_by_the_inner_address) {
  // IPv4-mapped, NAT64, 6to4, IPv4-compatible, IPv4-translated.
  for (const char* ip : {"::ffff:127.0.0.1", "::ffff:10.1.2.3", "::ffff:169.254.169.254",
                         "64:ff9b::7f00:1", "64:ff9b::192.168.1.1", "2002:7f00:1::1",
                         "2002:a9fe:a9fe::", "::127.0.0.1", "::ffff:0:10.0.0.1"}) {
    EXPECT_TRUE(refused(ip)) << ip;
  }
  for (const char* ip : {"::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"}) {
    EXPECT_FALSE(refused(ip)) << ip << ": " << refusal(strict, ip);
  }
  auto why = refusal(strict, "::ffff:127.0.0.1");
  EXPECT_NE(why.find("127.0.0.1"), std::string::npos) << why;
  EXPECT_NE(why.find("IPv4-mapped"), std::string::npos) << why;
  EXPECT_NE(refusal(strict, "2002:a9fe:a9fe::").find("6to4"), std::string::npos);
  EXPECT_NE(refusal(strict, "64:ff9b::7f00:1").find("NAT64"), std::string::npos);
}

TEST(address_guard, refusal_names_address_reason_and_remedy) {
  EXPECT_EQ(refusal(strict, "127.0.0.1"),
            "address 127.0.0.1 refused: loopback (set allow_private_networks or allowed_cidrs)");
  EXPECT_NE(refusal(strict, "169.254.169.254").find("cloud metadata"), std::string::npos);
  EXPECT_NE(refusal(strict, "10.0.0.5").find("private network (10.0.0.0/8)"), std::string::npos);
  EXPECT_NE(refusal(strict, "100.64.1.1").find("CGNAT"), std::string::npos);
  EXPECT_NE(refusal(strict, "fe80::1").find("address fe80::1 refused: link-local"),
            std::string::npos);
}

TEST(address_guard, allow_list_permits_v4_and_v6_networks) {
  address_guard g(false, {"10.1.0.0/16", "fd00:1::/32", "127.0.0.1"});
  EXPECT_EQ(refusal(g, "10.1.200.3"), "");
  EXPECT_NE(refusal(g, "10.2.0.1"), "");
  EXPECT_EQ(refusal(g, "fd00:1::5"), "");
  EXPECT_NE(refusal(g, "fd00:2::5"), "");
  EXPECT_EQ(refusal(g, "127.0.0.1"), "");
  EXPECT_NE(refusal(g, "127.0.0.2"), "");
  // The IPv4 allow-list also covers the same address inside IPv6.
  EXPECT_EQ(refusal(g, "::ffff:10.1.0.9"), "");
  EXPECT_NE(refusal(g, "169.254.169.254"), "");
}

TEST(address_guard, allow_private_networks_permits_everything) {
  address_guard g(true, {});
  for (const char* ip : {"127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "fe80::1",
                         "::ffff:127.0.0.1", "255.255.255.255"}) {
    EXPECT_EQ(refusal(g, ip), "") << ip;
  }
}

TEST(address_guard, malformed_networks_throw_naming_the_value) {
  for (const char* bad : {"10.0.0.0/33", "10.0.0/8", "fd00::/129", "fd00::/", "/8", "banana",
                          "10.0.0.0/8x", "10.0.0.0/-1", "::g/64", ""}) {
    try {
      address_guard g(false, {"192.168.0.0/16", bad});
      ADD_FAILURE() << "accepted " << bad;
    } catch (const hookline::error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("\"") + bad + "\""), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("allowed_cidrs"), std::string::npos) << e.what();
    }
  }
}

TEST(address_guard, network_parsing_masks_host_bits) {
  auto n = parse_network("10.1.2.3/8");
  EXPECT_FALSE(n.v6);
  EXPECT_EQ(n.prefix, 8);
  std::uint8_t inside[4] = {10, 200, 0, 1};
  std::uint8_t outside[4] = {11, 1, 2, 3};
  EXPECT_TRUE(n.contains(false, inside));
  EXPECT_FALSE(n.contains(false, outside));
  auto all = parse_network("::/0");
  std::uint8_t any6[16] = {0x26, 0x06};
  EXPECT_TRUE(all.contains(true, any6));
  EXPECT_FALSE(all.contains(false, inside));
  auto odd = parse_network("172.16.0.0/12");
  std::uint8_t in12[4] = {172, 31, 0, 1};
  std::uint8_t out12[4] = {172, 32, 0, 1};
  EXPECT_TRUE(odd.contains(false, in12));
  EXPECT_FALSE(odd.contains(false, out12));
}

TEST(address_guard, checks_socket_addresses) {
  sockaddr_in v4{};
  v4.sin_family = AF_INET;
  inet_pton(AF_INET, "192.168.1.10", &v4.sin_addr);
  auto why = strict.check(reinterpret_cast<const sockaddr*>(&v4), sizeof v4);
  ASSERT_TRUE(why.has_value());
  EXPECT_NE(why->find("192.168.1.10"), std::string::npos);
  inet_pton(AF_INET, "93.184.216.34", &v4.sin_addr);
  EXPECT_FALSE(strict.check(reinterpret_cast<const sockaddr*>(&v4), sizeof v4).has_value());

  sockaddr_in6 v6{};
  v6.sin6_family = AF_INET6;
  inet_pton(AF_INET6, "::ffff:192.168.1.10", &v6.sin6_addr);
  EXPECT_TRUE(strict.check(reinterpret_cast<const sockaddr*>(&v6), sizeof v6).has_value());

  sockaddr unix_like{};
  unix_like.sa_family = AF_UNIX;
  EXPECT_TRUE(strict.check(&unix_like, sizeof unix_like).has_value());
}

TEST(address_guard, textual_check_rejects_non_addresses) {
  EXPECT_THROW(strict.check("example.com"), hookline::error);
}
