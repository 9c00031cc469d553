#pragma once
// Thread safety: value types.

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hookline/error.hpp"

namespace hookline {

/// One content type a filter listens to, and the events selected for it ("All" = every event).
struct content_type_filter {
  std::string name;  ///< exact type name, or "*" for any type (hookline extension)
  std::vector<std::string> events;
  bool operator==(const content_type_filter&) const = default;
};

/// sensenet's WebHookFilter.
struct filter {
  std::string path = "/Root";  ///< subtree root, the container itself included
  bool triggers_for_all_events = false;  ///< every event, but only for the listed types
  std::vector<content_type_filter> content_types;
  /// hookline extension: a filter on `File` also covers the subtypes the host's
  /// type_resolver reports (sensenet matches exact names only).
  bool include_subtypes = false;
  bool operator==(const filter&) const = default;
};

/// JSON keys accepted: camelCase (path, triggersForAllEvents, contentTypes[{name, events}],
/// includeSubtypes) and sensenet's PascalCase (Path, TriggersForAllEvents, ContentTypes, Name,
/// Events). to_json writes camelCase. from_json does not validate event names (see validate()).
void to_json(nlohmann::json& j, const filter& f);
void from_json(const nlohmann::json& j, filter& f);

}  // namespace hookline
