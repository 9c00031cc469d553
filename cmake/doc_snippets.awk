# Writes each ```cpp block of a Markdown file to OUT/<stem>_<n>.cpp (see DocSnippets.cmake).
# A block that defines `int main` or starts with `// tu` is written as it is; any other block has
# its #include lines hoisted and the rest wrapped in a function body.
function flush(   f, content) {
  n++
  f = out "/" stem "_" n ".cpp"
  if (body ~ /int main\(/ || body ~ /^\/\/ tu/) {
    content = "// from " FILENAME ":" start "\n" includes body
  } else {
    content = "// from " FILENAME ":" start "\n#include <hookline/hookline.hpp>\n" includes \
              "\nnamespace {\n[[maybe_unused]] void snippet_" stem "_" n "() {\n" body "}\n}  // namespace\n"
  }
  printf "%s", content > (f ".tmp")
  close(f ".tmp")
  print f
}
/^```cpp[ \t]*$/ && !inblock { inblock = 1; includes = ""; body = ""; start = NR; next }
/^```[ \t]*$/ && inblock { inblock = 0; flush(); next }
inblock && /^#include/ { includes = includes $0 "\n"; next }
inblock { body = body $0 "\n" }
