// hookline: the command line tool over the public API (docs/cli.md).
#include <CLI/CLI.hpp>

#include <iostream>
#include <string>

#include "cli.hpp"

namespace {

using namespace hookline::cli;

// The flags of dispatch, worker and fire that tune delivery.
struct delivery_options_ref {
  CLI::Option* timeout = nullptr;
  CLI::Option* schedule = nullptr;
  CLI::Option* concurrency = nullptr;
  CLI::Option* endpoint_concurrency = nullptr;
  CLI::Option* drain_timeout = nullptr;
  double timeout_value = 0;
  std::string schedule_value;
  std::size_t concurrency_value = 0;
  std::size_t endpoint_concurrency_value = 0;

  /// `drain_help`: the --drain-timeout option's help, or null for a command without it.
  void add(CLI::App* app, delivery_flags& f, const char* drain_help) {
    app->add_flag("--allow-private", f.allow_private,
                  "Allow loopback and private addresses (development, tests); the SSRF guard "
                  "refuses them by default");
    timeout = app->add_option("--timeout", timeout_value,
                              "Request timeout in seconds (fractions allowed; default 15)");
    schedule = app->add_option(
        "--retry-schedule", schedule_value,
        "Delays in seconds between attempts, e.g. 5,300,1800 (fractions allowed; 'none' = one "
        "attempt). Default: the Standard Webhooks schedule");
    concurrency = app->add_option("--concurrency", concurrency_value,
                                  "Requests in flight in total (default 512)");
    endpoint_concurrency = app->add_option("--endpoint-concurrency", endpoint_concurrency_value,
                                           "Requests in flight per endpoint URL (default 16)");
    if (drain_help != nullptr)
      drain_timeout = app->add_option("--drain-timeout", f.drain_timeout_seconds, drain_help);
  }
  void collect(delivery_flags& f, bool* drain_given = nullptr) const {
    if (timeout->count()) f.timeout_seconds = timeout_value;
    if (schedule->count()) f.retry_schedule = schedule_value;
    if (concurrency->count()) f.concurrency = concurrency_value;
    if (endpoint_concurrency->count()) f.endpoint_concurrency = endpoint_concurrency_value;
    if (drain_given && drain_timeout) *drain_given = drain_timeout->count() > 0;
  }
};

const char* const summary_line_help =
    "The last line on stdout is {\"published\":N,\"messages\":M,\"delivered\":D,\"dead\":X,"
    "\"pending\":P,\"errors\":E}.\n";
const std::string exit_codes_help =
    std::string(
        "\nExit codes: 0 ok; 1 a bad input line (or another failure, see docs/cli.md); 2 "
        "bad arguments or an unreadable file; 3 the drain timeout left messages "
        "pending.\n") +
    summary_line_help;
// publish waits for no delivery, so it has no drain timeout.
const std::string publish_exit_codes_help =
    std::string(
        "\nExit codes: 0 ok; 1 a bad input line (the others are still published) or "
        "another failure, see docs/cli.md; 2 bad arguments or an unreadable file.\n") +
    summary_line_help;

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hookline: signed, retried webhook delivery from the command line", "hookline"};
  app.require_subcommand(1);
  app.fallthrough();
  int verbosity = 0;
  app.add_flag("-v,--verbose", verbosity,
               "Log more on stderr (-v info, -vv debug); the default shows warnings only");
  app.set_version_flag("--version", std::string(hookline::version()));
  app.footer(
      "Examples:\n"
      "  hookline dispatch --subscriptions subs.json events.jsonl\n"
      "  hookline subscriptions validate subs.json\n"
      "  hookline deliveries --store sqlite:outbox.db --status dead\n"
      "Run 'hookline SUBCOMMAND --help' for the flags of each subcommand; docs/cli.md has more.");

