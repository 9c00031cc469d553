#pragma once
// An in-memory content repository in the style of sensenet: a tree rooted at /Root with typed
// content, versioning (none, major, major and minor), approval, check-out and a trash. Every
// operation returns the events it causes, in order, for the host to publish.
// Thread safety: none; the server serialises access with one mutex.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <hookline/hookline.hpp>

namespace content_server {

/// A failed operation: the HTTP status to answer and, for 400, every invalid field.
struct op_error {
  int status = 400;
  std::string message;
  std::vector<hookline::field_error> fields;
};

enum class versioning_mode { none, major, major_minor };

struct version {
  int major = 1;
  int minor = 0;
  char status = 'A';  ///< A approved, P pending, R rejected, D draft, L locked
  std::string str() const;
  bool operator==(const version&) const = default;
};

struct node {
  std::int64_t id = 0;
  std::string path;
  std::string name;
  std::string type;
  nlohmann::json fields = nlohmann::json::object();
  versioning_mode mode = versioning_mode::none;
  bool approving = false;
  version ver;
  std::int64_t version_id = 0;
  std::string modified_at;
  std::int64_t modified_by = 1;
  // While checked out: who holds it and what undo-checkout returns to.
  std::string checked_out_by;
  std::optional<version> saved_version;
  std::int64_t saved_version_id = 0;
  nlohmann::json saved_fields;
  std::string original_path;  ///< where a trashed node came from
};

/// Who performs an operation.
struct actor {
  std::string name = "admin";
  std::int64_t id = 1;
};

/// Content types and their parents: Image is a File; all are GenericContent.
class type_hierarchy final : public hookline::type_resolver {
 public:
  std::vector<std::string> ancestors(std::string_view type) const override;
  static bool known(std::string_view type);
};

class content_tree {
 public:
  content_tree();

  struct result {
    nlohmann::json content;               ///< the node after the operation (null after delete)
    std::vector<hookline::event> events;  ///< to publish, in order
  };
  using outcome = std::variant<result, op_error>;

  outcome create(const nlohmann::json& body, const actor& who);
  outcome modify(const std::string& path, const nlohmann::json& body, const actor& who);
  outcome remove(const std::string& path, const actor& who);
  outcome action(const std::string& path, const std::string& verb, const nlohmann::json& body,
                 const actor& who);

  std::optional<nlohmann::json> get(const std::string& path) const;
  nlohmann::json trash() const;
  /// An event for `path` without changing anything (the manual trigger).
  std::optional<hookline::event> event_for(const std::string& path,
                                           const std::string& event_name) const;

  static nlohmann::json to_json(const node& n);

 private:
  std::map<std::string, node> nodes_;     ///< by path
  std::vector<std::vector<node>> trash_;  ///< trashed subtrees, root first
  std::int64_t next_id_ = 1;
  std::int64_t next_version_id_ = 1;

  node* find(const std::string& path);
  const node* find(const std::string& path) const;
  std::vector<std::string> subtree(const std::string& path) const;
  void move_subtree(const std::string& from, const std::string& to);
  hookline::event make_event(const node& n, const std::string& name,
                             const std::optional<version>& previous,
                             std::vector<std::string> changed, const actor& who) const;
  void add_status_event(std::vector<hookline::event>& out, const node& n,
                        const std::optional<version>& before, const actor& who) const;
  void touch(node& n, const actor& who);
};

/// "/Root/Content/" -> "/Root/Content"; empty if not an absolute /Root path.
std::string normalise_path(std::string path);

}  // namespace content_server
