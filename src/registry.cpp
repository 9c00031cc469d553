#include "hookline/registry.hpp"
#include "hookline/json.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "registry_util.hpp"
#include "string_map.hpp"

namespace hookline {

using nlohmann::json;

namespace {

using detail::string_map;

/// A registered subscription with what the index needs precomputed.
struct compiled : std::enable_shared_from_this<compiled> {
  compiled(std::uint64_t s, subscription v) : seq(s), value(std::move(v)) {}
  std::uint64_t seq = 0;  ///< registration order; kept by update()
  subscription value;
  std::vector<std::string> path;  ///< lower-cased segments of filter.path ("" means /Root)
  /// Shares ownership of the entry (one allocation per subscription, not two).
  std::shared_ptr<const subscription> sub() const { return {shared_from_this(), &value}; }
};

using id_map = std::unordered_map<std::string_view, const compiled*>;

/// The subscriptions listening to one content type at one path.
struct type_bucket {
  std::vector<const compiled*> all;  ///< every event ("All" / triggersForAll)
  /// By lower-cased event name. A flat list: it is bounded by the event catalog (a handful of
  /// names), so a scan is constant time and far cheaper to build than a hash map per bucket.
  std::vector<std::pair<std::string, std::vector<const compiled*>>> by_event;

  std::vector<const compiled*>& events(const std::string& key) {
    for (auto& [name, subs] : by_event)
      if (name == key) return subs;
    return by_event.emplace_back(key, std::vector<const compiled*>{}).second;
  }
  const std::vector<const compiled*>* find(std::string_view key) const {
    for (const auto& [name, subs] : by_event)
      if (name == key) return &subs;
    return nullptr;
  }
};

struct trie_node {
  string_map<std::unique_ptr<trie_node>> children;  ///< by lower-cased path segment
  string_map<type_bucket> exact;                    ///< exact type name, or "*"
  string_map<type_bucket> subtypes;  ///< include_subtypes filters, by the listed type
};

/// An immutable index over a set of subscriptions (disabled ones are listed, not indexed).
struct index {
  trie_node root;
  std::vector<std::shared_ptr<const compiled>> items;  ///< ascending seq
  id_map by_id;                                        ///< views into the entries' ids
  bool any_subtypes = false;
};

std::shared_ptr<const index> build_index(std::vector<std::shared_ptr<const compiled>> items) {
  auto idx = std::make_shared<index>();
  idx->by_id.reserve(items.size());
  for (const auto& c : items) {
    idx->by_id.emplace(c->value.id, c.get());
    const subscription& s = c->value;
    if (!s.enabled) continue;
    trie_node* node = &idx->root;
    for (const auto& seg : c->path) {
      auto& child = node->children[seg];
      if (!child) child = std::make_unique<trie_node>();
      node = child.get();
    }
    const filter& f = s.filter;
    for (const auto& ct : f.content_types) {
      const bool via_subtypes = f.include_subtypes && ct.name != "*";
      type_bucket& bucket = via_subtypes ? node->subtypes[ct.name] : node->exact[ct.name];
      if (via_subtypes) idx->any_subtypes = true;
      const bool every = f.triggers_for_all_events ||
                         std::any_of(ct.events.begin(), ct.events.end(), [](const std::string& e) {
                           return detail::iequals(e, all_events);
                         });
      if (every) {
        bucket.all.push_back(c.get());
        continue;
      }
      std::vector<std::string> seen;
      for (const auto& e : ct.events) {
        std::string key = detail::ascii_lower(e);
        if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
        bucket.events(key).push_back(c.get());
        seen.push_back(std::move(key));
      }
    }
  }
  idx->items = std::move(items);
  return idx;
}

using seq_set = std::unordered_set<std::uint64_t>;

}  // namespace

// A snapshot is a large base index shared between snapshots, a small delta index of what was
// added or updated since the base was built, and the base entries that are gone. Writers rebuild
// only the delta (O(sqrt n)) and fold it into a new base when it grows, so a single add() stays
// cheap at 100k subscriptions while match() still does a few hash lookups per path segment.
class snapshot::impl {
 public:
  std::shared_ptr<const index> base;
  std::shared_ptr<const index> delta;
  std::shared_ptr<const seq_set> dead;  ///< seqs of base entries removed or replaced
  std::shared_ptr<const type_resolver> types;
  std::size_t size = 0;

