#pragma once
// Thread safety: reentrant free functions.
// Private to the library: strict standard base64 (RFC 4648 section 4, with padding).

#include <optional>
#include <string>
#include <string_view>

namespace hookline::detail {

std::string base64_encode(std::string_view bytes);
/// Appends the encoding of `bytes` to `out`.
void base64_append(std::string& out, std::string_view bytes);

/// Decodes standard base64 with padding. Strict: the length must be a multiple of 4, only the
/// standard alphabet, '=' only as trailing padding, and unused trailing bits must be zero, so
/// each byte string has exactly one accepted encoding. nullopt on any violation.
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace hookline::detail
