#pragma once
// Shared pieces of the `hookline` command line tool. Single-threaded use from main() unless a
// function says otherwise (console output is serialised with a mutex because the dispatcher
// thread reports dead messages while the progress line refreshes).

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <hookline/hookline.hpp>
#include <hookline/stores/postgres_subscriptions.hpp>

namespace hookline::cli {

/// Exit codes shared by every subcommand (docs/cli.md).
enum exit_code : int {
  exit_ok = 0,
  exit_failed = 1,        ///< a bad input line, an invalid subscription, a dead message, ...
  exit_usage = 2,         ///< bad arguments, unreadable or non-JSON files
  exit_drain_timeout = 3  ///< the drain timeout left messages pending
};

/// A problem with the command line or a file it names; main() prints it and exits 2.
class usage_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Thread-safe writes to stderr that keep the progress line intact.
class console {
 public:
  static console& instance();
  /// Writes one line to stderr (a newline is added).
  void error_line(const std::string& line);
  /// Replaces the transient progress line (terminal only).
  void progress_line(const std::string& line);
  /// Removes the progress line, if any.
  void clear_progress();

 private:
  std::mutex mutex_;
  bool progress_shown_ = false;
};

/// Settings shared by the commands that deliver.
struct delivery_flags {
  bool allow_private = false;
  std::optional<double> timeout_seconds;
  std::optional<std::string> retry_schedule;
  std::optional<std::size_t> concurrency;
  std::optional<std::size_t> endpoint_concurrency;
  double drain_timeout_seconds = 60;
};

/// "0.2,0.2,0.2" -> {200ms, 200ms, 200ms}; "" or "none" -> no retries. Throws usage_error.
std::vector<duration> parse_retry_schedule(const std::string& text);
duration seconds_to_duration(double seconds, const char* flag);
void apply_delivery_flags(const delivery_flags& f, options& opts);

/// The stderr logger at warn level (info with -v, debug with -vv).
std::shared_ptr<spdlog::logger> make_logger(int verbosity);

/// Where each subscription of a file starts (1-based line), by position in its array.
std::vector<std::size_t> subscription_lines(const std::string& text);

/// A subscriptions file, read and parsed, with the line of each entry.
struct subscriptions_file {
  std::string path;
  std::string postgres;  ///< the conninfo when the subscriptions live in a PostgreSQL database
  nlohmann::json list = nlohmann::json::array();  ///< the array of subscription objects
  std::vector<std::size_t> lines;                 ///< line of list[i], 0 if unknown
  std::size_t line_of(std::size_t index) const { return index < lines.size() ? lines[index] : 0; }
};

/// Reads and parses FILE: an array, {"subscriptions": [...]}, or a sensenet OData export
/// ({"d": {"results": [...]}}). Throws usage_error naming the file (and line) when it cannot be
/// read or is not JSON of that shape. `postgres:CONNINFO` reads the database's subscriptions
/// table instead (hookline subscriptions import fills it).
subscriptions_file read_subscriptions_file(const std::string& path);

/// One line per problem, e.g. `subs.json:12: subscription "a" (#2) skipped: 2 invalid fields`
/// followed by `  url: must be http or https`.
std::vector<std::string> describe_rejections(const subscriptions_file& file,
                                             const load_report& report, const char* verb);

/// Loads the file into the registry, reporting each invalid subscription on stderr.
load_report load_subscriptions(registry& reg, const subscriptions_file& file);

/// A store wrapper whose claim() waits until `open` is called, so the dispatcher never sees a
/// message before the subscriptions it belongs to are loaded (the hub starts dispatching in its
/// constructor, before its registry can be filled).
struct gated_store {
  std::shared_ptr<delivery_store> store;
  std::function<void()> open;
};
gated_store make_gated_store(std::shared_ptr<delivery_store> inner);

/// Counts and rate on stderr about once a second while stderr is a terminal; silent otherwise.
class progress {
 public:
  using sample_fn = std::function<std::string(double elapsed_seconds)>;
  explicit progress(sample_fn sample);
  ~progress();
  progress(const progress&) = delete;
  progress& operator=(const progress&) = delete;
  void finish();

 private:
  sample_fn sample_;
  bool enabled_ = false;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

/// The summary object every long-running command ends stdout with.
struct summary {
  std::uint64_t published = 0;
  std::uint64_t messages = 0;
  std::uint64_t delivered = 0;
  std::uint64_t dead = 0;
  std::uint64_t pending = 0;
  bool pending_unknown = false;  ///< the store could not be asked: `"pending":null`
  std::uint64_t errors = 0;
  std::string to_json_line() const;
};

/// A line-by-line reader over a file or stdin ("-") that hands out every complete line already
/// read before blocking for more, so slow producers are not delayed and fast ones get batched.
class line_reader {
 public:
  explicit line_reader(const std::string& path);  ///< throws usage_error if unreadable
  ~line_reader();
  line_reader(const line_reader&) = delete;
  line_reader& operator=(const line_reader&) = delete;
  /// The lines available without blocking, or (when none) blocks for at least one; empty at
  /// end of input. `first_line` receives the 1-based number of the first returned line.
  std::vector<std::string> next_batch(std::size_t& first_line, std::size_t max_lines);
  const std::string& display_name() const { return display_name_; }

 private:
  int fd_ = -1;
  bool owns_fd_ = false;
  bool eof_ = false;
  std::string buffer_;
  std::size_t line_no_ = 0;
  std::string display_name_;
};

// Subcommands (each returns the process exit code).
struct run_flags {
  std::string subscriptions;
  std::string store = "memory:";
  std::string events = "-";
  delivery_flags delivery;
  bool drain = false;
  bool drain_timeout_given = false;
  int verbosity = 0;
};
int run_dispatch(const run_flags& f);
int run_publish(const run_flags& f);
int run_worker(const run_flags& f);

struct fire_flags {
  std::string subscriptions;
  std::string subscription_id;
  std::string event_json;
  std::string store = "memory:";
  delivery_flags delivery;
  int verbosity = 0;
};
int run_fire(const fire_flags& f);

struct deliveries_flags {
  std::string store;
  std::string status;
  std::string subscription;
  bool json = false;
  std::size_t limit = 1000;
};
int run_deliveries(const deliveries_flags& f);

struct attempts_flags {
  std::string store;
  std::string message;
  std::string subscription;
  std::string since;  ///< ISO 8601; empty: all
  bool json = false;
  std::size_t limit = 1000;
};
int run_attempts(const attempts_flags& f);

struct stats_flags {
  std::string store;
  std::vector<std::string> subscriptions;
  bool json = false;
};
int run_stats(const stats_flags& f);
int run_redeliver(const std::string& store, const std::string& message_id);
int run_enable(const std::string& store, const std::string& subscription_id);
int run_recover(const std::string& store, const std::string& subscription_id,
                const std::string& since);

int run_validate(const std::string& path);
/// `subscriptions import|list|remove --store postgres:CONNINFO`.
int run_import(const std::string& store, const std::string& path);
int run_list(const std::string& store);
int run_remove(const std::string& store, const std::string& id);

struct sign_flags {
  std::vector<std::string> secrets;
  std::string id;
  std::string timestamp;
  std::string signature;
  std::optional<double> tolerance_seconds;
};
int run_sign(const sign_flags& f);
int run_verify(const sign_flags& f);

/// Reads all of stdin as bytes.
std::string read_stdin();

}  // namespace hookline::cli
