// Links the installed package and exercises match(), rendering and signing.
#include <hookline/hookline.hpp>

#include <iostream>

int main() {
  hookline::registry registry;
  registry.add(hookline::subscription_from_json(
      {{"id", "s1"},
       {"url", "https://example.com/hook"},
       {"filter", {{"path", "/Root/Content"},
                   {"contentTypes", {{{"name", "File"}, {"events", {"Create"}}}}}}}}));
  hookline::event e;
  e.event_name = "Create";
  e.path = "/Root/Content/a.txt";
  e.content_type = "File";
  auto matches = registry.match(e);
  auto body = hookline::render_body(e, *matches.at(0), {});
  auto sig = hookline::sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_1", 1614265330, body);
  std::cout << "hookline " << hookline::version() << ": " << matches.size() << " match, "
            << sig.substr(0, 3) << "\n";
  return matches.size() == 1 && sig.rfind("v1,", 0) == 0 ? 0 : 1;
}
