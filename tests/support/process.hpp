#pragma once
// Child processes for the tests that drive the built programs (the CLI and the examples).
// Thread safety: free functions are thread safe; a background_process belongs to one thread.

#include <sys/types.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace hookline::test {

#ifdef HOOKLINE_BINARY_DIR
/// Where the built programs are: $HOOKLINE_BIN_DIR, else <build>/bin. Inline, and only where
/// HOOKLINE_BINARY_DIR is defined: the build defines it per test executable, not for this library.
inline std::string bin_dir() {
  if (const char* d = std::getenv("HOOKLINE_BIN_DIR"); d && *d) return d;
  return HOOKLINE_BINARY_DIR "/bin";
}
#endif

/// The whole file, or "" when it cannot be read.
std::string slurp(const std::string& path);

/// The last non-empty line of `text` (the programs end their output with a JSON summary line).
std::string last_line(const std::string& text);

struct run_result {
  int code = -1;
  std::string out;
  std::string err;

  /// The last non-empty stdout line parsed as JSON; throws if it is not JSON.
  nlohmann::json summary() const { return nlohmann::json::parse(last_line(out)); }
};

/// Runs `args` (args[0] a path) with `input` on stdin, capturing stdout and stderr; kills it after
/// `timeout`. `started` gets the pid as soon as the child exists (to signal it from elsewhere).
run_result run(std::vector<std::string> args, const std::string& input = "",
               std::chrono::seconds timeout = std::chrono::seconds(60),
               const std::function<void(pid_t)>& started = {});

/// A program started in the background with stdout and stderr sent to files. Destruction stops it
/// like stop() does, so a failing test never leaves a child behind.
class background_process {
 public:
  /// `stop_grace`: how long stop() waits after SIGTERM before it resorts to SIGKILL.
  background_process(const std::vector<std::string>& args, std::string out_path,
                     std::string err_path,
                     std::chrono::milliseconds stop_grace = std::chrono::seconds(5));
  ~background_process();
  background_process(const background_process&) = delete;
  background_process& operator=(const background_process&) = delete;

  /// False when the program could not be started.
  bool started() const { return started_; }
  pid_t pid() const { return pid_; }

  /// Sends `signal` to the running child; false if it is not running or kill(2) failed.
  bool signal(int signal);
  /// SIGTERM, then the exit code (-1 if it had to be killed or died of a signal).
  int stop();
  /// Waits for it to exit on its own; the exit code, or -1 if it died of a signal.
  int wait();
  /// Like wait(), but kills it with SIGKILL (and returns -1) if it is still running after
  /// `timeout`.
  int wait_for(std::chrono::milliseconds timeout);
  /// True once reaped if a signal ended it.
  bool killed_by_signal() const;

  std::string out() const { return slurp(out_path_); }
  std::string err() const { return slurp(err_path_); }

 private:
  int reaped(int status);

  pid_t pid_ = -1;
  bool started_ = false;
  bool reaped_ = false;
  int status_ = 0;
  int code_ = -1;
  std::string out_path_;
  std::string err_path_;
  std::chrono::milliseconds stop_grace_;
};

/// Waits for a program to write its port number to `port_file`; the port, or 0 after `timeout`.
int wait_for_port_file(const std::string& port_file,
                       std::chrono::milliseconds timeout = std::chrono::seconds(5));

}  // namespace hookline::test
