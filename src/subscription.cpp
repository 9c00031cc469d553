#include "hookline/subscription.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "hookline/json.hpp"
#include "hookline/payload.hpp"
#include "hookline/signing.hpp"
#include "registry_util.hpp"

namespace hookline {

using nlohmann::json;

namespace {

std::string trimmed(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

/// sensenet stores filter, headers and payload as text fields holding JSON; accept both forms.
/// Returns null when the field is absent or blank.
json json_or_string(const json& v, const std::string& field, std::vector<field_error>& errors) {
  if (!v.is_string()) return v;
  const std::string text = trimmed(v.get_ref<const std::string&>());
  if (text.empty()) return nullptr;
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    errors.push_back({field, "is not valid JSON (at byte " + std::to_string(e.byte) + ": " +
                                 json_error_reason(e) + ")"});
    return nullptr;
  }
}

void parse_headers(const json& v, subscription& s, std::vector<field_error>& errors) {
  auto scalar_text = [&](const json& value, const std::string& field, std::string& out) {
    if (value.is_string()) {
      out = value.get<std::string>();
    } else if (value.is_number() || value.is_boolean()) {
      out = value.dump();  // sensenet's Dictionary<string,string> binding converts scalars too
    } else {
      errors.push_back({field, "must be a string, not " + detail::describe_type(value)});
      return false;
    }
    return true;
  };
  if (v.is_object()) {
    for (auto it = v.begin(); it != v.end(); ++it) {
      std::string value;
      if (scalar_text(it.value(), "headers." + it.key(), value))
        s.headers.emplace_back(it.key(), std::move(value));
    }
  } else if (v.is_array()) {
    // [{"name": "X-A", "value": "1"}, ...] keeps order and allows repeated names.
    for (std::size_t i = 0; i < v.size(); ++i) {
      const json& item = v[i];
      const std::string field = "headers[" + std::to_string(i) + "]";
      const json* name = nullptr;
      const json* value = nullptr;
      if (item.is_object()) {
        auto n = detail::find_key(item, {"name"}, field + ".name", errors);
        auto val = detail::find_key(item, {"value"}, field + ".value", errors);
        name = n.value;
        value = val.value;
      } else if (item.is_array() && item.size() == 2) {
        name = &item[0];
        value = &item[1];
      }
      if (!name || !value) {
        errors.push_back({field, "must be {\"name\": ..., \"value\": ...} or [name, value]"});
        continue;
      }
      std::string n, val;
      if (!name->is_string()) {
        errors.push_back(
            {field + ".name", "must be a string, not " + detail::describe_type(*name)});
        continue;
      }
      n = name->get<std::string>();
      if (scalar_text(*value, field + ".value", val)) s.headers.emplace_back(n, std::move(val));
    }
  } else {
    errors.push_back(
        {"headers", "must be an object of name/value strings, not " + detail::describe_type(v)});
  }
}

void parse_secrets(const json& v, const std::string& field, subscription& s,
                   std::vector<field_error>& errors) {
  if (v.is_string()) {
    if (!v.get_ref<const std::string&>().empty()) s.secrets.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (v[i].is_string())
        s.secrets.push_back(v[i].get<std::string>());
      else
        errors.push_back({field + "[" + std::to_string(i) + "]",
                          "must be a string, not " + detail::describe_type(v[i])});
    }
  } else {
    errors.push_back(
        {field, "must be a string or an array of strings, not " + detail::describe_type(v)});
  }
}

}  // namespace

