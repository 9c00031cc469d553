#pragma once
// Thread safety: every registry method is thread safe. match() reads an immutable snapshot and
// never waits for a writer; writers are serialised among themselves.

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hookline/event.hpp"
#include "hookline/subscription.hpp"

namespace hookline {

/// Host-provided content type hierarchy, for subscriptions with filter.include_subtypes.
class type_resolver {
 public:
  virtual ~type_resolver() = default;
  /// The ancestors of `type`, nearest first (e.g. "Image" -> {"File", "GenericContent"}).
  virtual std::vector<std::string> ancestors(std::string_view type) const = 0;
};

struct registry_options {
  event_catalog catalog;
  std::shared_ptr<const type_resolver> types;  ///< optional
};

/// An immutable, indexed view of the registry at one moment.
class snapshot {
 public:
  class impl;
  explicit snapshot(std::unique_ptr<impl> p);
  ~snapshot();
  snapshot(const snapshot&) = delete;
  snapshot& operator=(const snapshot&) = delete;

  /// Enabled, valid subscriptions whose filter selects `e`, in registration order. Cost grows with
  /// the path depth and the number of matches, not with the number of subscriptions.
  std::vector<std::shared_ptr<const subscription>> match(const event& e) const;
  std::shared_ptr<const subscription> find(std::string_view id) const;
  const std::vector<std::shared_ptr<const subscription>>& all() const;
  std::size_t size() const;

 private:
  std::unique_ptr<impl> impl_;
};

/// Why a subscription in a file was not loaded.
struct rejected_subscription {
  std::size_t index = 0;  ///< position in the file's array (0-based)
  std::string id;         ///< may be empty when the entry had none
  std::vector<field_error> errors;
};

struct load_report {
  std::size_t loaded = 0;
  std::vector<rejected_subscription> rejected;
};

class registry {
 public:
  explicit registry(registry_options options = {});
  ~registry();
  registry(const registry&) = delete;
  registry& operator=(const registry&) = delete;

  /// Adds a subscription. Throws validation_error (every invalid field) if invalid, hookline::error
  /// if the id exists. Nothing changes on a throw.
  void add(subscription s);
  /// Replaces the subscription with the same id; same errors as add (error if the id is unknown).
  void update(subscription s);
  /// Adds or replaces.
  void upsert(subscription s);
  bool remove(std::string_view id);
  bool set_enabled(std::string_view id, bool enabled);
  /// set_enabled for a subscription read from a snapshot: changes nothing, and returns false, if
  /// it was replaced (or removed) since, so a decision taken on old data never overrides a
  /// newer configuration.
  bool set_enabled_if_unchanged(const std::shared_ptr<const subscription>& seen, bool enabled);
  std::optional<subscription> get(std::string_view id) const;
  std::vector<subscription> list() const;
  std::size_t size() const;
  /// Replaces everything at once (one snapshot); invalid entries are reported and skipped.
  load_report replace_all(std::vector<subscription> subs);

  /// The current snapshot; cheap (one atomic shared_ptr load).
  std::shared_ptr<const snapshot> current() const;
  std::vector<std::shared_ptr<const subscription>> match(const event& e) const;

  /// Loads a JSON file: an array of subscriptions, or an object with a "subscriptions" array.
  /// Valid entries are added (upserted); invalid ones are reported and skipped. Throws
  /// hookline::error if the file cannot be read or is not JSON (naming the file and line).
  load_report load_file(const std::filesystem::path& path);
  load_report load_json(const nlohmann::json& j);
  /// Writes every subscription as a JSON array atomically (temp file, fsync, rename).
  void save_file(const std::filesystem::path& path) const;

  const event_catalog& catalog() const noexcept;

 private:
  class impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace hookline