  mutable std::once_flag all_once;
  mutable std::vector<std::shared_ptr<const subscription>> all;

  bool alive_in_base(const compiled* c) const { return !dead || !dead->count(c->seq); }
};

snapshot::snapshot(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
snapshot::~snapshot() = default;

namespace {

struct match_query {
  std::string_view type;
  std::string_view event;  ///< lower-cased
  const std::vector<std::string>* ancestors = nullptr;
};

void take(const type_bucket& b, std::string_view event, std::vector<const compiled*>& out) {
  out.insert(out.end(), b.all.begin(), b.all.end());
  if (const auto* subs = b.find(event)) out.insert(out.end(), subs->begin(), subs->end());
}

void collect(const trie_node& node, const match_query& q, std::vector<const compiled*>& out) {
  if (!node.exact.empty()) {
    if (auto it = node.exact.find(q.type); it != node.exact.end()) take(it->second, q.event, out);
    if (auto it = node.exact.find(std::string_view("*")); it != node.exact.end())
      take(it->second, q.event, out);
  }
  if (!node.subtypes.empty()) {
    if (auto it = node.subtypes.find(q.type); it != node.subtypes.end())
      take(it->second, q.event, out);
    if (q.ancestors)
      for (const auto& a : *q.ancestors)
        if (auto it = node.subtypes.find(a); it != node.subtypes.end())
          take(it->second, q.event, out);
  }
}

void walk(const index& idx, std::string_view lowered_path, const match_query& q,
          std::vector<const compiled*>& out) {
  const trie_node* node = &idx.root;
  std::size_t i = 0;
  while (i < lowered_path.size()) {
    while (i < lowered_path.size() && lowered_path[i] == '/') ++i;
    std::size_t j = i;
    while (j < lowered_path.size() && lowered_path[j] != '/') ++j;
    if (j == i) break;
    auto it = node->children.find(lowered_path.substr(i, j - i));
    if (it == node->children.end()) return;
    node = it->second.get();
    collect(*node, q, out);  // each level is a container of the event: subtree, itself included
    i = j;
  }
}

}  // namespace

std::vector<std::shared_ptr<const subscription>> snapshot::match(const event& e) const {
  const impl& s = *impl_;
  std::vector<std::shared_ptr<const subscription>> result;
  if (s.size == 0) return result;
  // An event without a path (no content behind it) is in the whole repository: the filters on
  // /Root select it, as a filter without a path means /Root.
  const bool no_path = e.path.find_first_not_of('/') == std::string::npos;
  const std::string path = no_path ? std::string("/root") : detail::ascii_lower(e.path);
  const std::string event_name = detail::ascii_lower(e.event_name);
  std::vector<std::string> ancestors;
  match_query q{e.content_type, event_name, nullptr};
  if (s.types && ((s.base && s.base->any_subtypes) || (s.delta && s.delta->any_subtypes))) {
    ancestors = s.types->ancestors(e.content_type);
    q.ancestors = &ancestors;
  }
  std::vector<const compiled*> found;
  if (s.base) {
    walk(*s.base, path, q, found);
    if (s.dead)
      found.erase(std::remove_if(found.begin(), found.end(),
                                 [&](const compiled* c) { return !s.alive_in_base(c); }),
                  found.end());
  }
  if (s.delta) walk(*s.delta, path, q, found);
  std::sort(found.begin(), found.end(),
            [](const compiled* a, const compiled* b) { return a->seq < b->seq; });
  found.erase(std::unique(found.begin(), found.end()), found.end());
  result.reserve(found.size());
  for (const compiled* c : found) result.push_back(c->sub());
  return result;
}

std::shared_ptr<const subscription> snapshot::find(std::string_view id) const {
  const impl& s = *impl_;
  if (s.delta)
    if (auto it = s.delta->by_id.find(id); it != s.delta->by_id.end()) return it->second->sub();
  if (s.base)
    if (auto it = s.base->by_id.find(id); it != s.base->by_id.end() && s.alive_in_base(it->second))
      return it->second->sub();
  return nullptr;
}

const std::vector<std::shared_ptr<const subscription>>& snapshot::all() const {
  const impl& s = *impl_;
  std::call_once(s.all_once, [&s] {
    std::vector<std::shared_ptr<const compiled>> merged;
    merged.reserve(s.size);
    static const std::vector<std::shared_ptr<const compiled>> none;
    const auto& base = s.base ? s.base->items : none;
    const auto& delta = s.delta ? s.delta->items : none;
    auto bi = base.begin();
    auto di = delta.begin();
    while (bi != base.end() || di != delta.end()) {
      if (bi != base.end() && !s.alive_in_base(bi->get())) {
        ++bi;
      } else if (di == delta.end() || (bi != base.end() && (*bi)->seq < (*di)->seq)) {
        merged.push_back(*bi++);
      } else {
        merged.push_back(*di++);
      }
    }
    s.all.reserve(merged.size());
    for (const auto& c : merged) s.all.push_back(c->sub());
  });
  return s.all;
}

std::size_t snapshot::size() const {
  return impl_->size;
}

class registry::impl {
 public:
  explicit impl(registry_options o) : options(std::move(o)) { publish(); }

  registry_options options;
  std::mutex write_mutex;  ///< serialises writers; readers never take it
  std::atomic<std::shared_ptr<const snapshot>> current;

  // Writer state, guarded by write_mutex.
  std::map<std::uint64_t, std::shared_ptr<const compiled>> live;  ///< by seq
  /// id -> seq; the keys view the ids held by `live`.
  std::unordered_map<std::string_view, std::uint64_t> seq_of;
  std::uint64_t next_seq = 1;
  std::shared_ptr<const index> base;
  std::map<std::uint64_t, std::shared_ptr<const compiled>> delta;  ///< live entries not in base
  seq_set dead;                                                    ///< base entries gone

  std::string subject(const subscription& s) const {
    return s.id.empty() ? std::string("subscription") : "subscription '" + s.id + "'";
  }

  void check(const subscription& s) const {
    auto errors = validate(s, options.catalog);
    if (!errors.empty()) throw validation_error(subject(s), std::move(errors));
  }

  bool in_base(std::string_view id, std::uint64_t seq) const {
    if (!base) return false;
    auto it = base->by_id.find(id);
    return it != base->by_id.end() && it->second->seq == seq;
  }

  /// Adds or replaces (keeping the registration position). `track` = false when the base is
  /// about to be rebuilt anyway (replace_all), so no delta is kept.
  void put(subscription s, bool track = true) {
    // As sensenet sends it, and as the message, the request and the attempt log all show it.
    for (auto& ch : s.http_method)
      if (ch >= 'a' && ch <= 'z') ch = static_cast<char>(ch - 'a' + 'A');
    std::uint64_t seq;
    if (auto it = seq_of.find(s.id); it != seq_of.end()) {
      seq = it->second;
      seq_of.erase(it);  // its key views the entry being replaced
    } else {
      seq = next_seq++;
    }
    auto c = std::make_shared<compiled>(seq, std::move(s));
    c->path = detail::path_key(c->value.filter.path.empty() ? std::string_view("/Root")
                                                            : c->value.filter.path);
    const std::string& id = c->value.id;
    if (track && in_base(id, seq)) dead.insert(seq);
    seq_of.emplace(id, seq);
    if (track) delta[seq] = c;
    live[seq] = std::move(c);
  }

  bool erase(std::string_view id) {
    auto it = seq_of.find(id);
    if (it == seq_of.end()) return false;
    const std::uint64_t seq = it->second;
    seq_of.erase(it);
    if (in_base(id, seq)) dead.insert(seq);
    delta.erase(seq);
    live.erase(seq);
    return true;
  }

  void publish() {
    const double n = static_cast<double>(live.size());
    const std::size_t limit = std::max<std::size_t>(64, static_cast<std::size_t>(2 * std::sqrt(n)));
    if (!base || delta.size() + dead.size() > limit) {
      std::vector<std::shared_ptr<const compiled>> items;
      items.reserve(live.size());
      for (const auto& [seq, c] : live) items.push_back(c);
      base = build_index(std::move(items));
      delta.clear();
      dead.clear();
    }
    auto p = std::make_unique<snapshot::impl>();
    p->base = base;
    if (!delta.empty()) {
      std::vector<std::shared_ptr<const compiled>> items;
      items.reserve(delta.size());
      for (const auto& [seq, c] : delta) items.push_back(c);
      p->delta = build_index(std::move(items));
    }
    if (!dead.empty()) p->dead = std::make_shared<const seq_set>(dead);
    p->types = options.types;
    p->size = live.size();
    current.store(std::make_shared<const snapshot>(std::move(p)));
  }
};

registry::registry(registry_options options) : impl_(std::make_unique<impl>(std::move(options))) {}
registry::~registry() = default;

void registry::add(subscription s) {
  impl_->check(s);
  std::lock_guard lock(impl_->write_mutex);
  if (impl_->seq_of.count(s.id)) throw error(impl_->subject(s) + " already exists");
  impl_->put(std::move(s));
  impl_->publish();
}

void registry::update(subscription s) {
  impl_->check(s);
  std::lock_guard lock(impl_->write_mutex);
  if (!impl_->seq_of.count(s.id)) throw error(impl_->subject(s) + " does not exist");
  impl_->put(std::move(s));
  impl_->publish();
}

void registry::upsert(subscription s) {
  impl_->check(s);
  std::lock_guard lock(impl_->write_mutex);
  impl_->put(std::move(s));
  impl_->publish();
}

bool registry::remove(std::string_view id) {
  std::lock_guard lock(impl_->write_mutex);
  if (!impl_->erase(id)) return false;
  impl_->publish();
  return true;
}

bool registry::set_enabled(std::string_view id, bool enabled) {
  std::lock_guard lock(impl_->write_mutex);
  auto it = impl_->seq_of.find(id);
  if (it == impl_->seq_of.end()) return false;
  const subscription& current = impl_->live.at(it->second)->value;
  if (current.enabled == enabled) return true;
  subscription copy = current;
  copy.enabled = enabled;
  impl_->put(std::move(copy));
  impl_->publish();
  return true;
}

bool registry::set_enabled_if_unchanged(const std::shared_ptr<const subscription>& seen,
                                        bool enabled) {
  std::lock_guard lock(impl_->write_mutex);
  auto it = impl_->seq_of.find(seen->id);
  if (it == impl_->seq_of.end()) return false;
  const subscription& current = impl_->live.at(it->second)->value;
  if (&current != seen.get()) return false;  // replaced since `seen` was read
  if (current.enabled == enabled) return true;
  subscription copy = current;
  copy.enabled = enabled;
  impl_->put(std::move(copy));
  impl_->publish();
  return true;
}

std::optional<subscription> registry::get(std::string_view id) const {
  if (auto s = current()->find(id)) return *s;
  return std::nullopt;
}

std::vector<subscription> registry::list() const {
  auto snap = current();
  std::vector<subscription> out;
  out.reserve(snap->size());
  for (const auto& s : snap->all()) out.push_back(*s);
  return out;
}

std::size_t registry::size() const {
  return current()->size();
}

namespace {

/// Validates a batch, rejecting invalid entries and repeated ids (the first one wins).
std::vector<subscription> screen(std::vector<subscription> subs, const event_catalog& catalog,
                                 load_report& report,
                                 const std::vector<std::size_t>* positions = nullptr) {
  std::vector<subscription> ok;
  ok.reserve(subs.size());
  std::unordered_map<std::string_view, std::size_t> first_at;
  for (std::size_t i = 0; i < subs.size(); ++i) {
    const std::size_t at = positions ? (*positions)[i] : i;
    auto errors = validate(subs[i], catalog);
    if (errors.empty())
      if (auto it = first_at.find(subs[i].id); it != first_at.end())
        errors.push_back({"id", "duplicate id '" + subs[i].id + "': entry " +
                                    std::to_string(it->second + 1) +
                                    " has it already (entries count from 1)"});
    if (!errors.empty()) {
      report.rejected.push_back({at, subs[i].id, std::move(errors)});
      continue;
    }
    ok.push_back(std::move(subs[i]));
    first_at.emplace(ok.back().id, at);  // `ok` never reallocates: reserved above
  }
  report.loaded = ok.size();
  return ok;
}

}  // namespace

load_report registry::replace_all(std::vector<subscription> subs) {
  load_report report;
  auto ok = screen(std::move(subs), impl_->options.catalog, report);
  std::lock_guard lock(impl_->write_mutex);
  impl_->live.clear();
  impl_->seq_of.clear();
  impl_->delta.clear();
  impl_->dead.clear();
  impl_->base.reset();
  for (auto& s : ok) impl_->put(std::move(s), false);
  impl_->publish();
  return report;
}

std::shared_ptr<const snapshot> registry::current() const {
  return impl_->current.load();
}

std::vector<std::shared_ptr<const subscription>> registry::match(const event& e) const {
  return current()->match(e);
}

load_report registry::load_json(const json& j) {
  static constexpr const char* expected =
      "subscriptions JSON must be an array, an object with a \"subscriptions\" array or a "
      "sensenet OData export ({\"d\": {\"results\": [...]}})";
  const json* list = &j;
  if (j.is_object()) {
    if (auto it = j.find("subscriptions"); it != j.end() && it->is_array()) {
      list = &*it;
    } else if (auto d = j.find("d"); d != j.end() && d->is_object() && d->contains("results") &&
                                     (*d)["results"].is_array()) {
      list = &(*d)["results"];  // what sensenet's OData API returns for its WebHookSubscriptions
    } else {
      throw error(expected);
    }
  } else if (!j.is_array()) {
    throw error(std::string(expected) + ", not " + detail::describe_type(j));
  }
  load_report report;
  std::vector<subscription> parsed;
  std::vector<std::size_t> positions;
  for (std::size_t i = 0; i < list->size(); ++i) {
    const json& item = (*list)[i];
    if (!item.is_object()) {
      report.rejected.push_back(
          {i, "", {{"subscription", "must be a JSON object, not " + detail::describe_type(item)}}});
      continue;
    }
    parsed.push_back(subscription_from_json(item));
    positions.push_back(i);
  }
  load_report screened;
  auto ok = screen(std::move(parsed), impl_->options.catalog, screened, &positions);
  report.loaded = screened.loaded;
  report.rejected.insert(report.rejected.end(), screened.rejected.begin(), screened.rejected.end());
  std::sort(report.rejected.begin(), report.rejected.end(),
            [](const auto& a, const auto& b) { return a.index < b.index; });
  if (!ok.empty()) {
    std::lock_guard lock(impl_->write_mutex);
    for (auto& s : ok) impl_->put(std::move(s));
    impl_->publish();
  }
  return report;
}

load_report registry::load_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw error("cannot read subscriptions file '" + path.string() + "': " + std::strerror(errno));
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad())
    throw error("cannot read subscriptions file '" + path.string() + "': " + std::strerror(errno));
  const std::string text = buf.str();
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    const std::size_t upto = std::min<std::size_t>(e.byte == 0 ? 0 : e.byte - 1, text.size());
    const std::size_t line = 1 + std::count(text.begin(), text.begin() + upto, '\n');
    const auto line_start = text.rfind('\n', upto == 0 ? 0 : upto - 1);
    const std::size_t column =
        upto - (line_start == std::string::npos || upto == 0 ? 0 : line_start + 1) + 1;
    const std::string reason = json_error_reason(e);  // never the text it read: a secret?
    throw error("subscriptions file '" + path.string() + "' is not valid JSON: line " +
                std::to_string(line) + ", column " + std::to_string(column) + ": " + reason);
  }
  try {
    return load_json(j);
  } catch (const validation_error&) {
    throw;
  } catch (const error& e) {
    throw error("subscriptions file '" + path.string() + "': " + e.what());
  }
}

