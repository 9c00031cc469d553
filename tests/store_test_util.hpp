#pragma once
// Helpers for the store tests: temporary directories, a private PostgreSQL schema per test,
// message and attempt builders. Thread safety: none needed (used from test bodies).

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>

#include "hookline/store.hpp"

namespace hookline::test {

/// A fresh directory under the system temp dir, removed with its contents at destruction.
class temp_dir {
 public:
  temp_dir() {
    static std::atomic<int> counter{0};
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("hookline-store-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) +
             "-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

/// The test PostgreSQL's conninfo (scripts/test.sh exports it); empty, with a test failure
/// recorded, when it is missing: the PostgreSQL tests fail rather than skip.
inline std::string test_pg_conninfo() {
  const char* c = std::getenv("HOOKLINE_TEST_PG");
  if (c == nullptr || *c == '\0') {
    ADD_FAILURE() << "HOOKLINE_TEST_PG is not set: run the tests with scripts/test.sh, or start a "
                     "server with scripts/postgres.sh start DIR and export its conninfo";
    return {};
  }
  return c;
}

/// Runs one SQL command on a fresh connection; throws std::runtime_error with the server's
/// message on failure.
inline void pg_exec(const std::string& conninfo, const std::string& sql) {
  PGconn* conn = PQconnectdb(conninfo.c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string msg = PQerrorMessage(conn);
    PQfinish(conn);
    throw std::runtime_error("connect: " + msg);
  }
  PGresult* r = PQexec(conn, sql.c_str());
  const auto st = PQresultStatus(r);
  std::string msg = PQerrorMessage(conn);
  PQclear(r);
  PQfinish(conn);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) throw std::runtime_error(sql + ": " + msg);
}

/// `conninfo` with the search_path set to `schema` (key=value and URI forms).
inline std::string with_search_path(const std::string& conninfo, const std::string& schema) {
  if (conninfo.rfind("postgres://", 0) == 0 || conninfo.rfind("postgresql://", 0) == 0) {
    const char sep = conninfo.find('?') == std::string::npos ? '?' : '&';
    return conninfo + sep + "options=-csearch_path%3D" + schema;
  }
  return conninfo + " options='-csearch_path=" + schema + "'";
}

/// A schema of its own in the test database, so parallel test binaries never see each other's
/// tables; dropped at destruction.
class pg_schema {
 public:
  explicit pg_schema(const std::string& base) : base_(base) {
    if (base_.empty()) return;
    static std::atomic<int> counter{0};
    std::random_device rd;
    name_ = "t_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
            std::to_string(rd() % 1000000);
    pg_exec(base_, "CREATE SCHEMA " + name_);
    conninfo_ = with_search_path(base_, name_);
  }
  ~pg_schema() {
    if (name_.empty()) return;
    try {
      pg_exec(base_, "DROP SCHEMA " + name_ + " CASCADE");
    } catch (...) {
    }
  }
  pg_schema(const pg_schema&) = delete;
  pg_schema& operator=(const pg_schema&) = delete;
  const std::string& conninfo() const { return conninfo_; }
  const std::string& name() const { return name_; }

 private:
  std::string base_, name_, conninfo_;
};

inline message make_message(const std::string& id, const std::string& subscription, time_point due,
                            bool ordered = false) {
  message m;
  m.id = id;
  m.subscription_id = subscription;
  m.event_id = "evt-" + id;
  m.event_name = "Create";
  m.url = "https://hooks.example.com/" + subscription;
  m.http_method = "POST";
  m.body = R"({"id":")" + id + R"(","path":"/Root/Content/a.txt"})";
  m.ordered = ordered;
  m.created_at = due;
  m.next_attempt_at = due;
  return m;
}

inline attempt_record make_attempt(const message& m, int attempt, int status, time_point at,
                                   bool success) {
  attempt_record a;
  a.message_id = m.id;
  a.subscription_id = m.subscription_id;
  a.event_id = m.event_id;
  a.event_name = m.event_name;
  a.url = m.url;
  a.http_method = m.http_method;
  a.attempt = attempt;
  a.started_at = at;
  a.duration = std::chrono::microseconds(1500);
  a.status_code = status;
  a.error = success ? "" : (status == 0 ? "connection refused" : "HTTP " + std::to_string(status));
  a.request_length = m.body.size();
  a.response_length = 7;
  a.response_head = success ? "ok" : "nope";
  a.success = success;
  return a;
}

}  // namespace hookline::test
