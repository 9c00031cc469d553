#include "hookline/filter.hpp"

#include "registry_util.hpp"

namespace hookline {

using nlohmann::json;

void to_json(json& j, const filter& f) {
  json types = json::array();
  for (const auto& ct : f.content_types)
    types.push_back(json{{"name", ct.name}, {"events", ct.events}});
  j = json{{"path", f.path},
           {"triggersForAllEvents", f.triggers_for_all_events},
           {"contentTypes", std::move(types)}};
  if (f.include_subtypes) j["includeSubtypes"] = true;
}

namespace detail {

namespace {

void read_bool(const json& obj, std::initializer_list<std::string_view> names,
               const std::string& field, bool& out, std::vector<field_error>& errors) {
  auto found = find_key(obj, names, field, errors);
  if (!found || found.value->is_null()) return;
  if (found.value->is_boolean())
    out = found.value->get<bool>();
  else
    errors.push_back({field, "must be true or false, not " + describe_type(*found.value)});
}

}  // namespace

void parse_filter(const json& j, filter& f, const std::string& prefix,
                  std::vector<field_error>& errors) {
  f = filter{};
  if (!j.is_object()) {
    errors.push_back({prefix, "must be a JSON object, not " + describe_type(j)});
    return;
  }
  if (auto p = find_key(j, {"path"}, prefix + ".path", errors); p && !p.value->is_null()) {
    if (p.value->is_string())
      f.path = p.value->get<std::string>();
    else
      errors.push_back({prefix + ".path", "must be a string, not " + describe_type(*p.value)});
  }
  read_bool(j, {"triggersForAllEvents"}, prefix + ".triggersForAllEvents",
            f.triggers_for_all_events, errors);
  read_bool(j, {"includeSubtypes"}, prefix + ".includeSubtypes", f.include_subtypes, errors);

  const std::string types_field = prefix + ".contentTypes";
  auto types = find_key(j, {"contentTypes"}, types_field, errors);
  if (!types || types.value->is_null()) return;
  if (!types.value->is_array()) {
    errors.push_back({types_field, "must be an array, not " + describe_type(*types.value)});
    return;
  }
  for (std::size_t i = 0; i < types.value->size(); ++i) {
    const json& item = (*types.value)[i];
    const std::string item_field = types_field + "[" + std::to_string(i) + "]";
    content_type_filter ct;
    if (!item.is_object()) {
      errors.push_back({item_field, "must be an object, not " + describe_type(item)});
      continue;
    }
    auto name = find_key(item, {"name"}, item_field + ".name", errors);
    if (!name || name.value->is_null())
      errors.push_back({item_field + ".name", "is required"});
    else if (!name.value->is_string())
      errors.push_back(
          {item_field + ".name", "must be a string, not " + describe_type(*name.value)});
    else
      ct.name = name.value->get<std::string>();

    auto events = find_key(item, {"events"}, item_field + ".events", errors);
    if (events && !events.value->is_null()) {
      if (!events.value->is_array()) {
        errors.push_back({item_field + ".events",
                          "must be an array of event names, not " + describe_type(*events.value)});
      } else {
        for (std::size_t k = 0; k < events.value->size(); ++k) {
          const json& ev = (*events.value)[k];
          if (ev.is_string())
            ct.events.push_back(ev.get<std::string>());
          else
            errors.push_back({item_field + ".events[" + std::to_string(k) + "]",
                              "must be an event name string, not " + describe_type(ev)});
        }
      }
    }
    f.content_types.push_back(std::move(ct));
  }
}

}  // namespace detail

void from_json(const json& j, filter& f) {
  std::vector<field_error> errors;
  filter parsed;
  detail::parse_filter(j, parsed, "filter", errors);
  if (!errors.empty()) throw validation_error("filter", std::move(errors));
  f = std::move(parsed);
}

}  // namespace hookline
