// In-process delivery store. One mutex guards everything; every operation is O(log n) in the
// number of pending messages except the queries, prune and recover, which scan.
//
// Memory matters here (a million pending retries must fit in a few hundred MB), so an entry
// keeps its id and event id in one allocation and shares subscription id, url, method, event
// name, worker id and error text through a reference-counted string pool.
#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>

#include "hookline/error.hpp"
#include "hookline/store.hpp"
#include "stores/factories.hpp"
#include "string_map.hpp"

namespace hookline::detail {

namespace {

/// Interned strings with reference counts; the pointers stay valid while referenced.
class string_pool {
 public:
  const std::string* acquire(std::string_view s) {
    auto it = refs_.find(s);
    if (it == refs_.end()) it = refs_.emplace(std::string(s), 0).first;
    ++it->second;
    return &it->first;
  }
  void release(const std::string* p) {
    if (p == nullptr) return;
    auto it = refs_.find(std::string_view(*p));
    if (it != refs_.end() && --it->second == 0) refs_.erase(it);
  }

 private:
  string_map<std::size_t> refs_;
};

const std::string empty_string;

struct entry {
  std::string body;
  std::unique_ptr<char[]> text;  // id then event id, back to back
  std::uint32_t id_len = 0;
  std::uint32_t event_len = 0;
  message_status status = message_status::pending;
  bool ordered = false;
  bool leased = false;
  bool indexed = false;  // in due_
  const std::string* subscription = nullptr;
  const std::string* url = nullptr;
  const std::string* method = nullptr;
  const std::string* event_name = nullptr;
  const std::string* worker = nullptr;  // lease holder
  const std::string* error = nullptr;   // last error, may be null
  std::int64_t seq = 0;
  time_point created{};
  time_point next{};
  time_point updated{};
  time_point lease_until{};
  int attempts = 0;
  int last_status = 0;

  std::string_view id() const { return {text.get(), id_len}; }
  std::string_view event_id() const { return {text.get() + id_len, event_len}; }
};

struct time_key {
  time_point at;
  std::int64_t seq;
  entry* e;
  bool operator<(const time_key& o) const { return at != o.at ? at < o.at : seq < o.seq; }
};

constexpr std::size_t max_attempt_log = 100000;

class memory_store final : public delivery_store {
 public:
  explicit memory_store(const store_options& /*options*/) {}

  void enqueue(std::vector<message>& batch) override { insert(batch, nullptr); }

  std::vector<bool> enqueue_claimed(std::vector<message>& batch,
                                    const enqueue_lease& lease) override {
    auto leased = leased_by_publisher(batch, lease.count);
    insert(batch, &lease, &leased);
    return leased;
  }

  // `lease`/`leased`: the messages stored as claimed by the publisher (enqueue_claimed()); a
  // message whose id is stored already (earlier, or earlier in this batch) keeps that place and
  // is not leased, as in the SQL stores, so an enqueue the host retries stores nothing twice.
  void insert(std::vector<message>& batch, const enqueue_lease* lease,
              std::vector<bool>* leased = nullptr) {
    std::lock_guard lock(mutex_);
    // Check everything first: a failed enqueue stores nothing.
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const auto& m = batch[i];
      if (m.id.empty()) throw error("enqueue: message " + std::to_string(i) + " has no id");
      if (m.subscription_id.empty())
        throw error("enqueue: message " + m.id + ": subscription_id is empty");
    }
    for (auto& m : batch) {
      if (auto known = by_id_.find(std::string_view(m.id)); known != by_id_.end()) {
        m.sequence = known->second->seq;
        if (leased != nullptr) (*leased)[static_cast<std::size_t>(&m - batch.data())] = false;
        continue;
      }
      m.sequence = ++last_seq_;
      m.status = message_status::pending;
      if (m.created_at == time_point{}) m.created_at = last_now_;
      if (m.updated_at == time_point{}) m.updated_at = m.created_at;
      auto [it, inserted] = entries_.try_emplace(m.sequence);
      entry& e = it->second;
      e.seq = m.sequence;
      e.body = m.body;
      e.id_len = static_cast<std::uint32_t>(m.id.size());
      e.event_len = static_cast<std::uint32_t>(m.event_id.size());
      e.text = std::make_unique<char[]>(m.id.size() + m.event_id.size());
      std::memcpy(e.text.get(), m.id.data(), m.id.size());
      if (!m.event_id.empty())
        std::memcpy(e.text.get() + m.id.size(), m.event_id.data(), m.event_id.size());
      e.subscription = pool_.acquire(m.subscription_id);
      e.url = pool_.acquire(m.url);
      e.method = pool_.acquire(m.http_method);
      e.event_name = pool_.acquire(m.event_name);
      e.error = m.last_error.empty() ? nullptr : pool_.acquire(m.last_error);
      e.ordered = m.ordered;
      e.created = m.created_at;
      e.next = m.next_attempt_at;
      e.updated = m.updated_at;
      e.attempts = m.attempts;
      e.last_status = m.last_status;
      by_id_.emplace(e.id(), &e);
      ++pending_;
      if (e.ordered) ordered_[e.subscription].insert(e.seq);
      if (lease != nullptr && (*leased)[static_cast<std::size_t>(&m - batch.data())]) {
        e.leased = true;
        e.worker = pool_.acquire(lease->worker_id);
        e.lease_until = lease->until;
        leased_.insert({e.lease_until, e.seq, &e});
        continue;
      }
      reindex_subscription_head(e);
    }
  }

