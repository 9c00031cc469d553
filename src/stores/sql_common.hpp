#pragma once
// Helpers shared by the SQL stores (SQLite, PostgreSQL). Thread safety: group_committer is safe
// to use from any thread; the free functions are pure.

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/logger.h>
#include <spdlog/spdlog.h>

#include "hookline/error.hpp"
#include "hookline/store.hpp"

namespace hookline::detail {

// Times are stored as integer nanoseconds since the Unix epoch: lossless for
// std::chrono::system_clock on Linux, so a time read back compares equal to the one written.
inline std::int64_t to_ns(time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
inline time_point from_ns(std::int64_t ns) {
  return time_point(std::chrono::duration_cast<time_point::duration>(std::chrono::nanoseconds(ns)));
}

/// When an attempt ended; the stores use it as the message's updated_at so that retention follows
/// the caller's clock (a manual clock in tests) rather than the wall clock.
inline time_point attempt_end(const attempt_record& a) {
  return a.started_at + std::chrono::duration_cast<time_point::duration>(a.duration);
}

/// The HTTP status class counters one attempt adds to subscription_stats.
struct status_buckets {
  int s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0;
  explicit status_buckets(int code) {
    if (code >= 100 && code < 200) s1 = 1;
    if (code >= 200 && code < 300) s2 = 1;
    if (code >= 300 && code < 400) s3 = 1;
    if (code >= 400 && code < 500) s4 = 1;
    if (code >= 500 && code < 600) s5 = 1;
  }
};

/// Statistics of several attempts of one subscription, added to its row in one statement.
struct stats_delta {
  std::int64_t calls = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, failures = 0, errors = 0;
  std::int64_t request_bytes = 0, response_bytes = 0;
  void add(const attempt_record& a) {
    const status_buckets b(a.status_code);
    ++calls;
    s1 += b.s1;
    s2 += b.s2;
    s3 += b.s3;
    s4 += b.s4;
    s5 += b.s5;
    failures += a.success ? 0 : 1;
    errors += a.status_code == 0 ? 1 : 0;
    request_bytes += static_cast<std::int64_t>(a.request_length);
    response_bytes += static_cast<std::int64_t>(a.response_length);
  }
};

/// A random 128-bit hex key; makes an attempt insert idempotent when a batch is retried after a
/// lost connection left its commit outcome unknown.
inline std::string random_key() {
  thread_local std::mt19937_64 gen{std::random_device{}()};
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int half = 0; half < 2; ++half) {
    std::uint64_t v = gen();
    for (int i = 0; i < 16; ++i) {
      out[static_cast<std::size_t>(half * 16 + i)] = digits[v & 0xf];
      v >>= 4;
    }
  }
  return out;
}

/// The library's logger for stores: the "hookline" logger if the host registered one, else a
/// logger without sinks (the library never writes to stdout/stderr on its own).
inline std::shared_ptr<spdlog::logger> store_logger() {
  if (auto l = spdlog::get("hookline")) return l;
  return std::make_shared<spdlog::logger>("hookline");
}

/// enqueue(): every message needs an id and a subscription (checked before anything is stored).
inline void check_new_messages(const std::vector<message>& batch, const std::string& where) {
  for (const auto& m : batch) {
    if (m.id.empty()) throw hookline::error(where + ": enqueue: message id is empty");
    if (m.subscription_id.empty()) {
      throw hookline::error(where + ": enqueue: message " + m.id + ": subscription_id is empty");
    }
  }
}

/// One write for the committer thread; `run` executes inside the batch's transaction.
struct write_op {
  std::function<void()> run;
  bool durable = false;    ///< the commit that carries it must reach stable storage
  bool waited = false;     ///< a caller waits for it (errors go to the caller, not the log)
  std::size_t weight = 1;  ///< results it records (see group_committer's max_unwaited)
  const char* what = "";   ///< for the log when an unwaited op fails
  // Completion, guarded by group_committer's mutex.
  bool done = false;
  std::exception_ptr error;
};

/// Group commit: a single committer thread takes every write queued while the previous commit
/// was in progress and runs them in one transaction (one fsync for all of them). Waited writes
/// (enqueue, claim) return after their batch committed; fire-and-forget writes (complete,
/// reschedule, ...) return at once but are ordered before any later write, and barrier() lets
/// reads observe them.
class group_committer {
 public:
  /// Runs `ops` as one transaction. Throws if the transaction as a whole failed; a single op's
  /// failure is reported by storing it in op->error (the batch function decides how to isolate).
  using batch_fn = std::function<void(std::vector<std::shared_ptr<write_op>>&)>;

