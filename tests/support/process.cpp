#include "process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace hookline::test {

using namespace std::chrono_literals;

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string last_line(const std::string& text) {
  std::istringstream in(text);
  std::string line, last;
  while (std::getline(in, line)) {
    if (!line.empty()) last = line;
  }
  return last;
}

run_result run(std::vector<std::string> args, const std::string& input,
               std::chrono::seconds timeout, const std::function<void(pid_t)>& started) {
  int in[2], out[2], err[2];
  if (pipe(in) != 0 || pipe(out) != 0 || pipe(err) != 0) throw std::runtime_error("pipe");
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) close(fd);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  if (started) started(pid);
  close(in[0]);
  close(out[1]);
  close(err[1]);
  fcntl(in[1], F_SETFL, O_NONBLOCK);
  run_result r;
  std::size_t written = 0;
  int stdin_fd = in[1];
  if (input.empty()) {
    close(stdin_fd);
    stdin_fd = -1;
  }
  bool out_open = true, err_open = true;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (out_open || err_open) {
    std::vector<pollfd> fds;
    if (out_open) fds.push_back({out[0], POLLIN, 0});
    if (err_open) fds.push_back({err[0], POLLIN, 0});
    if (stdin_fd >= 0) fds.push_back({stdin_fd, POLLOUT, 0});
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      break;
    }
    if (poll(fds.data(), fds.size(), 200) <= 0) continue;
    for (const auto& p : fds) {
      if (!p.revents) continue;
      if (p.fd == stdin_fd) {
        const auto n = write(stdin_fd, input.data() + written, input.size() - written);
        if (n > 0) written += static_cast<std::size_t>(n);
        if (n < 0 || written == input.size()) {
          close(stdin_fd);
          stdin_fd = -1;
        }
        continue;
      }
      char buf[65536];
      const auto n = read(p.fd, buf, sizeof buf);
      auto& target = p.fd == out[0] ? r.out : r.err;
      if (n > 0) {
        target.append(buf, static_cast<std::size_t>(n));
      } else {
        (p.fd == out[0] ? out_open : err_open) = false;
      }
    }
  }
  if (stdin_fd >= 0) close(stdin_fd);
  close(out[0]);
  close(err[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// posix_spawn rather than fork: the tests run server threads, and only async-signal-safe calls
// are allowed between fork and exec in a multithreaded process.
background_process::background_process(const std::vector<std::string>& args, std::string out_path,
                                       std::string err_path, std::chrono::milliseconds stop_grace)
    : out_path_(std::move(out_path)), err_path_(std::move(err_path)), stop_grace_(stop_grace) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  started_ = !args.empty() && posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ) == 0;
  if (!started_) pid_ = -1;
  posix_spawn_file_actions_destroy(&fa);
}

background_process::~background_process() {
  stop();
}

int background_process::reaped(int status) {
  reaped_ = true;
  status_ = status;
  pid_ = 0;
  return code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool background_process::signal(int signal) {
  return pid_ > 0 && ::kill(pid_, signal) == 0;
}

int background_process::stop() {
  if (pid_ <= 0) return code_;
  ::kill(pid_, SIGTERM);
  return wait_for(stop_grace_);
}

int background_process::wait() {
  if (pid_ <= 0) return code_;
  int status = 0;
  if (::waitpid(pid_, &status, 0) != pid_) {
    pid_ = 0;
    return code_ = -1;
  }
  return reaped(status);
}

int background_process::wait_for(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return code_;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid_, &status, WNOHANG) == pid_) return reaped(status);
    std::this_thread::sleep_for(20ms);
  }
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, &status, 0);
  reaped(status);
  return code_ = -1;
}

bool background_process::killed_by_signal() const {
  return reaped_ && WIFSIGNALED(status_);
}

int wait_for_port_file(const std::string& port_file, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (const auto text = slurp(port_file); !text.empty()) return std::stoi(text);
    if (std::chrono::steady_clock::now() >= deadline) return 0;
    std::this_thread::sleep_for(25ms);
  }
}

}  // namespace hookline::test
