#pragma once
// Identifier generation. Thread safety: every function is thread safe (per-thread generators).

#include <string>

namespace hookline::detail {

/// A ULID: 48-bit millisecond time + 80 random bits, 26 Crockford base32 characters. Sorts by
/// creation time, which keeps the durable stores' primary-key indexes append-mostly.
std::string new_ulid();
/// "msg_" + ULID: the webhook-id of one delivery.
std::string new_message_id();
/// "evt_" + ULID: for events published without an id.
std::string new_event_id();
/// host name + "-" + pid + "-" + 6 random characters.
std::string default_worker_id();
/// The host name, or "localhost" when it cannot be read.
std::string host_name();

}  // namespace hookline::detail
