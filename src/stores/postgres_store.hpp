#pragma once
// Private PostgreSQL store details visible to tests. Thread safety: as delivery_store.

#include <string>

#include "hookline/store.hpp"

namespace hookline::detail {

/// The schema version a PostgreSQL outbox is migrated to at open.
inline constexpr int postgres_schema_version = 3;

/// The NOTIFY channel every store instance listens on; the payload is the outbox's schema name,
/// so outboxes in different schemas of one database do not wake each other.
inline constexpr const char* postgres_channel = "hookline_messages";
/// Sent (payload: the schema) when save_/remove_postgres_subscription change the table.
inline constexpr const char* subscriptions_channel = "hookline_subscriptions";

/// `conninfo` described for messages: host, port, dbname and user only (never a password).
std::string describe_conninfo(const std::string& conninfo);

}  // namespace hookline::detail
