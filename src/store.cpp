#include "hookline/store.hpp"

#include <algorithm>
#include <cctype>
#include <string>

#include "hookline/error.hpp"

namespace hookline {

std::string_view to_string(message_status s) {
  switch (s) {
    case message_status::pending:
      return "pending";
    case message_status::delivered:
      return "delivered";
    case message_status::dead:
      return "dead";
  }
  return "unknown";
}

void delivery_store::record_results(std::vector<attempt_result>& results) {
  for (const auto& r : results) {
    if (r.retry_at) {
      reschedule(r.message_id, *r.retry_at, r.attempt);
    } else {
      complete(r.message_id, r.attempt);
    }
  }
}

forwarding_store::forwarding_store(std::shared_ptr<delivery_store> inner)
    : inner_(std::move(inner)) {
  if (!inner_) throw error("forwarding_store: the inner store is null");
}

void forwarding_store::enqueue(std::vector<message>& batch) {
  inner_->enqueue(batch);
}
std::vector<bool> forwarding_store::enqueue_claimed(std::vector<message>& batch,
                                                    const enqueue_lease& lease) {
  return inner_->enqueue_claimed(batch, lease);
}
std::vector<message> forwarding_store::claim(const claim_request& req) {
  return inner_->claim(req);
}
void forwarding_store::complete(const std::string& id, const attempt_record& a) {
  inner_->complete(id, a);
}
void forwarding_store::reschedule(const std::string& id, time_point next, const attempt_record& a) {
  inner_->reschedule(id, next, a);
}
void forwarding_store::record_results(std::vector<attempt_result>& results) {
  inner_->record_results(results);
}
void forwarding_store::dead_letter(const std::string& id, const std::string& reason,
                                   const attempt_record* a) {
  inner_->dead_letter(id, reason, a);
}
void forwarding_store::dead_letter_if_held(const std::string& id, const std::string& worker_id,
                                           const std::string& reason, const attempt_record* a) {
  inner_->dead_letter_if_held(id, worker_id, reason, a);
}
void forwarding_store::release(const std::string& id, time_point next) {
  inner_->release(id, next);
}
void forwarding_store::release_if_held(const std::string& id, const std::string& worker_id,
                                       time_point next) {
  inner_->release_if_held(id, worker_id, next);
}
std::size_t forwarding_store::release_worker(const std::string& worker_id) {
  return inner_->release_worker(worker_id);
}
bool forwarding_store::redeliver(const std::string& id, time_point now) {
  return inner_->redeliver(id, now);
}
std::size_t forwarding_store::recover(const std::string& subscription_id, time_point since,
                                      time_point now) {
  return inner_->recover(subscription_id, since, now);
}
std::optional<message> forwarding_store::get(const std::string& id) {
  return inner_->get(id);
}
std::vector<message> forwarding_store::query(const message_query& q) {
  return inner_->query(q);
}
std::vector<attempt_record> forwarding_store::attempts(const attempt_query& q) {
  return inner_->attempts(q);
}
store_counts forwarding_store::counts(time_point now) {
  return inner_->counts(now);
}
std::size_t forwarding_store::count_pending(time_point now) {
  return inner_->count_pending(now);
}
subscription_stats forwarding_store::stats(const std::string& subscription_id) {
  return inner_->stats(subscription_id);
}
std::optional<time_point> forwarding_store::next_due(time_point now) {
  return inner_->next_due(now);
}
bool forwarding_store::wait_for_notification(std::chrono::milliseconds timeout) {
  return inner_->wait_for_notification(timeout);
}
void forwarding_store::save_state(const subscription_state& s) {
  inner_->save_state(s);
}
std::vector<subscription_state> forwarding_store::load_states() {
  return inner_->load_states();
}
std::size_t forwarding_store::prune(time_point before) {
  return inner_->prune(before);
}

std::optional<message_status> parse_message_status(std::string_view s) {
  std::string lower(s);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  if (lower == "pending") return message_status::pending;
  if (lower == "delivered") return message_status::delivered;
  if (lower == "dead") return message_status::dead;
  return std::nullopt;
}

}  // namespace hookline
