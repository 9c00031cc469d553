#pragma once
// Thread safety: implementations must be safe to call from any thread.

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

namespace hookline {

/// The time source for schedules, leases and timestamps, so retry schedules are testable
/// without sleeping.
class clock {
 public:
  using time_point = std::chrono::system_clock::time_point;
  virtual ~clock() = default;
  virtual time_point now() const = 0;
  /// Called by the dispatcher to be woken when time jumps (manual clocks); real clocks ignore it.
  virtual void on_advance(std::function<void()> /*wake*/) {}
};

/// The wall clock.
class system_clock final : public clock {
 public:
  time_point now() const override { return std::chrono::system_clock::now(); }
};

/// A clock that only moves when told to; advance() wakes every registered dispatcher.
class manual_clock final : public clock {
 public:
  explicit manual_clock(time_point start = std::chrono::system_clock::now()) : now_(start) {}
  time_point now() const override {
    std::lock_guard lock(mutex_);
    return now_;
  }
  void advance(std::chrono::nanoseconds d) {
    std::vector<std::function<void()>> wakes;
    {
      std::lock_guard lock(mutex_);
      now_ += std::chrono::duration_cast<std::chrono::system_clock::duration>(d);
      wakes = wakes_;
    }
    for (auto& w : wakes) w();
  }
  void on_advance(std::function<void()> wake) override {
    std::lock_guard lock(mutex_);
    wakes_.push_back(std::move(wake));
  }

 private:
  mutable std::mutex mutex_;
  time_point now_;
  std::vector<std::function<void()>> wakes_;
};

}  // namespace hookline