  std::vector<message> claim(const claim_request& req) override {
    std::lock_guard lock(mutex_);
    note_now(req.now);
    expire_leases(req.now);
    std::vector<message> out;
    out.reserve(std::min<std::size_t>(req.max, due_.size()));
    while (out.size() < req.max && !due_.empty() && due_.begin()->at <= req.now) {
      entry* e = due_.begin()->e;
      due_.erase(due_.begin());
      e->indexed = false;
      e->leased = true;
      pool_.release(e->worker);  // the holder of a lease that ran out
      e->worker = pool_.acquire(req.worker_id);
      e->lease_until = req.now + req.lease;
      leased_.insert({e->lease_until, e->seq, e});
      out.push_back(to_message(*e));
    }
    return out;
  }

  void complete(const std::string& id, const attempt_record& a) override {
    std::lock_guard lock(mutex_);
    attempt_record copy = a;
    complete_locked(id, std::move(copy));
  }

  void reschedule(const std::string& id, time_point next, const attempt_record& a) override {
    std::lock_guard lock(mutex_);
    attempt_record copy = a;
    reschedule_locked(id, next, std::move(copy));
  }

  void record_results(std::vector<attempt_result>& results) override {
    std::lock_guard lock(mutex_);
    for (auto& r : results) {
      if (r.retry_at) {
        reschedule_locked(r.message_id, *r.retry_at, std::move(r.attempt),
                          r.worker_id.empty() ? nullptr : &r.worker_id);
      } else {
        complete_locked(r.message_id, std::move(r.attempt));
      }
    }
  }

  void complete_locked(const std::string& id, attempt_record&& a) {
    entry* e = find(id);
    if (e == nullptr) return;
    unlease(*e);
    e->attempts = std::max(e->attempts, a.attempt);
    e->last_status = a.status_code;
    set_error(*e, {});
    e->updated = end_of(a);
    finish(*e, message_status::delivered);
    record(std::move(a));
  }

  // With `worker`, the message moves only while it holds the lease; the attempt is kept anyway.
  void reschedule_locked(const std::string& id, time_point next, attempt_record&& a,
                         const std::string* worker = nullptr) {
    entry* e = find(id);
    if (e == nullptr) return;
    if (worker != nullptr && !held_by(*e, *worker)) {
      record(std::move(a));
      return;
    }
    unlease(*e);
    e->attempts = std::max(e->attempts, a.attempt);
    e->last_status = a.status_code;
    set_error(*e, a.error.empty() ? "HTTP " + std::to_string(a.status_code) : a.error);
    e->updated = end_of(a);
    record(std::move(a));
    if (e->status != message_status::pending) return;
    unindex(*e);
    e->next = next;
    index(*e);
  }

  void dead_letter(const std::string& id, const std::string& reason,
                   const attempt_record* a) override {
    std::lock_guard lock(mutex_);
    dead_letter_locked(id, nullptr, reason, a);
  }

  void dead_letter_if_held(const std::string& id, const std::string& worker_id,
                           const std::string& reason, const attempt_record* a) override {
    std::lock_guard lock(mutex_);
    dead_letter_locked(id, &worker_id, reason, a);
  }