subscription subscription_from_json(const json& j) {
  if (!j.is_object())
    throw error("a subscription must be a JSON object, not " + detail::describe_type(j));
  subscription s;
  auto& errors = s.parse_errors;
  auto get = [&](std::initializer_list<std::string_view> names, const std::string& field) {
    auto found = detail::find_key(j, names, field, errors);
    return (found && !found.value->is_null()) ? found.value : nullptr;
  };
  auto read_string = [&](std::initializer_list<std::string_view> names, const std::string& field,
                         std::string& out) {
    const json* v = get(names, field);
    if (!v) return false;
    if (v->is_string()) {
      out = v->get<std::string>();
      return true;
    }
    errors.push_back({field, "must be a string, not " + detail::describe_type(*v)});
    return false;
  };

  // sensenet's content Id is a number; hookline ids are strings.
  const json* id = get({"id"}, "id");
  if (id) {
    if (id->is_string())
      s.id = id->get<std::string>();
    else if (id->is_number_integer() || id->is_number_unsigned())
      s.id = id->dump();
    else
      errors.push_back({"id", "must be a string, not " + detail::describe_type(*id)});
  }
  read_string({"name"}, "name", s.name);
  // A sensenet export identifies a subscription by its content name when it has no Id.
  if (!id) s.id = s.name;
  read_string({"url", "WebHookUrl"}, "url", s.url);

  if (const json* m = get({"httpMethod", "WebHookHttpMethod", "method"}, "httpMethod")) {
    // A sensenet choice field exports as an array holding one value.
    const json* value = (m->is_array() && m->size() == 1) ? &(*m)[0] : m;
    if (value->is_string())
      s.http_method = detail::ascii_upper(value->get<std::string>());  // sensenet upper-cases it
    else
      errors.push_back({"httpMethod", "must be a string, not " + detail::describe_type(*m)});
  }

  if (const json* en = get({"enabled", "Enabled"}, "enabled")) {
    if (en->is_boolean()) {
      s.enabled = en->get<bool>();
    } else if (en->is_string() && detail::iequals(en->get_ref<const std::string&>(), "true")) {
      s.enabled = true;
    } else if (en->is_string() && detail::iequals(en->get_ref<const std::string&>(), "false")) {
      s.enabled = false;
    } else {
      errors.push_back(
          {"enabled", en->is_string()
                          ? "must be true or false (or the string \"true\" or "
                            "\"false\"), not \"" +
                                en->get_ref<const std::string&>() + "\""
                          : "must be true or false, not " + detail::describe_type(*en)});
    }
  }

  if (const json* h = get({"headers", "WebHookHeaders"}, "headers")) {
    json v = json_or_string(*h, "headers", errors);
    if (!v.is_null()) parse_headers(v, s, errors);
  }

  {
    auto one = detail::find_key(j, {"secret"}, "secret", errors);
    auto many = detail::find_key(j, {"secrets"}, "secrets", errors);
    if (one && !one.value->is_null()) parse_secrets(*one.value, "secret", s, errors);
    if (many && !many.value->is_null()) parse_secrets(*many.value, "secrets", s, errors);
  }

  if (const json* f = get({"filter", "WebHookFilter"}, "filter")) {
    json v = json_or_string(*f, "filter", errors);
    if (!v.is_null()) detail::parse_filter(v, s.filter, "filter", errors);
  }

  if (const json* p = get({"payload", "WebHookPayload"}, "payload")) {
    if (p->is_object())
      s.payload = p->dump();
    else if (p->is_string())
      // Kept as text: it may hold bare templates (`{"user": @@currentuser@@}`) that are not JSON.
      s.payload = trimmed(p->get_ref<const std::string&>());
    else
      errors.push_back({"payload", "must be a JSON object or a string holding one, not " +
                                       detail::describe_type(*p)});
  }

  if (const json* o = get({"ordered"}, "ordered")) {
    if (o->is_boolean())
      s.ordered = o->get<bool>();
    else
      errors.push_back({"ordered", "must be true or false, not " + detail::describe_type(*o)});
  }
  if (const json* r = get({"rateLimit"}, "rateLimit")) {
    if (r->is_number())
      s.rate_limit = r->get<double>();
    else
      errors.push_back({"rateLimit", "must be a number, not " + detail::describe_type(*r)});
  }
  read_string({"clientCert"}, "clientCert", s.client_cert);
  read_string({"clientKey"}, "clientKey", s.client_key);
  return s;
}

json subscription_to_json(const subscription& s) {
  json j = json::object();
  j["id"] = s.id;
  j["name"] = s.name;
  j["url"] = s.url;
  j["httpMethod"] = s.http_method;
  j["enabled"] = s.enabled;
  // A JSON object sorts its keys and cannot repeat a name; fall back to the ordered list form
  // whenever the object would not give back the same headers.
  bool as_object = true;
  for (std::size_t i = 1; i < s.headers.size(); ++i)
    if (!(s.headers[i - 1].first < s.headers[i].first)) as_object = false;
  if (as_object) {
    json h = json::object();
    for (const auto& [name, value] : s.headers) h[name] = value;
    j["headers"] = std::move(h);
  } else {
    json h = json::array();
    for (const auto& [name, value] : s.headers) h.push_back({{"name", name}, {"value", value}});
    j["headers"] = std::move(h);
  }
  j["secrets"] = s.secrets;
  j["filter"] = s.filter;
  if (!s.payload.empty()) {
    // Written as an object when that reads back byte for byte, else as the text it is (e.g. with
    // bare templates).
    json parsed = json::parse(s.payload, nullptr, false);
    if (!parsed.is_discarded() && parsed.is_object() && parsed.dump() == s.payload)
      j["payload"] = std::move(parsed);
    else
      j["payload"] = s.payload;
  }
  if (s.ordered) j["ordered"] = true;
  if (s.rate_limit != 0) j["rateLimit"] = s.rate_limit;
  if (!s.client_cert.empty()) j["clientCert"] = s.client_cert;
  if (!s.client_key.empty()) j["clientKey"] = s.client_key;
  return j;
}

