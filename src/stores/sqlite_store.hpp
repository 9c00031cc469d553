#pragma once
// Private SQLite store details visible to tests. Thread safety: as delivery_store.

#include <cstdint>
#include <string>

#include "hookline/store.hpp"

namespace hookline::detail {

/// The schema version an SQLite store file is migrated to at open.
inline constexpr int sqlite_schema_version = 4;

/// Transactions the store's committer thread has committed so far (group commit evidence).
/// Throws hookline::error if `store` is not an SQLite store.
std::uint64_t sqlite_store_commits(const delivery_store& store);

/// True when this store found the file unused at open (it held the lock file exclusively) and
/// therefore released every lease left by earlier processes.
bool sqlite_store_released_stale_leases(const delivery_store& store);

}  // namespace hookline::detail