namespace {

[[noreturn]] void fail_save(const std::filesystem::path& path, const char* step, int err) {
  throw error("cannot save subscriptions to '" + path.string() + "': " + step + ": " +
              std::strerror(err));
}

}  // namespace

void registry::save_file(const std::filesystem::path& path) const {
  json arr = json::array();
  for (const auto& s : current()->all()) arr.push_back(subscription_to_json(*s));
  std::string text;
  try {
    text = arr.dump(2) + "\n";
  } catch (const json::exception& e) {
    throw error("cannot save subscriptions to '" + path.string() + "': " + e.what());
  }

  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : ".";
  std::string tmp = (dir / ("." + path.filename().string() + ".tmp-XXXXXX")).string();
  // mkstemp creates the file 0600, right for a file holding secrets; an existing file keeps
  // its mode.
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) fail_save(path, "create temporary file", errno);
  auto abandon = [&](const char* step) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    fail_save(path, step, err);
  };
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && ::fchmod(fd, st.st_mode & 07777) != 0) abandon("chmod");
  const char* p = text.data();
  std::size_t left = text.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      abandon("write");
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) abandon("fsync");
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail_save(path, "close", err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail_save(path, "rename", err);
  }
  // The rename is durable only once the directory entry is.
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) fail_save(path, "open directory", errno);
  const int rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (rc != 0) fail_save(path, "fsync directory", err);
}

const event_catalog& registry::catalog() const noexcept {
  return impl_->options.catalog;
}

}  // namespace hookline