  // dispatch
  run_flags dispatch_f;
  delivery_options_ref dispatch_d;
  auto* dispatch = app.add_subcommand(
      "dispatch", "Publish events (JSON lines) and deliver them in this process, then wait");
  dispatch
      ->add_option(
          "--subscriptions", dispatch_f.subscriptions,
          "Subscriptions JSON file, or postgres:CONNINFO (the database's, followed while running)")
      ->required();
  dispatch->add_option("--store", dispatch_f.store,
                       "Store URI: memory: (default), sqlite:PATH or postgres:CONNINFO");
  dispatch_d.add(dispatch, dispatch_f.delivery,
                 "Seconds to wait at the end for every message to be delivered or dead (default "
                 "60); requests under way then get up to 1 s more");
  dispatch->add_option("EVENTS_FILE", dispatch_f.events,
                       "Events, one JSON object per line; - or nothing reads stdin");
  dispatch->footer(
      std::string("Examples:\n"
                  "  hookline dispatch --subscriptions subs.json events.jsonl\n"
                  "  tail -f events.jsonl | hookline dispatch --subscriptions subs.json -\n"
                  "  hookline dispatch --subscriptions subs.json --store sqlite:outbox.db \\\n"
                  "      --retry-schedule 1,5,30 --timeout 5 --drain-timeout 120 events.jsonl\n"
                  "An event line: {\"eventName\":\"Create\",\"path\":\"/Root/Content/a.txt\","
                  "\"contentType\":\"File\",\"nodeId\":42}") +
      exit_codes_help);

  // publish
  run_flags publish_f;
  auto* publish =
      app.add_subcommand("publish", "Only enqueue events into a durable store (a worker delivers)");
  publish
      ->add_option(
          "--subscriptions", publish_f.subscriptions,
          "Subscriptions JSON file, or postgres:CONNINFO (the database's, followed while running)")
      ->required();
  publish->add_option("--store", publish_f.store, "Store URI: sqlite:PATH or postgres:CONNINFO")
      ->required();
  publish->add_option("EVENTS_FILE", publish_f.events,
                      "Events, one JSON object per line; - or nothing reads stdin");
  publish->footer(std::string("Examples:\n"
                              "  hookline publish --subscriptions subs.json --store "
                              "sqlite:outbox.db events.jsonl\n"
                              "  hookline worker --subscriptions subs.json --store "
                              "sqlite:outbox.db --drain\n"
                              "Exits once every message is committed; pending in the summary is "
                              "what the store holds.") +
                  publish_exit_codes_help);

  // worker
  run_flags worker_f;
  delivery_options_ref worker_d;
  auto* worker = app.add_subcommand(
      "worker", "Deliver what a store holds; until SIGINT/SIGTERM, or with --drain until empty");
  worker
      ->add_option(
          "--subscriptions", worker_f.subscriptions,
          "Subscriptions JSON file, or postgres:CONNINFO (the database's, followed while running)")
      ->required();
  worker->add_option("--store", worker_f.store, "Store URI: sqlite:PATH or postgres:CONNINFO")
      ->required();
  worker->add_flag("--drain", worker_f.drain, "Exit once no message is pending");
  worker_d.add(worker, worker_f.delivery,
               "With --drain: seconds to wait for every message to be delivered or dead (default: "
               "as long as it takes); requests under way then get up to 5 s more");
  worker->footer(std::string("Examples:\n"
                             "  hookline worker --subscriptions subs.json --store "
                             "sqlite:outbox.db\n"
                             "  hookline worker --subscriptions subs.json --store "
                             "'postgres:host=db dbname=hooks' --concurrency 2000\n"
                             "  hookline worker --subscriptions subs.json --store sqlite:outbox.db "
                             "--drain --drain-timeout 300\n"
                             "--drain-timeout only applies with --drain (without it --drain waits "
                             "as long as it takes).") +
                 exit_codes_help);

