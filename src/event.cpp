#include "hookline/event.hpp"

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "hookline/error.hpp"
#include "hookline/payload.hpp"
#include "registry_util.hpp"

namespace hookline {

using nlohmann::json;

event_catalog::event_catalog()
    : names_{"Create",
             "Modify",
             "Delete",
             "Approve",
             "Reject",
             "Draft",
             "Pending",
             "CheckOut",
             "MoveToTrash",
             "RestoreFromTrash",
             "Move",
             "Copy",
             "Rename",
             "CheckIn",
             "UndoCheckOut",
             "Publish",
             "PermissionChange"} {}

void event_catalog::add(std::string name) {
  if (name.empty()) throw error("event name must not be empty");
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-';
    if (!ok) throw error("event name '" + name + "' may only contain letters, digits, '_' and '-'");
  }
  if (auto known = canonical(name))
    throw error("event name '" + name + "' is already known as '" + *known + "'");
  names_.push_back(std::move(name));
}

std::optional<std::string> event_catalog::canonical(std::string_view name) const {
  if (detail::iequals(name, all_events)) return std::string(all_events);
  for (const auto& n : names_)
    if (detail::iequals(n, name)) return n;
  return std::nullopt;
}

void to_json(json& j, const event& e) {
  j = json::object();
  j["id"] = e.id;
  j["eventName"] = e.event_name;
  j["path"] = e.path;
  j["contentType"] = e.content_type;
  j["nodeId"] = e.node_id;
  j["name"] = e.name;
  j["displayName"] = e.display_name;
  j["versionId"] = e.version_id;
  j["version"] = e.version;
  j["previousVersion"] = e.previous_version ? json(*e.previous_version) : json(nullptr);
  j["versionModificationDate"] = e.version_modification_date;
  j["modifiedBy"] = e.modified_by;
  j["user"] = e.current_user;
  j["changedFields"] = e.changed_fields;
  j["data"] = e.data.is_null() ? json::object() : e.data;
  if (e.time) j["time"] = format_iso8601(*e.time);
}

namespace {

const event_catalog& default_catalog() {
  static const event_catalog catalog;
  return catalog;
}

class event_reader {
 public:
  event_reader(const json& j, std::vector<field_error>& errors) : j_(j), errors_(errors) {}

  const json* get(std::initializer_list<std::string_view> names, std::string_view field) {
    auto found = detail::find_key(j_, names, field, errors_);
    if (!found || found.value->is_null()) return nullptr;
    return found.value;
  }

  void string(std::initializer_list<std::string_view> names, std::string_view field,
              std::string& out) {
    if (const json* v = get(names, field)) {
      if (v->is_string())
        out = v->get<std::string>();
      else
        bad(field, "must be a string, not " + detail::describe_type(*v));
    }
  }

  void integer(std::initializer_list<std::string_view> names, std::string_view field,
               std::int64_t& out) {
    const json* v = get(names, field);
    if (!v) return;
    if (v->is_number_unsigned()) {
      const auto u = v->get<std::uint64_t>();
      if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        bad(field, "is out of range");
      else
        out = static_cast<std::int64_t>(u);
    } else if (v->is_number_integer()) {
      out = v->get<std::int64_t>();
    } else {
      bad(field, "must be an integer, not " + detail::describe_type(*v));
    }
  }

  void bad(std::string_view field, std::string reason) {
    errors_.push_back({std::string(field), std::move(reason)});
  }

