#include "content_tree.hpp"

#include <algorithm>
#include <cctype>

namespace content_server {

namespace {

using hookline::field_error;

const std::vector<std::string> type_names = {"Folder", "File", "Image", "Article"};

std::string display_name(const node& n) {
  auto it = n.fields.find("DisplayName");
  if (it != n.fields.end() && it->is_string() && !it->get<std::string>().empty()) return *it;
  return n.name;
}

std::string parent_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == 0 || slash == std::string::npos ? std::string() : path.substr(0, slash);
}

// Where `path` sits: the path itself or below it, compared by segment.
bool in_subtree(const std::string& path, const std::string& root) {
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          path[root.size()] == '/');
}

std::string check_name(const nlohmann::json& j) {
  if (!j.is_string()) return "must be a string";
  const auto name = j.get<std::string>();
  if (name.empty()) return "must not be empty";
  if (name.size() > 255) return "must be at most 255 characters";
  if (name == "." || name == "..") return "must not be . or ..";
  for (unsigned char c : name) {
    if (c == '/' || c == '\\' || c < 0x20)
      return "must not contain '/', '\\' or control characters";
  }
  return {};
}

std::optional<versioning_mode> parse_mode(const nlohmann::json& j) {
  if (!j.is_string()) return std::nullopt;
  std::string s;
  for (char c : j.get<std::string>()) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
  }
  if (s == "none" || s == "off") return versioning_mode::none;
  if (s == "major" || s == "majoronly") return versioning_mode::major;
  if (s == "majorminor" || s == "majorandminor") return versioning_mode::major_minor;
  return std::nullopt;
}

const char* mode_name(versioning_mode m) {
  switch (m) {
    case versioning_mode::none:
      return "none";
    case versioning_mode::major:
      return "major";
    case versioning_mode::major_minor:
      return "majorMinor";
  }
  return "none";
}

std::string now_iso() {
  return hookline::format_iso8601(std::chrono::system_clock::now());
}

// The version a save produces outside a check-out (sensenet's rules, simplified).
version next_save(const node& n) {
  const version v = n.ver;
  switch (n.mode) {
    case versioning_mode::none:
      if (!n.approving) return {v.major, v.minor, 'A'};
      if (v.status == 'P') return v;
      return {v.major + 1, 0, 'P'};
    case versioning_mode::major:
      if (n.approving && v.status == 'P') return v;
      return {v.major + 1, 0, n.approving ? 'P' : 'A'};
    case versioning_mode::major_minor:
      return {v.major, v.minor + 1, 'D'};
  }
  return v;
}

op_error not_found(const std::string& path) {
  return {404, "no content at " + path, {}};
}

op_error conflict(std::string why) {
  return {409, std::move(why), {}};
}

op_error invalid(std::vector<field_error> fields) {
  return {400, "invalid request: " + hookline::describe(fields), std::move(fields)};
}

}  // namespace

std::string version::str() const {
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::string(1, status);
}

std::vector<std::string> type_hierarchy::ancestors(std::string_view type) const {
  if (type == "Image") return {"File", "GenericContent"};
  if (type == "File" || type == "Folder" || type == "Article") return {"GenericContent"};
  return {};
}

bool type_hierarchy::known(std::string_view type) {
  return std::find(type_names.begin(), type_names.end(), type) != type_names.end();
}

std::string normalise_path(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  if (!in_subtree(path, "/Root")) return {};
  if (path.find("//") != std::string::npos) return {};
  for (std::size_t i = 0; i < path.size();) {
    const auto next = path.find('/', i + 1);
    const auto seg =
        path.substr(i + 1, next == std::string::npos ? std::string::npos : next - i - 1);
    if (seg == "." || seg == "..") return {};
    if (next == std::string::npos) break;
    i = next;
  }
  return path;
}

content_tree::content_tree() {
  for (const std::string p : {"/Root", "/Root/Content"}) {
    node n;
    n.id = next_id_++;
    n.path = p;
    n.name = p.substr(p.find_last_of('/') + 1);
    n.type = "Folder";
    n.version_id = next_version_id_++;
    n.modified_at = now_iso();
    nodes_[n.path] = n;
  }
}

node* content_tree::find(const std::string& path) {
  auto it = nodes_.find(path);
  return it == nodes_.end() ? nullptr : &it->second;
}

const node* content_tree::find(const std::string& path) const {
  auto it = nodes_.find(path);
  return it == nodes_.end() ? nullptr : &it->second;
}

