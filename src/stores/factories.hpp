#pragma once
// Private factories behind hookline::make_store (src/stores/make_store.cpp).

#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "hookline/store.hpp"

namespace hookline::detail {

/// In-process store; nothing survives the process. `capacity` bounds pending messages
/// (enqueue throws hookline::queue_full_error-compatible hookline::error when it would exceed).
std::shared_ptr<delivery_store> make_memory_store(const store_options& options);
/// Embedded durable store in one SQLite file (WAL, group commit).
std::shared_ptr<delivery_store> make_sqlite_store(const std::string& path,
                                                  const store_options& options);
/// Shared outbox for many workers on many machines.
std::shared_ptr<delivery_store> make_postgres_store(const std::string& conninfo,
                                                    const store_options& options);

/// enqueue_claimed(): which messages of `batch` are to be stored leased (the first `count` that
/// are not ordered; of an id given twice, only its first copy, so that it is never handed over
/// twice).
inline std::vector<bool> leased_by_publisher(const std::vector<message>& batch, std::size_t count) {
  std::vector<bool> out(batch.size(), false);
  std::unordered_set<std::string_view> seen;
  for (std::size_t i = 0; i < batch.size() && count > 0; ++i) {
    if (batch[i].ordered || !seen.insert(batch[i].id).second) continue;
    out[i] = true;
    --count;
  }
  return out;
}

}  // namespace hookline::detail
