#pragma once
// Subscriptions kept in the PostgreSQL outbox database, so every worker sees the same registry.
// Thread safety: each call opens its own connection; safe from any thread.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hookline/registry.hpp"
#include "hookline/store.hpp"

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

/// Keeps a registry equal to the database's subscriptions table, so that every worker sees the
/// same registry while it runs: loads the table at construction (throws hookline::error when it
/// cannot be read), then again whenever save_/remove_postgres_subscription change it anywhere
/// (LISTEN hookline_subscriptions, same schema only), after a reconnect, and every `poll` in
/// any case. Each load replaces the registry at once (registry::replace_all); invalid entries are
/// skipped and reported to `on_load`. With `states` (the hub's store), a subscription whose
/// saved state is disabled (a 410, the failure timer) is loaded disabled, so a reload never sends
/// to it again. One thread and one connection of its own; the destructor stops both.
class postgres_subscription_sync {
 public:
  struct options {
    std::shared_ptr<delivery_store> states;
    std::chrono::milliseconds poll{std::chrono::seconds(30)};
    /// Called on the sync's thread after every load (also the first, before the constructor
    /// returns); `error` is empty unless the load failed (the registry is then left as it was).
    std::function<void(const load_report&, const std::string& error)> on_load;
  };
  postgres_subscription_sync(registry& reg, std::string conninfo, options o);
  ~postgres_subscription_sync();
  postgres_subscription_sync(const postgres_subscription_sync&) = delete;
  postgres_subscription_sync& operator=(const postgres_subscription_sync&) = delete;

  /// Loads (completed) since construction, the first included.
  std::uint64_t loads() const;

 private:
  class impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace hookline