  // deliveries
  deliveries_flags deliveries_f;
  auto* deliveries = app.add_subcommand("deliveries", "List messages in a store");
  deliveries->add_option("--store", deliveries_f.store, "Store URI")->required();
  deliveries->add_option("--status", deliveries_f.status, "Only this status")
      ->check(CLI::IsMember({"pending", "delivered", "dead"}));
  deliveries->add_option("--subscription", deliveries_f.subscription, "Only this subscription id");
  deliveries->add_flag("--json", deliveries_f.json, "One JSON object per line instead of a table");
  deliveries->add_option("--limit", deliveries_f.limit, "At most this many (default 1000)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{100'000'000}));
  deliveries->footer(
      "Examples:\n"
      "  hookline deliveries --store sqlite:outbox.db\n"
      "  hookline deliveries --store sqlite:outbox.db --status dead --subscription docs --json\n"
      "Exit codes: 0 ok; 2 bad arguments or no such store.");

  // attempts
  attempts_flags attempts_f;
  auto* attempts = app.add_subcommand(
      "attempts", "List the attempt log of a store: each HTTP attempt and how it ended");
  attempts->add_option("--store", attempts_f.store, "Store URI")->required();
  attempts->add_option("--message", attempts_f.message, "Only this message (webhook-id)");
  attempts->add_option("--subscription", attempts_f.subscription, "Only this subscription id");
  attempts->add_option("--since", attempts_f.since, "Only attempts started since then (ISO 8601)");
  attempts->add_flag("--json", attempts_f.json, "One JSON object per line instead of a table");
  attempts
      ->add_option("--limit", attempts_f.limit,
                   "The most recent this many (default 1000), listed oldest first")
      ->check(CLI::Range(std::size_t{1}, std::size_t{100'000'000}));
  attempts->footer(
      "Examples:\n"
      "  hookline attempts --store sqlite:outbox.db --message msg_2Qx...\n"
      "  hookline attempts --store sqlite:outbox.db --subscription docs --since "
      "2026-11-27T08:00:00Z --json\n"
      "Exit codes: 0 ok; 2 bad arguments or no such store.");

  // stats
  stats_flags stats_f;
  auto* stats = app.add_subcommand(
      "stats", "Per-subscription statistics: calls, responses by class, failures, bytes");
  stats->add_option("--store", stats_f.store, "Store URI")->required();
  stats->add_option("--subscription", stats_f.subscriptions, "Subscription id (repeatable)")
      ->required();
  stats->add_flag("--json", stats_f.json, "One JSON object per line instead of a table");
  stats->footer(
      "Examples:\n"
      "  hookline stats --store sqlite:outbox.db --subscription docs --subscription crm\n"
      "Counts every attempt since the store was created (pruning keeps them). A subscription\n"
      "without attempts shows zeros.\n"
      "Exit codes: 0 ok; 2 bad arguments or no such store.");

  // redeliver
  std::string redeliver_store, redeliver_id;
  auto* redeliver =
      app.add_subcommand("redeliver", "Make one delivered or dead message pending again");
  redeliver->add_option("--store", redeliver_store, "Store URI")->required();
  redeliver->add_option("MESSAGE_ID", redeliver_id, "The message (webhook-id)")->required();
  redeliver->footer(
      "Examples:\n"
      "  hookline redeliver --store sqlite:outbox.db msg_2Qx...\n"
      "A worker on the same store sends it (again, with the same webhook-id).\n"
      "Exit codes: 0 ok; 1 no such message; 2 bad arguments or no such store.");

  // enable
  std::string enable_store, enable_sub;
  auto* enable = app.add_subcommand(
      "enable", "Clear a subscription's saved disabled state (after a 410 or the failure timer)");
  enable->add_option("--store", enable_store, "Store URI")->required();
  enable->add_option("--subscription", enable_sub, "Subscription id")->required();
  enable->footer(
      "Examples:\n"
      "  hookline enable --store sqlite:outbox.db --subscription docs\n"
      "A subscription answered with 410 Gone (or failing for auto_disable_after) stays disabled "
      "in\n"
      "every later run on the store until this. Dead messages stay dead: recover them after.\n"
      "Exit codes: 0 ok (also when it was not disabled); 2 bad arguments or no such store.");

  // recover
  std::string recover_store, recover_sub, recover_since;
  auto* recover = app.add_subcommand(
      "recover", "Make every dead message of a subscription pending again (since a time)");
  recover->add_option("--store", recover_store, "Store URI")->required();
  recover->add_option("--subscription", recover_sub, "Subscription id")->required();
  recover->add_option("--since", recover_since,
                      "Only messages created since then (ISO 8601); default: all");
  recover->footer(
      "Examples:\n"
      "  hookline recover --store sqlite:outbox.db --subscription docs\n"
      "  hookline recover --store sqlite:outbox.db --subscription docs --since "
      "2026-11-27T08:00:00Z\n"
      "Exit codes: 0 ok (also when nothing was dead); 2 bad arguments or no such store.");

  // subscriptions validate
  auto* subs = app.add_subcommand(
      "subscriptions", "Check subscription files; keep subscriptions in a PostgreSQL database");
  subs->require_subcommand(1);
  std::string validate_file;
  auto* validate_cmd = subs->add_subcommand(
      "validate", "Check every subscription of a file and name each invalid field");
  validate_cmd->add_option("FILE", validate_file, "Subscriptions JSON file")->required();
  validate_cmd->footer(
      "Examples:\n"
      "  hookline subscriptions validate subs.json\n"
      "Accepts a JSON array, {\"subscriptions\": [...]} or a sensenet export "
      "({\"d\": {\"results\": [...]}}),\nwith camelCase or sensenet field names "
      "(WebHookUrl, WebHookFilter as a JSON string, ...).\n"
      "Exit codes: 0 all valid; 1 some invalid (each listed); 2 unreadable or not JSON "
      "(file:line:column named).");

  // subscriptions import / list / remove (a PostgreSQL database shared by every worker)
  std::string import_store, import_file;
  auto* import_cmd = subs->add_subcommand(
      "import", "Save every valid subscription of a file into a PostgreSQL database");
  import_cmd->add_option("--store", import_store, "postgres:CONNINFO")->required();
  import_cmd->add_option("FILE", import_file, "Subscriptions JSON file")->required();
  import_cmd->footer(
      "Examples:\n"
      "  hookline subscriptions import --store postgres:dbname=hooks subs.json\n"
      "  hookline worker --subscriptions postgres:dbname=hooks --store postgres:dbname=hooks\n"
      "Same-id subscriptions are replaced; workers reading --subscriptions postgres:... pick\n"
      "the change up at once. Invalid entries are listed and not imported.\n"
      "Exit codes: 0 all imported; 1 some invalid, or the database failed; 2 bad arguments or an\n"
      "unreadable file.");
  std::string list_store;
  auto* list_cmd =
      subs->add_subcommand("list", "Print the subscriptions of a PostgreSQL database (JSON lines)");
  list_cmd->add_option("--store", list_store, "postgres:CONNINFO")->required();
  list_cmd->footer(
      "Examples:\n"
      "  hookline subscriptions list --store postgres:dbname=hooks\n"
      "Exit codes: 0 ok; 1 the database failed; 2 bad arguments.");
  std::string remove_store, remove_id;
  auto* remove_cmd =
      subs->add_subcommand("remove", "Delete one subscription from a PostgreSQL database");
  remove_cmd->add_option("--store", remove_store, "postgres:CONNINFO")->required();
  remove_cmd->add_option("ID", remove_id, "Subscription id")->required();
  remove_cmd->footer(
      "Examples:\n"
      "  hookline subscriptions remove --store postgres:dbname=hooks docs\n"
      "Exit codes: 0 removed; 1 no such subscription, or the database failed; 2 bad arguments.");

  // sign / verify
  sign_flags sign_f;
  auto* sign_cmd = app.add_subcommand(
      "sign", "Print the webhook-signature value for a body read from stdin (exact bytes)");
  sign_cmd->add_option("--secret", sign_f.secrets, "whsec_... (repeat for rotation)")->required();
  sign_cmd->add_option("--id", sign_f.id, "webhook-id")->required();
  sign_cmd->add_option("--timestamp", sign_f.timestamp, "webhook-timestamp (Unix seconds)")
      ->required();
  sign_cmd->footer(
      "Examples:\n"
      "  printf '%s' '{\"test\": 2432232314}' | hookline sign --secret "
      "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw \\\n"
      "      --id msg_p5jXN8AQM9LWM0D4loKWxJek --timestamp 1614265330\n"
      "  -> v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\n"
      "Exit codes: 0 ok; 2 bad arguments (malformed secret or timestamp).");

  sign_flags verify_f;
  double verify_tolerance = 300;
  auto* verify_cmd = app.add_subcommand(
      "verify", "Check a webhook-signature for a body read from stdin (exact bytes)");
  verify_cmd->add_option("--secret", verify_f.secrets, "whsec_... (repeat to accept several)")
      ->required();
  verify_cmd->add_option("--id", verify_f.id, "webhook-id")->required();
  verify_cmd->add_option("--timestamp", verify_f.timestamp, "webhook-timestamp")->required();
  verify_cmd
      ->add_option("--signature", verify_f.signature,
                   "webhook-signature (one or more space-separated v1,...)")
      ->required();
  auto* tolerance_opt = verify_cmd->add_option(
      "--tolerance", verify_tolerance,
      "Accept timestamps this many seconds from now (default 300; 0 = do not check the time)");
  verify_cmd->footer(
      "Examples:\n"
      "  printf '%s' \"$body\" | hookline verify --secret \"$SECRET\" --id \"$ID\" "
      "--timestamp \"$TS\" --signature \"$SIG\"\n"
      "  printf '%s' '{\"test\": 2432232314}' | hookline verify --secret "
      "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw \\\n"
      "      --id msg_p5jXN8AQM9LWM0D4loKWxJek --timestamp 1614265330 --tolerance 0 \\\n"
      "      --signature v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\n"
      "Exit codes: 0 valid; 1 not valid, a malformed --secret included (the reason on stderr); 2 "
      "bad arguments.");

  // fire
  fire_flags fire_f;
  delivery_options_ref fire_d;
  auto* fire = app.add_subcommand(
      "fire", "Send one event to one subscription now, bypassing its filter, and show the outcome");
  fire->add_option(
          "--subscriptions", fire_f.subscriptions,
          "Subscriptions JSON file, or postgres:CONNINFO (the database's, followed while running)")
      ->required();
  fire->add_option("--subscription", fire_f.subscription_id, "The subscription id")->required();
  fire->add_option("--store", fire_f.store, "Store URI (default memory:)");
  fire_d.add(fire, fire_f.delivery, nullptr);
  fire->add_option("EVENT_JSON", fire_f.event_json,
                   "The event as JSON, or - to read it from stdin; default: a Create event for "
                   "the subscription's filter path");
  fire->footer(
      "Examples:\n"
      "  hookline fire --subscriptions subs.json --subscription docs\n"
      "  hookline fire --subscriptions subs.json --subscription docs \\\n"
      "      '{\"eventName\":\"Modify\",\"path\":\"/Root/Content/Docs/a.txt\","
      "\"contentType\":\"File\"}'\n"
      "One attempt unless --retry-schedule is given. Prints each attempt, then a JSON line\n"
      "{\"attempts\":N,\"error\":...,\"httpStatus\":S,\"messageId\":...,\"status\":"
      "\"delivered\"|\"dead\",\"subscriptionId\":...}.\n"
      "Exit codes: 0 delivered; 1 dead or subscription disabled; 2 bad arguments, unknown or "
      "invalid subscription; 3 no outcome in time.");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? exit_ok : exit_usage;
  }

