#pragma once
// Subscriptions kept in the PostgreSQL outbox database, so every worker sees the same registry.
// Thread safety: each call opens its own connection; safe from any thread.

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace hookline {

/// Every subscription stored in the database named by `conninfo` (a libpq connection string or
/// URI, as in `postgres:CONNINFO`), ordered by id, exactly as saved. Creates the schema if needed.
/// Throws hookline::error (never quoting a password) when the database is unreachable.
std::vector<nlohmann::json> load_postgres_subscriptions(const std::string& conninfo);

/// Inserts or replaces the subscription with the same `id` (a non-empty string member; throws
/// hookline::error naming `id` otherwise). The JSON is stored as given; validate it first.
void save_postgres_subscription(const std::string& conninfo, const nlohmann::json& subscription);

/// Deletes the subscription with this id; false if there was none.
bool remove_postgres_subscription(const std::string& conninfo, const std::string& id);

}  // namespace hookline
