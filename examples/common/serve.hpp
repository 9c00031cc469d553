#pragma once
// Listening, the --port-file announcement and the signal-driven shutdown shared by the example
// servers. Thread safety: call from main() only; serve_until_signalled() owns the stopper thread.

#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>

namespace hookline::examples {

/// Binds `server` to host:port (port 0 picks a free port). The bound port, or -1 after printing
/// "<program>: cannot listen on HOST:PORT" to stderr.
inline int bind_server(httplib::Server& server, const std::string& program, const std::string& host,
                       int port) {
  int bound = port;
  if (bound == 0) {
    bound = server.bind_to_any_port(host);
  } else if (!server.bind_to_port(host, bound)) {
    bound = -1;
  }
  if (bound <= 0) {
    std::cerr << program << ": cannot listen on " << host << ":" << port << "\n";
    return -1;
  }
  return bound;
}

/// Writes the port to `path` (if not empty) through a rename, so a reader polling for the file
/// never sees a partly written number.
inline void write_port_file(const std::string& path, int port) {
  if (path.empty()) return;
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << port << "\n";
  std::rename(tmp.c_str(), path.c_str());
}

/// Serves on the bound `server` until one of `stop_signals` arrives. The caller blocks those
/// signals in every thread (pthread_sigmask before starting any) so sigwait here receives them.
inline void serve_until_signalled(httplib::Server& server, const sigset_t& stop_signals) {
  std::atomic<bool> stopping{false};
  std::thread stopper([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    stopping = true;
    server.stop();
  });
  server.listen_after_bind();
  // The listener can also end on its own (an accept error): wake the stopper so it exits.
  if (!stopping) ::kill(::getpid(), SIGTERM);
  stopper.join();
}

}  // namespace hookline::examples