  // With `worker`, only while it holds the lease; the attempt is kept anyway.
  void dead_letter_locked(const std::string& id, const std::string* worker,
                          const std::string& reason, const attempt_record* a) {
    entry* e = find(id);
    if (e == nullptr) return;
    if (worker != nullptr && !held_by(*e, *worker)) {
      if (a != nullptr) record(attempt_record(*a));
      return;
    }
    unlease(*e);
    if (a != nullptr) {
      record(attempt_record(*a));
      e->attempts = std::max(e->attempts, a->attempt);
      e->last_status = a->status_code;
      e->updated = end_of(*a);
    } else {
      e->updated = std::max(last_now_, e->created);
    }
    set_error(*e, reason);
    finish(*e, message_status::dead);
  }

  void release(const std::string& id, time_point next) override {
    std::lock_guard lock(mutex_);
    release_locked(id, nullptr, next);
  }

  void release_if_held(const std::string& id, const std::string& worker_id,
                       time_point next) override {
    std::lock_guard lock(mutex_);
    release_locked(id, &worker_id, next);
  }

  // With `worker`, only while it holds the lease.
  void release_locked(const std::string& id, const std::string* worker, time_point next) {
    entry* e = find(id);
    if (e == nullptr) return;
    if (worker != nullptr && !held_by(*e, *worker)) return;
    unlease(*e);
    if (e->status != message_status::pending) return;
    unindex(*e);
    e->next = next;
    index(*e);
  }

  std::size_t release_worker(const std::string& worker_id) override {
    std::lock_guard lock(mutex_);
    std::vector<entry*> mine;
    for (const auto& k : leased_)
      if (held_by(*k.e, worker_id)) mine.push_back(k.e);
    for (entry* e : mine) {
      unlease(*e);
      index(*e);
    }
    // Its leases that ran out and nobody claimed since: forgotten too, as the SQL stores clear
    // lease_owner (they are claimable already). A stop or a dead worker's cleanup, so a scan.
    std::size_t ran_out = 0;
    for (auto& [seq, e] : entries_) {
      if (!e.leased && held_by(e, worker_id)) {
        pool_.release(e.worker);
        e.worker = nullptr;
        ++ran_out;
      }
    }
    return mine.size() + ran_out;
  }

  bool redeliver(const std::string& id, time_point now) override {
    std::lock_guard lock(mutex_);
    note_now(now);
    entry* e = find(id);
    if (e == nullptr) return false;
    if (e->status == message_status::pending) {
      if (!e->leased) {
        unindex(*e);
        e->next = now;
        index(*e);
      }
      return true;
    }
    revive(*e, now);
    return true;
  }

  std::size_t recover(const std::string& subscription_id, time_point since,
                      time_point now) override {
    std::lock_guard lock(mutex_);
    note_now(now);
    std::size_t n = 0;
    for (auto& [seq, e] : entries_) {
      if (e.status == message_status::dead && *e.subscription == subscription_id &&
          e.created >= since) {
        revive(e, now);
        ++n;
      }
    }
    return n;
  }

  std::optional<message> get(const std::string& id) override {
    std::lock_guard lock(mutex_);
    entry* e = find(id);
    if (e == nullptr) return std::nullopt;
    return to_message(*e);
  }

  std::vector<message> query(const message_query& q) override {
    std::lock_guard lock(mutex_);
    std::vector<message> out;
    for (const auto& [seq, e] : entries_) {
      if (out.size() >= q.limit) break;
      if (q.status && e.status != *q.status) continue;
      if (q.subscription_id && *e.subscription != *q.subscription_id) continue;
      if (q.since && e.created < *q.since) continue;
      out.push_back(to_message(e));
    }
    return out;
  }

  std::vector<attempt_record> attempts(const attempt_query& q) override {
    std::lock_guard lock(mutex_);
    // The most recent `limit` matches, returned oldest first.
    std::vector<attempt_record> out;
    for (auto it = log_.rbegin(); it != log_.rend() && out.size() < q.limit; ++it) {
      if (q.message_id && it->message_id != *q.message_id) continue;
      if (q.subscription_id && it->subscription_id != *q.subscription_id) continue;
      if (q.since && it->started_at < *q.since) continue;
      out.push_back(*it);
    }
    std::reverse(out.begin(), out.end());
    return out;
  }