namespace {

bool is_tchar(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  static constexpr std::string_view extra = "!#$%&'*+-.^_`|~";
  return extra.find(static_cast<char>(c)) != std::string_view::npos;
}

bool is_token(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(),
                                   [](char c) { return is_tchar(static_cast<unsigned char>(c)); });
}

bool is_control(unsigned char c) {
  return c < 0x20 || c == 0x7f;
}

/// Empty when `url` is an absolute http(s) URL with a host, else the reason.
std::string check_url(std::string_view url) {
  if (url.empty()) return "is required";
  for (std::size_t i = 0; i < url.size(); ++i) {
    const auto c = static_cast<unsigned char>(url[i]);
    if (is_control(c) || c == ' ')
      return "must not contain spaces or control characters (found at position " +
             std::to_string(i) + ")";
  }
  const auto sep = url.find("://");
  if (sep == std::string_view::npos) return "must be an absolute http:// or https:// URL";
  const std::string scheme = detail::ascii_lower(url.substr(0, sep));
  if (scheme != "http" && scheme != "https")
    return "scheme must be http or https, not '" + std::string(url.substr(0, sep)) + "'";
  std::string_view rest = url.substr(sep + 3);
  const auto end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, end);
  if (const auto at = authority.find('@'); at != std::string_view::npos) {
    // libcurl ends the user info at the first '@': a second one would move the host.
    if (authority.find('@', at + 1) != std::string_view::npos)
      return "user info must not hold a raw '@' (write it as %40)";
    authority = authority.substr(at + 1);
  }
  if (authority.empty()) return "must have a host";

  std::string_view host, port;
  bool has_port = false;
  if (authority.front() == '[') {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return "IPv6 host is missing its closing ']'";
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return "unexpected text after the IPv6 host";
      has_port = true;
      port = after.substr(1);
    }
    unsigned char buf[16];
    if (inet_pton(AF_INET6, std::string(host).c_str(), buf) != 1)
      return "'" + std::string(host) + "' is not a valid IPv6 address";
  } else {
    const auto colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      has_port = true;
      port = authority.substr(colon + 1);
    }
    if (host.empty()) return "must have a host";
    for (char ch : host) {
      const auto c = static_cast<unsigned char>(ch);
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '.' || c == '_' || c == '~' || c == '%' || c >= 0x80;
      if (!ok) return "host contains the invalid character '" + std::string(1, ch) + "'";
    }
    // "a..b" or ".a": an empty label; a single trailing dot (a fully qualified name) is fine.
    std::string_view labels = host;
    if (labels.size() > 1 && labels.back() == '.') labels.remove_suffix(1);
    if (labels.front() == '.' || labels.back() == '.' ||
        labels.find("..") != std::string_view::npos)
      return "host '" + std::string(host) + "' has an empty label";
  }
  if (has_port) {
    if (port.empty()) return "port is empty";
    if (port.size() > 5 ||
        !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return "port must be a number from 1 to 65535, not '" + std::string(port) + "'";
    const int p = std::stoi(std::string(port));
    if (p < 1 || p > 65535)
      return "port must be a number from 1 to 65535, not '" + std::string(port) + "'";
  }
  return {};
}

std::string check_header_text(std::string_view s, bool is_value) {
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\r' || c == '\n' || c == '\0') return "must not contain CR, LF or NUL";
  }
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (is_control(c) && !(is_value && c == '\t')) return "must not contain control characters";
  }
  return {};
}

bool is_reserved_header(std::string_view name) {
  std::string n = detail::ascii_lower(name);
  std::replace(n.begin(), n.end(), '_', '-');  // CGI-style receivers read both alike
  // The Standard Webhooks headers hookline writes; other webhook-* names are the host's.
  return n == "host" || n == "content-length" || n == "transfer-encoding" || n == "connection" ||
         n == "webhook-id" || n == "webhook-timestamp" || n == "webhook-signature";
}

