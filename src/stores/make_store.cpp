// make_store: picks the store implementation from its URI.
#include <string>

#include "hookline/error.hpp"
#include "hookline/store.hpp"
#include "stores/factories.hpp"

namespace hookline {

// The URI as it may appear in an error: any password (conninfo `password=...` or URI userinfo
// `user:secret@`) is masked.
std::string redact_store_uri(std::string_view uri) {
  std::string out(uri);
  // key=value conninfo form.
  for (std::size_t pos = 0; (pos = out.find("password", pos)) != std::string::npos;) {
    std::size_t i = pos + 8;
    while (i < out.size() && out[i] == ' ') ++i;
    if (i < out.size() && out[i] == '=') {
      ++i;
      while (i < out.size() && out[i] == ' ') ++i;
      std::size_t end = i;
      if (end < out.size() && out[end] == '\'') {
        ++end;
        while (end < out.size() && out[end] != '\'') end += out[end] == '\\' ? 2 : 1;
        end = std::min(end + 1, out.size());
      } else {
        while (end < out.size() && out[end] != ' ' && out[end] != '&') ++end;
      }
      out.replace(i, end - i, "***");
      pos = i + 3;
    } else {
      pos = i;
    }
  }
  // URI userinfo form: scheme://user:password@host
  auto scheme_end = out.find("://");
  if (scheme_end != std::string::npos) {
    auto start = scheme_end + 3;
    auto at = out.find('@', start);
    auto slash = out.find('/', start);
    if (at != std::string::npos && (slash == std::string::npos || at < slash)) {
      auto colon = out.find(':', start);
      if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
    }
  }
  return out;
}

std::shared_ptr<delivery_store> make_store(std::string_view uri, const store_options& options) {
  const auto colon = uri.find(':');
  const std::string scheme(uri.substr(0, colon == std::string_view::npos ? uri.size() : colon));
  const std::string rest(colon == std::string_view::npos ? std::string_view{}
                                                         : uri.substr(colon + 1));
  if (scheme == "memory") {
    if (!rest.empty())
      throw error("store URI '" + redact_store_uri(uri) + "': memory: takes no argument");
    return detail::make_memory_store(options);
  }
  if (scheme == "sqlite") {
    if (rest.empty())
      throw error("store URI '" + redact_store_uri(uri) + "': sqlite: needs a file path");
    return detail::make_sqlite_store(rest, options);
  }
  if (scheme == "postgres" || scheme == "postgresql") {
    if (rest.empty())
      throw error("store URI '" + redact_store_uri(uri) + "': postgres: needs a connection string");
    // postgres://... and postgresql://... are libpq URIs as they stand.
    const std::string conninfo = rest.rfind("//", 0) == 0 ? std::string(uri) : rest;
    return detail::make_postgres_store(conninfo, options);
  }
  throw error("store URI '" + redact_store_uri(uri) +
              "': unknown scheme (expected memory:, sqlite:PATH or postgres:CONNINFO)");
}

}  // namespace hookline