std::vector<std::string> content_tree::subtree(const std::string& path) const {
  std::vector<std::string> out;
  for (auto it = nodes_.lower_bound(path); it != nodes_.end(); ++it) {
    if (in_subtree(it->first, path)) {
      out.push_back(it->first);
    } else if (it->first.compare(0, path.size(), path) != 0) {
      break;
    }
  }
  return out;
}

void content_tree::move_subtree(const std::string& from, const std::string& to) {
  std::vector<node> moved;
  for (const auto& p : subtree(from)) {
    auto n = std::move(nodes_.at(p));
    nodes_.erase(p);
    n.path = to + p.substr(from.size());
    moved.push_back(std::move(n));
  }
  for (auto& n : moved) nodes_[n.path] = std::move(n);
}

void content_tree::touch(node& n, const actor& who) {
  n.modified_at = now_iso();
  n.modified_by = who.id;
}

nlohmann::json content_tree::to_json(const node& n) {
  nlohmann::json j = {{"id", n.id},
                      {"path", n.path},
                      {"name", n.name},
                      {"type", n.type},
                      {"displayName", display_name(n)},
                      {"version", n.ver.str()},
                      {"versionId", n.version_id},
                      {"versioning", mode_name(n.mode)},
                      {"approving", n.approving},
                      {"modifiedAt", n.modified_at},
                      {"modifiedBy", n.modified_by},
                      {"fields", n.fields}};
  j["checkedOutBy"] =
      n.checked_out_by.empty() ? nlohmann::json(nullptr) : nlohmann::json(n.checked_out_by);
  if (!n.original_path.empty()) j["originalPath"] = n.original_path;
  return j;
}

hookline::event content_tree::make_event(const node& n, const std::string& name,
                                         const std::optional<version>& previous,
                                         std::vector<std::string> changed, const actor& who) const {
  hookline::event e;
  e.event_name = name;
  e.path = n.path;
  e.content_type = n.type;
  e.node_id = n.id;
  e.name = n.name;
  e.display_name = display_name(n);
  e.version_id = n.version_id;
  e.version = n.ver.str();
  if (previous) e.previous_version = previous->str();
  e.version_modification_date = n.modified_at;
  e.modified_by = n.modified_by;
  e.current_user = who.name;
  e.changed_fields = std::move(changed);
  // Templates such as @@content.Description@@ read these.
  e.data = n.fields;
  e.data["Id"] = n.id;
  e.data["Path"] = n.path;
  e.data["Name"] = n.name;
  e.data["Type"] = n.type;
  e.data["DisplayName"] = display_name(n);
  e.data["Version"] = n.ver.str();
  return e;
}

void content_tree::add_status_event(std::vector<hookline::event>& out, const node& n,
                                    const std::optional<version>& before, const actor& who) const {
  if (before && *before == n.ver) return;
  const char* name = nullptr;
  switch (n.ver.status) {
    case 'A':
      name = "Approve";
      break;
    case 'P':
      name = "Pending";
      break;
    case 'R':
      name = "Reject";
      break;
    case 'D':
      name = "Draft";
      break;
    case 'L':
      name = "CheckOut";
      break;
    default:
      return;
  }
  out.push_back(make_event(n, name, before, {}, who));
}

