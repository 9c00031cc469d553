#include "dispatcher/ids.hpp"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <random>

namespace hookline::detail {

namespace {

constexpr char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

std::mt19937_64& rng() {
  // Seeded per thread from the OS so that two processes started in the same millisecond still
  // draw different ids.
  thread_local std::mt19937_64 gen = [] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }();
  return gen;
}

}  // namespace

std::string new_ulid() {
  const auto ms =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  const std::uint64_t r1 = rng()(), r2 = rng()();
  // 128 bits: 48 time bits, then 80 random bits; encoded 5 bits at a time from the top
  // (the first character carries the 2 leftover high bits, hence 26 characters).
  const std::uint64_t hi = (ms << 16) | (r1 >> 48);  // time + 16 random bits
  const std::uint64_t lo = r2;                       // 64 random bits
  std::string out(26, '0');
  for (int i = 25; i >= 0; --i) {
    const int bit = (25 - i) * 5;  // position of this character's lowest bit
    std::uint64_t v = 0;
    if (bit >= 64) {
      v = hi >> (bit - 64);
    } else if (bit + 5 <= 64) {
      v = lo >> bit;
    } else {
      v = (lo >> bit) | (hi << (64 - bit));
    }
    out[static_cast<std::size_t>(i)] = crockford[v & 31];
  }
  return out;
}

std::string new_message_id() {
  return "msg_" + new_ulid();
}

std::string new_event_id() {
  return "evt_" + new_ulid();
}

std::string host_name() {
  std::array<char, 256> buf{};
  if (gethostname(buf.data(), buf.size() - 1) != 0 || buf[0] == '\0') return "localhost";
  return std::string(buf.data());
}

std::string default_worker_id() {
  std::string suffix(6, '0');
  for (auto& c : suffix) c = crockford[rng()() & 31];
  return host_name() + "-" + std::to_string(::getpid()) + "-" + suffix;
}

}  // namespace hookline::detail