 private:
  const json& j_;
  std::vector<field_error>& errors_;
};

// Deeper data would overflow the stack of the recursive copies and dumps it goes through (100,000
// nested arrays crashed the process); no content's fields need more.
constexpr std::size_t max_data_depth = 256;

bool deeper_than(const json& root, std::size_t limit) {
  std::vector<std::pair<const json*, std::size_t>> todo{{&root, 1}};
  while (!todo.empty()) {
    const auto [node, depth] = todo.back();
    todo.pop_back();
    if (depth > limit) return true;
    for (const auto& child : *node)
      if (child.is_structured()) todo.emplace_back(&child, depth + 1);
  }
  return false;
}

event parse_event(const json& j, const event_catalog& catalog, bool require_known) {
  std::vector<field_error> errors;
  event e;
  if (!j.is_object()) {
    errors.push_back({"event", "must be a JSON object, not " + detail::describe_type(j)});
    throw validation_error("event", std::move(errors));
  }
  event_reader r(j, errors);
  r.string({"id"}, "id", e.id);
  // It is written into log lines: a control character could forge one or drive the terminal.
  if (std::any_of(e.id.begin(), e.id.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; })) {
    r.bad("id", "must not contain control characters");
    e.id.clear();
  }

  const json* name = r.get({"eventName", "event"}, "eventName");
  if (!name) {
    r.bad("eventName", "is required");
  } else if (!name->is_string()) {
    r.bad("eventName", "must be a string, not " + detail::describe_type(*name));
  } else {
    const auto& text = name->get_ref<const std::string&>();
    if (text.empty()) {
      r.bad("eventName", "must not be empty");
    } else if (auto canon = catalog.canonical(text); canon && *canon != all_events) {
      e.event_name = *canon;
    } else if (canon) {
      r.bad("eventName", "'All' selects events in a filter; it is not an event");
    } else if (require_known) {
      r.bad("eventName", "unknown event '" + detail::printable(text) + "'");
    } else {
      e.event_name = text;
    }
  }

  r.string({"path"}, "path", e.path);
  r.string({"contentType"}, "contentType", e.content_type);
  r.integer({"nodeId"}, "nodeId", e.node_id);
  r.string({"name"}, "name", e.name);
  r.string({"displayName"}, "displayName", e.display_name);
  r.integer({"versionId"}, "versionId", e.version_id);
  r.string({"version"}, "version", e.version);
  if (const json* v = r.get({"previousVersion"}, "previousVersion")) {
    if (v->is_string())
      e.previous_version = v->get<std::string>();
    else
      r.bad("previousVersion", "must be a string or null, not " + detail::describe_type(*v));
  }
  r.string({"versionModificationDate"}, "versionModificationDate", e.version_modification_date);
  r.integer({"modifiedBy"}, "modifiedBy", e.modified_by);
  r.string({"user", "currentUser"}, "user", e.current_user);
  if (const json* v = r.get({"changedFields"}, "changedFields")) {
    if (!v->is_array()) {
      r.bad("changedFields", "must be an array of strings, not " + detail::describe_type(*v));
    } else {
      for (std::size_t i = 0; i < v->size(); ++i) {
        const auto& item = (*v)[i];
        if (item.is_string())
          e.changed_fields.push_back(item.get<std::string>());
        else
          r.bad("changedFields[" + std::to_string(i) + "]",
                "must be a string, not " + detail::describe_type(item));
      }
    }
  }
  if (const json* v = r.get({"data"}, "data")) {
    if (v->is_object() && deeper_than(*v, max_data_depth))
      r.bad("data", "is nested deeper than " + std::to_string(max_data_depth) + " levels");
    else if (v->is_object())
      e.data = *v;
    else
      r.bad("data", "must be an object, not " + detail::describe_type(*v));
  }
  if (const json* v = r.get({"time"}, "time")) {
    if (!v->is_string()) {
      r.bad("time", "must be an ISO 8601 string, not " + detail::describe_type(*v));
    } else if (auto t = parse_iso8601(v->get_ref<const std::string&>())) {
      e.time = *t;
    } else {
      r.bad("time",
            "'" + detail::printable(v->get<std::string>()) + "' is not an ISO 8601 date-time");
    }
  }
  if (!errors.empty())
    throw validation_error(e.id.empty() ? "event" : "event '" + e.id + "'", std::move(errors));
  return e;
}

}  // namespace

void from_json(const json& j, event& e) {
  e = parse_event(j, default_catalog(), false);
}

event event_from_json(const json& j, const event_catalog& catalog) {
  return parse_event(j, catalog, true);
}

}  // namespace hookline