content_tree::outcome content_tree::create(const nlohmann::json& body, const actor& who) {
  if (!body.is_object()) return invalid({{"", "the body must be a JSON object"}});
  std::vector<field_error> errors;
  std::string parent;
  if (!body.contains("parent") || !body["parent"].is_string()) {
    errors.push_back({"parent", "required: the path of the parent folder, e.g. /Root/Content"});
  } else {
    parent = normalise_path(body["parent"].get<std::string>());
    if (parent.empty()) errors.push_back({"parent", "must be an absolute path under /Root"});
  }
  if (!body.contains("name")) {
    errors.push_back({"name", "required"});
  } else if (auto why = check_name(body["name"]); !why.empty()) {
    errors.push_back({"name", why});
  }
  if (!body.contains("type") || !body["type"].is_string()) {
    errors.push_back({"type", "required: one of Folder, File, Image, Article"});
  } else if (!type_hierarchy::known(body["type"].get<std::string>())) {
    errors.push_back({"type", "unknown content type \"" + body["type"].get<std::string>() +
                                  "\" (known: Folder, File, Image, Article)"});
  }
  if (body.contains("fields") && !body["fields"].is_object()) {
    errors.push_back({"fields", "must be a JSON object"});
  }
  std::optional<versioning_mode> mode;
  if (body.contains("versioning")) {
    mode = parse_mode(body["versioning"]);
    if (!mode) errors.push_back({"versioning", "must be none, major or majorMinor"});
  }
  if (body.contains("approving") && !body["approving"].is_boolean()) {
    errors.push_back({"approving", "must be true or false"});
  }
  if (!errors.empty()) return invalid(std::move(errors));

  const node* p = find(parent);
  if (!p) return op_error{404, "parent " + parent + " does not exist", {}};
  if (p->type != "Folder") {
    return invalid({{"parent", "a " + p->type + " cannot contain content; use a Folder"}});
  }
  node n;
  n.name = body["name"].get<std::string>();
  n.path = parent + "/" + n.name;
  if (find(n.path)) return conflict(n.path + " already exists");
  n.type = body["type"].get<std::string>();
  if (body.contains("fields")) n.fields = body["fields"];
  // Versioning settings are inherited from the parent unless given, as in sensenet.
  n.mode = mode.value_or(p->mode);
  n.approving = body.contains("approving") ? body["approving"].get<bool>() : p->approving;
  n.id = next_id_++;
  n.version_id = next_version_id_++;
  if (n.mode == versioning_mode::major_minor) {
    n.ver = {0, 1, 'D'};
  } else {
    n.ver = {1, 0, n.approving ? 'P' : 'A'};
  }
  touch(n, who);
  result r;
  r.events.push_back(make_event(n, "Create", std::nullopt, {}, who));
  add_status_event(r.events, n, std::nullopt, who);
  r.content = to_json(n);
  nodes_[n.path] = std::move(n);
  return r;
}

content_tree::outcome content_tree::modify(const std::string& path, const nlohmann::json& body,
                                           const actor& who) {
  node* n = find(path);
  if (!n) return not_found(path);
  nlohmann::json changes = body.is_object() && body.contains("fields") ? body["fields"] : body;
  if (!changes.is_object()) return invalid({{"fields", "must be a JSON object of field values"}});
  if (n->ver.status == 'L' && n->checked_out_by != who.name) {
    return conflict(path + " is checked out by " + n->checked_out_by);
  }
  std::vector<std::string> changed;
  for (auto it = changes.begin(); it != changes.end(); ++it) {
    auto old = n->fields.find(it.key());
    const bool had = old != n->fields.end();
    if (it->is_null() ? had : (!had || *old != *it)) changed.push_back(it.key());
  }
  std::sort(changed.begin(), changed.end());
  result r;
  if (changed.empty()) {
    r.content = to_json(*n);
    return r;
  }
  for (auto it = changes.begin(); it != changes.end(); ++it) {
    if (it->is_null()) {
      n->fields.erase(it.key());
    } else {
      n->fields[it.key()] = *it;
    }
  }
  const version before = n->ver;
  if (n->ver.status != 'L') {
    const version after = next_save(*n);
    if (after.major != before.major || after.minor != before.minor) {
      n->version_id = next_version_id_++;
    }
    n->ver = after;
  }
  touch(*n, who);
  r.events.push_back(make_event(*n, "Modify", before, changed, who));
  add_status_event(r.events, *n, before, who);
  r.content = to_json(*n);
  return r;
}

content_tree::outcome content_tree::remove(const std::string& path, const actor& who) {
  if (path == "/Root" || path == "/Root/Content") return conflict(path + " cannot be deleted");
  const node* n = find(path);
  if (!n) return not_found(path);
  result r;
  r.events.push_back(make_event(*n, "Delete", n->ver, {}, who));
  r.content = nullptr;
  for (const auto& p : subtree(path)) nodes_.erase(p);
  return r;
}

