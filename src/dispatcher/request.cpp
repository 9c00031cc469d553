#include "dispatcher/request.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <iterator>
#include <string_view>

#include "registry_util.hpp"
#include "signer.hpp"

namespace hookline::detail {

namespace {

bool sends_body(std::string_view method) {
  return !iequals(method, "GET") && !iequals(method, "HEAD");
}

}  // namespace

std::string loggable_url(std::string_view url) {
  auto scheme = url.find("://");
  std::size_t start = scheme == std::string_view::npos ? 0 : scheme + 3;
  auto cut = url.find_first_of("?#", start);
  std::string out(url.substr(0, cut));
  auto at = out.find('@', start);
  auto slash = out.find('/', start);
  if (at != std::string::npos && (slash == std::string::npos || at < slash))
    out.erase(start, at - start + 1);
  return printable(out);
}

void build_request(http_request& req, const message& m, const subscription& sub,
                   std::int64_t timestamp, const delivery_options& d, signer* keys) {
  // Every field is assigned, never rebuilt: a request handed back by the transport keeps the
  // capacity of its strings, so a steady stream of deliveries allocates nothing here.
  req.url.assign(sub.url);
  req.method.assign(sub.http_method.empty() ? std::string_view("POST") : sub.http_method);
  // As sensenet: "post" goes out as POST (methods are case-sensitive on the wire).
  for (auto& c : req.method)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  const bool with_body = sends_body(req.method);
  if (with_body) {
    req.body.assign(m.body);
  } else {
    req.body.clear();
  }
  const bool own_content_type =
      std::any_of(sub.headers.begin(), sub.headers.end(),
                  [](const auto& h) { return iequals(h.first, "Content-Type"); });
  std::size_t used = 0;
  const auto line = [&](std::string_view name) -> std::string& {
    if (used == req.headers.size()) req.headers.emplace_back();
    auto& h = req.headers[used++];
    h.assign(name);
    h += ": ";
    return h;
  };
  if (!own_content_type) line("Content-Type") += "application/json";
  line("webhook-id") += m.id;
  {
    char digits[24];
    const auto [end, ec] = std::to_chars(std::begin(digits), std::end(digits), timestamp);
    line("webhook-timestamp").append(digits, end);
  }
  if (!sub.secrets.empty()) {
    // The signature covers the bytes actually sent: a GET signs an empty body.
    const std::string_view signed_body = with_body ? std::string_view(m.body) : std::string_view{};
    auto& h = line("webhook-signature");
    if (keys) {
      keys->append_header(h, m.id, timestamp, signed_body);
    } else {
      h += signature_header(sub.secrets, m.id, timestamp, signed_body);
    }
  }
  for (const auto& [name, value] : sub.headers) {
    if (value.find_first_not_of(" \t") != std::string::npos) {
      line(name) += value;
    } else {
      // libcurl reads "Name:" with nothing after it as "remove this header"; "Name;" sends it
      // with an empty value, which is what the subscription asked for.
      auto& h = line(name);
      h.resize(h.size() - 2);
      h += ';';
    }
  }
  req.headers.resize(used);
  req.connect_timeout = d.connect_timeout;
  req.timeout = d.request_timeout;
  req.client_cert.assign(sub.client_cert);
  req.client_key.assign(sub.client_key);
}

outcome classify(const http_response& r, time_point now) {
  outcome o;
  switch (r.kind) {
    case error_kind::none:
      break;
    case error_kind::cancelled:
      o.k = outcome::kind::cancelled;
      o.reason = "cancelled";
      return o;
    case error_kind::timeout:
      o.k = outcome::kind::retry;
      o.unhealthy = true;
      o.reason = "timeout: " + printable(r.error);
      return o;
    case error_kind::network:
      o.k = outcome::kind::retry;
      o.unhealthy = true;
      o.reason = "network error: " + printable(r.error);
      return o;
    case error_kind::tls:
      o.k = outcome::kind::retry;
      o.unhealthy = true;
      o.reason = "TLS error: " + printable(r.error);
      return o;
    case error_kind::refused:
      o.k = outcome::kind::permanent;
      o.reason = r.error.empty() ? "refused by the SSRF guard" : printable(r.error);
      return o;
    case error_kind::invalid:
      o.k = outcome::kind::permanent;
      o.reason = "invalid request: " + printable(r.error);
      return o;
  }
  const int s = r.status;
  const std::string code = "HTTP " + std::to_string(s);
  if (s >= 200 && s < 300) return o;
  if (s >= 300 && s < 400) {
    o.k = outcome::kind::permanent;
    o.reason = code + ": redirect" +
               (r.location ? " to " + loggable_url(*r.location) : std::string()) +
               " not followed (redirects are failures)";
    return o;
  }
  if (s == 408 || s == 425 || s == 429 || (s >= 500 && s < 600)) {
    o.k = outcome::kind::retry;
    o.unhealthy = true;
    o.reason = code;
    if (r.retry_after) {
      o.retry_after = parse_retry_after(*r.retry_after, now);
      if (o.retry_after)
        o.reason += " (Retry-After: " + printable(r.retry_after->substr(0, 64)) + ")";
    }
    return o;
  }
  if (s == 410) {
    o.k = outcome::kind::gone;
    o.reason = code + " Gone: the endpoint asked for no more deliveries";
    return o;
  }
  o.k = outcome::kind::permanent;
  o.reason = s >= 400 && s < 500 ? code : code + ": unexpected status";
  return o;
}

}  // namespace hookline::detail