  std::size_t count_pending(time_point now) override {
    std::lock_guard lock(mutex_);
    note_now(now);
    return pending_;
  }

  store_counts counts(time_point now) override {
    std::lock_guard lock(mutex_);
    note_now(now);
    store_counts c;
    c.pending = pending_;
    c.delivered = delivered_;
    c.dead = dead_;
    for (auto it = leased_.rbegin(); it != leased_.rend() && it->at > now; ++it) ++c.in_flight;
    return c;
  }

  subscription_stats stats(const std::string& subscription_id) override {
    std::lock_guard lock(mutex_);
    auto it = stats_.find(std::string_view(subscription_id));
    return it == stats_.end() ? subscription_stats{} : it->second;
  }

  std::optional<time_point> next_due(time_point now) override {
    std::lock_guard lock(mutex_);
    note_now(now);
    std::optional<time_point> best;
    if (!due_.empty()) best = due_.begin()->at;
    // An expiring lease makes its message claimable again.
    if (!leased_.empty() && (!best || leased_.begin()->at < *best)) best = leased_.begin()->at;
    return best;
  }

  void save_state(const subscription_state& s) override {
    std::lock_guard lock(mutex_);
    states_[s.subscription_id] = s;
  }

  std::vector<subscription_state> load_states() override {
    std::lock_guard lock(mutex_);
    std::vector<subscription_state> out;
    out.reserve(states_.size());
    for (const auto& [id, s] : states_) out.push_back(s);
    return out;
  }

  std::size_t prune(time_point before) override {
    std::lock_guard lock(mutex_);
    std::size_t removed = 0;
    for (auto it = entries_.begin(); it != entries_.end();) {
      entry& e = it->second;
      if (e.status == message_status::delivered && e.updated < before) {
        --delivered_;
        by_id_.erase(e.id());
        drop_strings(e);
        it = entries_.erase(it);
        ++removed;
      } else {
        ++it;
      }
    }
    const auto old_size = log_.size();
    log_.erase(std::remove_if(log_.begin(), log_.end(),
                              [&](const attempt_record& a) { return a.started_at < before; }),
               log_.end());
    removed += old_size - log_.size();
    return removed;
  }

 private:
  entry* find(std::string_view id) {
    auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : it->second;
  }

  void note_now(time_point now) { last_now_ = std::max(last_now_, now); }

  static time_point end_of(const attempt_record& a) {
    return a.started_at + std::chrono::duration_cast<time_point::duration>(a.duration);
  }

  message to_message(const entry& e) const {
    message m;
    m.id = std::string(e.id());
    m.subscription_id = *e.subscription;
    m.event_id = std::string(e.event_id());
    m.event_name = *e.event_name;
    m.url = *e.url;
    m.http_method = *e.method;
    m.body = e.body;
    m.ordered = e.ordered;
    m.status = e.status;
    m.attempts = e.attempts;
    m.created_at = e.created;
    m.next_attempt_at = e.next;
    m.updated_at = e.updated;
    m.last_status = e.last_status;
    m.last_error = e.error != nullptr ? *e.error : empty_string;
    m.sequence = e.seq;
    return m;
  }

  void set_error(entry& e, const std::string& text) {
    if (e.error != nullptr && *e.error == text) return;
    pool_.release(e.error);
    e.error = text.empty() ? nullptr : pool_.acquire(text);
  }

  void drop_strings(entry& e) {
    pool_.release(e.subscription);
    pool_.release(e.url);
    pool_.release(e.method);
    pool_.release(e.event_name);
    pool_.release(e.error);
    pool_.release(e.worker);
    e.subscription = e.url = e.method = e.event_name = e.error = e.worker = nullptr;
  }

  bool is_head(const entry& e) const {
    if (!e.ordered) return true;
    auto it = ordered_.find(e.subscription);
    return it != ordered_.end() && !it->second.empty() && *it->second.begin() == e.seq;
  }

  // Invariant: an entry is in due_ iff it is pending, not leased, and (unordered or the head of
  // its subscription's ordered queue).
  void index(entry& e) {
    if (e.indexed || e.leased || e.status != message_status::pending || !is_head(e)) return;
    due_.insert({e.next, e.seq, &e});
    e.indexed = true;
  }
  void unindex(entry& e) {
    if (!e.indexed) return;
    due_.erase({e.next, e.seq, &e});
    e.indexed = false;
  }