content_tree::outcome content_tree::action(const std::string& path, const std::string& verb,
                                           const nlohmann::json& body, const actor& who) {
  const nlohmann::json args = body.is_object() ? body : nlohmann::json::object();
  result r;

  if (verb == "restore") {
    for (auto it = trash_.rbegin(); it != trash_.rend(); ++it) {
      if (it->front().original_path != path) continue;
      const auto parent = parent_of(path);
      const node* p = find(parent);
      if (!p) return conflict("cannot restore " + path + ": its parent " + parent + " is gone");
      if (find(path)) return conflict("cannot restore " + path + ": the path is taken");
      auto nodes = std::move(*it);
      trash_.erase(std::next(it).base());
      for (auto& n : nodes) {
        n.path = n.original_path;
        n.original_path.clear();
        nodes_[n.path] = std::move(n);
      }
      node& restored = nodes_.at(path);
      touch(restored, who);
      r.events.push_back(make_event(restored, "RestoreFromTrash", restored.ver, {}, who));
      r.content = to_json(restored);
      return r;
    }
    return op_error{404, "nothing in the trash came from " + path, {}};
  }

  node* n = find(path);
  if (!n) return not_found(path);
  const version before = n->ver;
  const bool locked = n->ver.status == 'L';

  auto target_parent = [&](std::vector<field_error>& errors) -> std::string {
    if (!args.contains("target") || !args["target"].is_string()) {
      errors.push_back({"target", "required: the path of the destination folder"});
      return {};
    }
    auto t = normalise_path(args["target"].get<std::string>());
    if (t.empty()) errors.push_back({"target", "must be an absolute path under /Root"});
    return t;
  };

  if (verb == "move" || verb == "copy") {
    if (path == "/Root" || path == "/Root/Content") return conflict(path + " cannot be moved");
    std::vector<field_error> errors;
    const auto target = target_parent(errors);
    std::string name = n->name;
    if (verb == "copy" && args.contains("name")) {
      if (auto why = check_name(args["name"]); !why.empty()) {
        errors.push_back({"name", why});
      } else {
        name = args["name"].get<std::string>();
      }
    }
    if (!errors.empty()) return invalid(std::move(errors));
    const node* p = find(target);
    if (!p) return op_error{404, "target " + target + " does not exist", {}};
    if (p->type != "Folder")
      return invalid({{"target", "a " + p->type + " cannot contain content"}});
    if (in_subtree(target, path)) return invalid({{"target", "is inside the content itself"}});
    const std::string to = target + "/" + name;
    if (find(to)) return conflict(to + " already exists");
    if (verb == "move") {
      move_subtree(path, to);
      node& moved = nodes_.at(to);
      touch(moved, who);
      auto e = make_event(moved, "Move", moved.ver, {"Path"}, who);
      e.data["SourcePath"] = path;
      r.events.push_back(std::move(e));
      r.content = to_json(moved);
      return r;
    }
    std::vector<node> copies;
    for (const auto& sp : subtree(path)) {
      node c = nodes_.at(sp);
      c.id = next_id_++;
      c.version_id = next_version_id_++;
      c.path = to + sp.substr(path.size());
      if (sp == path) c.name = name;
      c.checked_out_by.clear();
      if (c.ver.status == 'L' && c.saved_version) c.ver = *c.saved_version;
      c.saved_version.reset();
      touch(c, who);
      copies.push_back(std::move(c));
    }
    for (auto& c : copies) nodes_[c.path] = std::move(c);
    node& copy = nodes_.at(to);
    auto e = make_event(copy, "Copy", std::nullopt, {}, who);
    e.data["SourcePath"] = path;
    r.events.push_back(std::move(e));
    r.content = to_json(copy);
    return r;
  }

  if (verb == "rename") {
    if (path == "/Root" || path == "/Root/Content") return conflict(path + " cannot be renamed");
    if (!args.contains("name")) return invalid({{"name", "required: the new name"}});
    if (auto why = check_name(args["name"]); !why.empty()) return invalid({{"name", why}});
    const std::string name = args["name"].get<std::string>();
    const std::string to = parent_of(path) + "/" + name;
    if (to == path) {
      r.content = to_json(*n);
      return r;
    }
    if (find(to)) return conflict(to + " already exists");
    const std::string old_name = n->name;
    move_subtree(path, to);
    node& renamed = nodes_.at(to);
    renamed.name = name;
    touch(renamed, who);
    auto e = make_event(renamed, "Rename", renamed.ver, {"Name"}, who);
    e.data["OldName"] = old_name;
    e.data["SourcePath"] = path;
    r.events.push_back(std::move(e));
    r.content = to_json(renamed);
    return r;
  }

  if (verb == "trash") {
    if (path == "/Root" || path == "/Root/Content") return conflict(path + " cannot be trashed");
    r.events.push_back(make_event(*n, "MoveToTrash", n->ver, {}, who));
    std::vector<node> bag;
    for (const auto& p : subtree(path)) {
      node t = std::move(nodes_.at(p));
      nodes_.erase(p);
      t.original_path = t.path;
      bag.push_back(std::move(t));
    }
    r.content = to_json(bag.front());
    r.content["trashed"] = true;
    trash_.push_back(std::move(bag));
    return r;
  }

  if (verb == "checkout") {
    if (locked) return conflict(path + " is already checked out by " + n->checked_out_by);
    n->saved_version = n->ver;
    n->saved_version_id = n->version_id;
    n->saved_fields = n->fields;
    switch (n->mode) {
      case versioning_mode::none:
        n->ver = {before.major, before.minor, 'L'};
        break;
      case versioning_mode::major:
        n->ver = {before.major + 1, 0, 'L'};
        break;
      case versioning_mode::major_minor:
        n->ver = {before.major, before.minor + 1, 'L'};
        break;
    }
    if (n->ver.major != before.major || n->ver.minor != before.minor) {
      n->version_id = next_version_id_++;
    }
    n->checked_out_by = who.name;
    touch(*n, who);
    add_status_event(r.events, *n, before, who);
    r.content = to_json(*n);
    return r;
  }

  if (verb == "checkin" || verb == "undocheckout") {
    if (!locked) return conflict(path + " is not checked out");
    if (n->checked_out_by != who.name) {
      return conflict(path + " is checked out by " + n->checked_out_by);
    }
    if (verb == "undocheckout") {
      n->ver = *n->saved_version;
      n->version_id = n->saved_version_id;
      n->fields = n->saved_fields;
      n->saved_version.reset();
      n->checked_out_by.clear();
      touch(*n, who);
      r.events.push_back(make_event(*n, "UndoCheckOut", before, {}, who));
      r.content = to_json(*n);
      return r;
    }
    const bool minor = n->mode == versioning_mode::major_minor;
    n->ver.status = minor ? 'D' : (n->approving ? 'P' : 'A');
    n->saved_version.reset();
    n->checked_out_by.clear();
    touch(*n, who);
    r.events.push_back(make_event(*n, "CheckIn", before, {}, who));
    add_status_event(r.events, *n, before, who);
    r.content = to_json(*n);
    return r;
  }

  if (locked)
    return conflict(path + " is checked out by " + n->checked_out_by + "; check it in first");

  if (verb == "publish") {
    if (n->mode != versioning_mode::major_minor || n->ver.status != 'D') {
      return conflict("publish needs a draft under major and minor versioning (this is " +
                      n->ver.str() + ")");
    }
    if (n->approving) {
      n->ver.status = 'P';
    } else {
      n->ver = {before.major + 1, 0, 'A'};
      n->version_id = next_version_id_++;
    }
    touch(*n, who);
    r.events.push_back(make_event(*n, "Publish", before, {}, who));
    add_status_event(r.events, *n, before, who);
    r.content = to_json(*n);
    return r;
  }

  if (verb == "approve" || verb == "reject") {
    if (n->ver.status != 'P') {
      return conflict(verb + " needs a pending version (this is " + n->ver.str() + ")");
    }
    if (verb == "reject") {
      n->ver.status = 'R';
    } else if (n->mode == versioning_mode::major_minor) {
      n->ver = {before.major + 1, 0, 'A'};
      n->version_id = next_version_id_++;
    } else {
      n->ver.status = 'A';
    }
    touch(*n, who);
    add_status_event(r.events, *n, before, who);
    r.content = to_json(*n);
    return r;
  }

  return op_error{404, "unknown action \"" + verb + "\"", {}};
}

std::optional<nlohmann::json> content_tree::get(const std::string& path) const {
  const node* n = find(path);
  if (!n) return std::nullopt;
  auto j = to_json(*n);
  nlohmann::json children = nlohmann::json::array();
  for (const auto& p : subtree(path)) {
    if (p != path && parent_of(p) == path) children.push_back(nodes_.at(p).name);
  }
  j["children"] = std::move(children);
  return j;
}

nlohmann::json content_tree::trash() const {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& bag : trash_) out.push_back(to_json(bag.front()));
  return out;
}

std::optional<hookline::event> content_tree::event_for(const std::string& path,
                                                       const std::string& event_name) const {
  const node* n = find(path);
  if (!n) return std::nullopt;
  return make_event(*n, event_name, std::nullopt, {}, actor{});
}

}  // namespace content_server