  try {
    if (dispatch->parsed()) {
      dispatch_d.collect(dispatch_f.delivery, &dispatch_f.drain_timeout_given);
      dispatch_f.verbosity = verbosity;
      return run_dispatch(dispatch_f);
    }
    if (publish->parsed()) {
      publish_f.verbosity = verbosity;
      return run_publish(publish_f);
    }
    if (worker->parsed()) {
      worker_d.collect(worker_f.delivery, &worker_f.drain_timeout_given);
      worker_f.verbosity = verbosity;
      return run_worker(worker_f);
    }
    if (deliveries->parsed()) return run_deliveries(deliveries_f);
    if (attempts->parsed()) return run_attempts(attempts_f);
    if (stats->parsed()) return run_stats(stats_f);
    if (redeliver->parsed()) return run_redeliver(redeliver_store, redeliver_id);
    if (recover->parsed()) return run_recover(recover_store, recover_sub, recover_since);
    if (enable->parsed()) return run_enable(enable_store, enable_sub);
    if (validate_cmd->parsed()) return run_validate(validate_file);
    if (import_cmd->parsed()) return run_import(import_store, import_file);
    if (list_cmd->parsed()) return run_list(list_store);
    if (remove_cmd->parsed()) return run_remove(remove_store, remove_id);
    if (sign_cmd->parsed()) return run_sign(sign_f);
    if (verify_cmd->parsed()) {
      if (tolerance_opt->count()) verify_f.tolerance_seconds = verify_tolerance;
      return run_verify(verify_f);
    }
    if (fire->parsed()) {
      fire_d.collect(fire_f.delivery);
      fire_f.verbosity = verbosity;
      return run_fire(fire_f);
    }
  } catch (const usage_error& e) {
    console::instance().error_line(std::string("hookline: ") + e.what());
    return exit_usage;
  } catch (const std::exception& e) {
    console::instance().error_line(std::string("hookline: ") + e.what());
    return exit_failed;
  }
  return exit_usage;
}
