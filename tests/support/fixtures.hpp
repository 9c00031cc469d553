#pragma once
// Builders for the hub and dispatcher tests: subscriptions, events and options that deliver to
// the loopback test server quickly. Thread safety: pure functions, safe anywhere.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "hookline/hookline.hpp"

namespace hookline::test {

/// A subscription to `url` for every event on `content_type` items under `path`.
inline subscription make_subscription(std::string id, std::string url, std::string path,
                                      std::string content_type = "File") {
  subscription s;
  s.id = std::move(id);
  s.url = std::move(url);
  s.filter.path = std::move(path);
  s.filter.content_types = {{std::move(content_type), {"All"}}};
  return s;
}

/// An `event_name` event on the item `name` in the folder `parent`.
inline event make_content_event(std::string event_name, const std::string& parent,
                                const std::string& name, std::string content_type,
                                std::int64_t node_id) {
  event e;
  e.event_name = std::move(event_name);
  e.path = parent + "/" + name;
  e.content_type = std::move(content_type);
  e.name = name;
  e.node_id = node_id;
  return e;
}

/// Options for the loopback server: private addresses allowed, short timeouts, and `retries`
/// retries 50 ms apart without jitter so retry tests finish fast and deterministically.
inline options fast_options(std::size_t retries) {
  using namespace std::chrono_literals;
  options o;
  o.delivery.allow_private_networks = true;
  o.delivery.connect_timeout = 1s;
  o.delivery.request_timeout = 3s;
  o.delivery.retry.schedule.assign(retries, 50ms);
  o.delivery.retry.jitter = 0;
  return o;
}

}  // namespace hookline::test
