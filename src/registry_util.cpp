#include "registry_util.hpp"

namespace hookline::detail {

found_key find_key(const nlohmann::json& obj, std::initializer_list<std::string_view> names,
                   std::string_view field, std::vector<field_error>& errors) {
  found_key best;
  std::size_t best_rank = names.size();
  bool conflict = false;
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    std::size_t rank = 0;
    for (auto name : names) {
      if (iequals(it.key(), name)) break;
      ++rank;
    }
    if (rank == names.size()) continue;
    if (best.value && *best.value != it.value()) conflict = true;
    // Prefer an exact spelling over a case-folded one, then the order of `names`.
    const bool exact = [&] {
      for (auto name : names)
        if (it.key() == name) return true;
      return false;
    }();
    const std::size_t score = rank * 2 + (exact ? 0 : 1);
    if (!best.value || score < best_rank) {
      best.value = &it.value();
      best.key = it.key();
      best_rank = score;
    }
  }
  if (conflict)
    errors.push_back({std::string(field), "given more than once with different values (as '" +
                                              best.key + "' and another spelling)"});
  return best;
}

std::string describe_type(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return "null";
    case nlohmann::json::value_t::object:
      return "an object";
    case nlohmann::json::value_t::array:
      return "an array";
    case nlohmann::json::value_t::string:
      return "a string";
    case nlohmann::json::value_t::boolean:
      return "a boolean";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
      return "an integer";
    case nlohmann::json::value_t::number_float:
      return "a number";
    default:
      return "binary data";
  }
}

std::vector<std::string> path_key(std::string_view path) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < path.size()) {
    while (i < path.size() && path[i] == '/') ++i;
    std::size_t j = i;
    while (j < path.size() && path[j] != '/') ++j;
    if (j > i) out.push_back(ascii_lower(path.substr(i, j - i)));
    i = j;
  }
  return out;
}

}  // namespace hookline::detail