  // After the ordered queue of e's subscription changed: only its head may be claimable.
  void reindex_subscription_head(entry& e) {
    if (!e.ordered) {
      index(e);
      return;
    }
    auto& q = ordered_[e.subscription];
    for (auto seq : q) {
      entry& other = entries_.at(seq);
      if (seq == *q.begin()) {
        index(other);
      } else if (other.indexed) {
        unindex(other);
      } else {
        break;  // entries after the first non-indexed one cannot be indexed
      }
    }
  }

  void unlease(entry& e) {
    if (e.leased) {
      leased_.erase({e.lease_until, e.seq, &e});
      e.leased = false;
    }
    pool_.release(e.worker);
    e.worker = nullptr;
  }

  // A lease that ran out makes the message claimable; its holder is remembered until another
  // claim, so that its late result still counts when nobody took the message over (as in the
  // SQL stores, which keep lease_owner).
  void expire_leases(time_point now) {
    while (!leased_.empty() && leased_.begin()->at <= now) {
      entry* e = leased_.begin()->e;
      leased_.erase(leased_.begin());
      e->leased = false;
      index(*e);
    }
  }

  // Whether `worker` holds the lease, or held the one that ran out and nobody claimed since.
  static bool held_by(const entry& e, const std::string& worker) {
    return e.worker != nullptr && *e.worker == worker;
  }

  void finish(entry& e, message_status s) {
    if (e.status == s) return;
    unindex(e);
    if (e.status == message_status::pending) {
      --pending_;
      if (e.ordered) {
        auto it = ordered_.find(e.subscription);
        if (it != ordered_.end()) {
          it->second.erase(e.seq);
          if (it->second.empty()) {
            ordered_.erase(it);
          } else {
            index(entries_.at(*it->second.begin()));
          }
        }
      }
    } else if (e.status == message_status::delivered) {
      --delivered_;
    } else {
      --dead_;
    }
    e.status = s;
    if (s == message_status::delivered) ++delivered_;
    if (s == message_status::dead) ++dead_;
  }

  // Delivered or dead -> pending, due now, with a fresh attempt budget.
  void revive(entry& e, time_point now) {
    if (e.status == message_status::delivered) --delivered_;
    if (e.status == message_status::dead) --dead_;
    e.status = message_status::pending;
    ++pending_;
    e.attempts = 0;
    e.next = now;
    e.updated = now;
    if (e.ordered) {
      auto& q = ordered_[e.subscription];
      q.insert(e.seq);
      reindex_subscription_head(e);
    } else {
      index(e);
    }
  }

  void record(attempt_record&& a) {
    auto it = stats_.find(std::string_view(a.subscription_id));
    if (it == stats_.end()) it = stats_.emplace(a.subscription_id, subscription_stats{}).first;
    auto& s = it->second;
    ++s.calls;
    const int c = a.status_code;
    if (c >= 100 && c < 200) ++s.status_1xx;
    if (c >= 200 && c < 300) ++s.status_2xx;
    if (c >= 300 && c < 400) ++s.status_3xx;
    if (c >= 400 && c < 500) ++s.status_4xx;
    if (c >= 500 && c < 600) ++s.status_5xx;
    if (!a.success) ++s.failures;
    if (c == 0) ++s.errors;
    s.request_bytes += a.request_length;
    s.response_bytes += a.response_length;
    log_.push_back(std::move(a));
    if (log_.size() > max_attempt_log) log_.pop_front();
  }

  std::mutex mutex_;
  std::map<std::int64_t, entry> entries_;  // by sequence; node addresses are stable
  std::unordered_map<std::string_view, entry*> by_id_;
  std::set<time_key> due_;     // claimable, by (next attempt, sequence)
  std::set<time_key> leased_;  // by (lease end, sequence)
  std::unordered_map<const std::string*, std::set<std::int64_t>> ordered_;  // pending, ordered
  string_pool pool_;
  string_map<subscription_stats> stats_;
  std::map<std::string, subscription_state> states_;
  std::deque<attempt_record> log_;
  std::int64_t last_seq_ = 0;
  std::size_t pending_ = 0, delivered_ = 0, dead_ = 0;
  time_point last_now_{};
};

}  // namespace

std::shared_ptr<delivery_store> make_memory_store(const store_options& options) {
  return std::make_shared<memory_store>(options);
}

}  // namespace hookline::detail
