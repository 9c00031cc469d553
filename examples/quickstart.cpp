// quickstart: publish a content event and watch hookline deliver it, signed, to a receiver.
// The receiver runs in this process on 127.0.0.1, so the SSRF guard is told to allow loopback.
#include <httplib.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <thread>

#include <hookline/hookline.hpp>

int main() {
  using namespace std::chrono_literals;
  const std::string secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

  // A receiver that verifies the Standard Webhooks signature.
  httplib::Server receiver;
  receiver.Post("/hooks", [&](const httplib::Request& req, httplib::Response& res) {
    auto check = hookline::verify({secret}, req.get_header_value("webhook-id"),
                                  req.get_header_value("webhook-timestamp"), req.body,
                                  req.get_header_value("webhook-signature"));
    std::cout << "receiver: " << (check ? "verified " : "REJECTED ") << req.body << "\n";
    res.status = check ? 204 : 401;
  });
  const int port = receiver.bind_to_any_port("127.0.0.1");
  std::thread server([&] { receiver.listen_after_bind(); });

  hookline::options opts;  // memory: store; see docs/operations.md for sqlite: and postgres:
  opts.delivery.allow_private_networks = true;  // the receiver is on loopback
  hookline::hub hub(opts);

  // The same JSON a sensenet WebHookSubscription holds (camelCase or sensenet's names).
  hub.subscriptions().add(hookline::subscription_from_json({
      {"id", "docs"},
      {"url", "http://127.0.0.1:" + std::to_string(port) + "/hooks"},
      {"secret", secret},
      {"filter", {{"path", "/Root/Content/Docs"},
                  {"contentTypes", {{{"name", "File"}, {"events", {"Create", "Modify"}}}}}}},
      {"payload", R"({"uploadedBy": "@@currentuser@@", "where": "@@content.Path@@"})"}}));

  hookline::event e;
  e.event_name = "Create";
  e.path = "/Root/Content/Docs/report.pdf";
  e.content_type = "File";
  e.name = "report.pdf";
  e.node_id = 42;
  e.current_user = "admin";
  auto result = hub.publish(e);
  std::cout << "published " << result.message_ids.size() << " message(s)\n";

  const bool idle = hub.wait_idle(10s);
  auto c = hub.counters();
  std::cout << "delivered " << c.delivered << ", dead " << c.dead << "\n";
  hub.stop();
  receiver.stop();
  server.join();
  return idle && c.delivered == 1 ? 0 : 1;
}
