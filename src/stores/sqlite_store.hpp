#pragma once
// Private SQLite store details visible to tests. Thread safety: as delivery_store.

#include <cstdint>
#include <string>

#include "hookline/store.hpp"

namespace hookline::detail {

/// The schema version an SQLite store file is migrated to at open.
inline constexpr int sqlite_schema_version = 5;

/// When a pending message can next be claimed (its due time, or its lease's end while leased),
/// as SQL over the messages row aliased `a`: written exactly as the key of the messages_due
/// index (migration 4), so that the claim and next_due() queries search that index.
#define HOOKLINE_SQLITE_DUE(a)                                                          \
  "(CASE WHEN " a ".lease_until > " a ".next_attempt_at THEN " a ".lease_until ELSE " a \
  ".next_attempt_at END)"

/// Transactions the store's committer thread has committed so far (group commit evidence).
/// Throws hookline::error if `store` is not an SQLite store.
std::uint64_t sqlite_store_commits(const delivery_store& store);

/// True when this store found the file unused at open (it held the lock file exclusively) and
/// therefore released every lease left by earlier processes.
bool sqlite_store_released_stale_leases(const delivery_store& store);

}  // namespace hookline::detail