std::string check_filter_path(std::string_view path) {
  if (path.empty()) return {};  // means /Root
  for (char ch : path)
    if (is_control(static_cast<unsigned char>(ch))) return "must not contain control characters";
  if (path.front() != '/') return "must be an absolute path starting with /Root";
  std::string_view p = path;
  while (p.size() > 1 && p.back() == '/') p.remove_suffix(1);  // "/Root/Content/" is fine
  if (p.substr(1).find("//") != std::string_view::npos || p.starts_with("//"))
    return "has an empty path segment";
  const auto first_end = p.find('/', 1);
  const std::string_view first =
      p.substr(1, first_end == std::string_view::npos ? std::string_view::npos : first_end - 1);
  if (!detail::iequals(first, "Root"))
    return "must be /Root or a path under it, not '" + std::string(path) + "'";
  return {};
}

}  // namespace

std::vector<field_error> validate(const subscription& s, const event_catalog& catalog) {
  std::vector<field_error> errors = s.parse_errors;
  // A field that failed to parse is reported once, by its parse error.
  std::set<std::string> parsed_bad;
  for (const auto& e : s.parse_errors) parsed_bad.insert(e.field);
  auto add = [&](std::string field, std::string reason) {
    if (!reason.empty() && !parsed_bad.count(field))
      errors.push_back({std::move(field), std::move(reason)});
  };

  if (s.id.empty())
    add("id", "is required");
  else if (std::any_of(s.id.begin(), s.id.end(),
                       [](char c) { return is_control(static_cast<unsigned char>(c)); }))
    add("id", "must not contain control characters");

  add("url", check_url(s.url));

  if (s.http_method.empty())
    add("httpMethod", "is required");
  else if (!is_token(s.http_method))
    add("httpMethod", "'" + s.http_method + "' is not a valid HTTP method token (RFC 7230)");

  for (std::size_t i = 0; i < s.headers.size(); ++i) {
    const auto& [name, value] = s.headers[i];
    const std::string field = name.empty() || !check_header_text(name, false).empty()
                                  ? "headers[" + std::to_string(i) + "]"
                                  : "headers." + name;
    if (name.empty()) {
      add(field, "header name is empty");
    } else if (auto r = check_header_text(name, false); !r.empty()) {
      add(field, "header name " + r);
    } else if (!is_token(name)) {
      add(field, "header name '" + name + "' is not a valid HTTP token");
    } else if (is_reserved_header(name)) {
      add(field, "'" + name + "' is reserved: hookline sets it itself");
    }
    if (auto r = check_header_text(value, true); !r.empty()) add(field, "header value " + r);
  }

  for (std::size_t i = 0; i < s.secrets.size(); ++i)
    add("secrets[" + std::to_string(i) + "]", check_secret(s.secrets[i]));

  add("filter.path", check_filter_path(s.filter.path));
  for (std::size_t i = 0; i < s.filter.content_types.size(); ++i) {
    const auto& ct = s.filter.content_types[i];
    const std::string field = "filter.contentTypes[" + std::to_string(i) + "]";
    if (ct.name.empty())
      add(field + ".name", "must not be empty");
    else if (std::any_of(ct.name.begin(), ct.name.end(),
                         [](char c) { return is_control(static_cast<unsigned char>(c)); }))
      add(field + ".name", "must not contain control characters");
    for (std::size_t k = 0; k < ct.events.size(); ++k) {
      const std::string ev_field = field + ".events[" + std::to_string(k) + "]";
      if (ct.events[k].empty())
        add(ev_field, "event name must not be empty");
      else if (!catalog.canonical(ct.events[k]))
        add(ev_field, "unknown event '" + ct.events[k] + "'");
    }
  }

  if (!s.payload.empty()) add("payload", check_payload(s.payload));

  if (!std::isfinite(s.rate_limit))
    add("rateLimit", "must be a finite number");
  else if (s.rate_limit < 0)
    add("rateLimit", "must not be negative");

  if (!s.client_cert.empty() && s.client_key.empty())
    add("clientKey", "is required when clientCert is set");
  if (s.client_cert.empty() && !s.client_key.empty())
    add("clientCert", "is required when clientKey is set");
  return errors;
}

}  // namespace hookline