  /// `max_unwaited`: with it, submit() waits while fire-and-forget writes of that total weight
  /// are not yet committed (at least one always goes), so a caller delivering faster than the
  /// store records cannot run ahead of it: what a crash can send twice stays bounded.
  group_committer(batch_fn fn, std::shared_ptr<spdlog::logger> log, std::size_t max_batch = 2048,
                  std::size_t max_unwaited = 0)
      : fn_(std::move(fn)),
        log_(std::move(log)),
        max_batch_(max_batch),
        max_unwaited_(max_unwaited) {
    thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "hookline-commit");  // for top, perf and gdb
      loop();
    });
  }
  ~group_committer() { stop(); }
  group_committer(const group_committer&) = delete;
  group_committer& operator=(const group_committer&) = delete;

  /// Drains the queue and joins the thread; later submissions throw.
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    work_cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  void submit_and_wait(std::shared_ptr<write_op> op) {
    op->waited = true;
    std::unique_lock lock(mutex_);
    push(lock, op);
    done_cv_.wait(lock, [&] { return op->done; });
    if (op->error) std::rethrow_exception(op->error);
  }

  void submit(std::shared_ptr<write_op> op) {
    std::unique_lock lock(mutex_);
    if (max_unwaited_ > 0) {
      done_cv_.wait(lock, [&] {
        return stopping_ || unwaited_ == 0 || unwaited_ + op->weight <= max_unwaited_;
      });
    }
    unwaited_ += op->weight;
    try {
      push(lock, std::move(op));
    } catch (...) {
      unwaited_ = 0;  // closed: nothing more is counted
      throw;
    }
  }

  /// Waits until every write submitted before this call is committed (or failed).
  void barrier() {
    std::unique_lock lock(mutex_);
    const std::uint64_t target = submitted_;
    done_cv_.wait(lock, [&] { return finished_ >= target; });
  }

  std::uint64_t commits() const {
    std::lock_guard lock(mutex_);
    return commits_;
  }

 private:
  void push(std::unique_lock<std::mutex>&, std::shared_ptr<write_op> op) {
    if (stopping_) throw hookline::error("store is closed");
    queue_.push_back(std::move(op));
    ++submitted_;
    work_cv_.notify_one();
  }

  void loop() {
    std::vector<std::shared_ptr<write_op>> batch;
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping and drained
        const std::size_t n = std::min(queue_.size(), max_batch_);
        batch.assign(std::make_move_iterator(queue_.begin()),
                     std::make_move_iterator(queue_.begin() + static_cast<std::ptrdiff_t>(n)));
        queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
      }
      std::exception_ptr failure;
      try {
        fn_(batch);
      } catch (...) {
        failure = std::current_exception();
      }
      {
        std::lock_guard lock(mutex_);
        if (!failure) ++commits_;
        for (auto& op : batch) {
          if (failure && !op->error) op->error = failure;
          op->done = true;
          if (!op->waited) unwaited_ -= std::min(unwaited_, op->weight);
        }
        finished_ += batch.size();
      }
      done_cv_.notify_all();
      for (auto& op : batch) {
        // Nobody waits for these; the message stays leased or pending and is retried later.
        if (op->error && !op->waited) log_error(*op);
      }
      batch.clear();
    }
  }

  void log_error(const write_op& op) {
    try {
      std::rethrow_exception(op.error);
    } catch (const std::exception& e) {
      log_->error("store: {} failed: {}", op.what, e.what());
    } catch (...) {
      log_->error("store: {} failed", op.what);
    }
  }

  batch_fn fn_;
  std::shared_ptr<spdlog::logger> log_;
  std::size_t max_batch_;
  std::size_t max_unwaited_;
  std::size_t unwaited_ = 0;  // weight of fire-and-forget writes not yet committed
  mutable std::mutex mutex_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<std::shared_ptr<write_op>> queue_;
  std::uint64_t submitted_ = 0, finished_ = 0, commits_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

/// Applies store_options::retention: prunes at open and then every `interval` on its own thread
/// (nobody else has to remember to). A retention of zero turns it off.
class retention_pruner {
 public:
  retention_pruner(delivery_store& store, std::chrono::hours retention,
                   std::shared_ptr<spdlog::logger> log,
                   std::chrono::milliseconds interval = std::chrono::minutes(10))
      : store_(store), retention_(retention), log_(std::move(log)), interval_(interval) {
    if (retention_.count() > 0) {
      thread_ = std::thread([this] {
        pthread_setname_np(pthread_self(), "hookline-prune");
        loop();
      });
    }
  }
  ~retention_pruner() { stop(); }
  retention_pruner(const retention_pruner&) = delete;
  retention_pruner& operator=(const retention_pruner&) = delete;

  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void loop() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      lock.unlock();
      try {
        const auto removed = store_.prune(std::chrono::system_clock::now() - retention_);
        if (removed > 0) log_->info("store: pruned {} delivered messages and attempts", removed);
      } catch (const std::exception& e) {
        log_->warn("store: pruning failed: {}", e.what());
      }
      lock.lock();
      cv_.wait_for(lock, interval_, [&] { return stopping_; });
    }
  }

  delivery_store& store_;
  std::chrono::hours retention_;
  std::shared_ptr<spdlog::logger> log_;
  std::chrono::milliseconds interval_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace hookline::detail
