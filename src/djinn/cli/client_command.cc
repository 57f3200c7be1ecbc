// `djinn client`: the client library from the shell, for scripts and health checks.
// Every subcommand prints one JSON object. A session lives on the server, so
// successive `generate --session ID --token T` calls continue the same KV cache.
#include <fmt/format.h>

#include <iostream>

#include "djinn/cli/commands.h"
#include "djinn/cli/model_options.h"
#include "djinn/rpc/client.h"

namespace djinn::cli {
namespace {

struct ClientCommandOptions {
  std::string server = "tcp://127.0.0.1:5556";
  double timeout_s = 120;
  // load-model
  std::string model, dtype = "f32";
  uint64_t seed = 0;
  // open-session
  uint64_t model_id = 0;
  int64_t max_context = 0;
  // session calls
  uint64_t session = 0;
  std::string token;
  std::string prompt_ids;
  int64_t max_new_tokens = 16;
  std::string phase;
  double resume_ms = 0;
};

Status print(const nlohmann::json& out) {
  std::cout << out.dump(2) << '\n';
  return {};
}

Status run_client(const ClientCommandOptions& o, const std::string& verb) {
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::connect(o.server, ClientOptions{"djinn client", o.timeout_s}));
  if (verb == "stats") {
    DJINN_ASSIGN_OR_RETURN(nlohmann::json stats, client->stats());
    return print(stats);
  }
  if (verb == "load-model") {
    DJINN_ASSIGN_OR_RETURN(rpc::LoadModelReply m, client->load_model(o.model, o.dtype, o.seed));
    return print({{"model_id", m.model_id()}, {"name", m.name()}, {"family", m.family()}, {"params", m.params()},
                  {"weight_bytes", m.weight_bytes()}, {"kv_bytes_per_token", m.kv_bytes_per_token()},
                  {"vocab_size", m.vocab_size()}, {"max_positions", m.max_positions()}});
  }
  if (verb == "open-session") {
    DJINN_ASSIGN_OR_RETURN(RemoteSession s, client->open_session(o.model_id, o.max_context));
    return print({{"session_id", s.id()}, {"token", s.token()}, {"capacity", s.capacity()}});
  }
  RemoteSession session = client->attach(o.session, o.token);
  if (verb == "generate") {
    DJINN_ASSIGN_OR_RETURN(std::vector<int32_t> prompt, parse_token_ids(o.prompt_ids));
    DJINN_ASSIGN_OR_RETURN(RemoteGenerateResult g, session.generate(prompt, o.max_new_tokens));
    double decode = 0;
    for (double ms : g.decode_step_ms) decode += ms;
    return print({{"session_id", o.session},
                  {"tokens", g.tokens},
                  {"prefill_ms", g.prefill_ms},
                  {"decode_ms_per_token", g.decode_step_ms.empty() ? 0.0 : decode / static_cast<double>(g.decode_step_ms.size())},
                  {"server_us", g.server_us}});
  }
  if (verb == "signal") {
    const auto phase = o.phase == "io_wait" ? rpc::SignalPhase::IO_WAIT : rpc::SignalPhase::COMPUTE;
    DJINN_RETURN_IF_ERROR(session.signal(phase, o.resume_ms));
    return print({{"session_id", o.session}, {"phase", o.phase}, {"estimated_resume_ms", o.resume_ms}});
  }
  if (verb == "close") {
    DJINN_RETURN_IF_ERROR(session.close());
    return print({{"session_id", o.session}, {"closed", true}});
  }
  return invalid_argument(fmt::format("unknown client command '{}'", verb));
}

}  // namespace

Command add_client_command(CLI::App& app) {
  auto o = std::make_shared<ClientCommandOptions>();
  CLI::App* client = app.add_subcommand("client", "Talk to a djinn server (prints JSON)");
  client->add_option("--server", o->server, "server address (default tcp://127.0.0.1:5556)");
  client->add_option("--timeout-s", o->timeout_s, "give up on a reply after this long")->check(CLI::PositiveNumber);
  client->require_subcommand(1);
  client->add_subcommand("stats", "VMU, plan cache, sessions and counters");
  CLI::App* load = client->add_subcommand("load-model", "Load a preset or a model directory on the server");
  load->add_option("--model", o->model, "preset name or directory on the server")->required();
  load->add_option("--dtype", o->dtype, "f32, f16 or bf16")->check(CLI::IsMember({"f32", "f16", "bf16"}));
  load->add_option("--seed", o->seed, "seed of preset weights");
  CLI::App* open = client->add_subcommand("open-session", "Open a session; prints its id and secret token");
  open->add_option("--model-id", o->model_id, "from load-model")->required();
  open->add_option("--max-context", o->max_context, "tokens the session may hold (default: what the arena holds)");
  auto session_options = [&](CLI::App* c) {
    c->add_option("--session", o->session, "session id")->required();
    c->add_option("--token", o->token, "the session's token")->required();
  };
  CLI::App* generate = client->add_subcommand("generate", "Prefill and greedy-decode on a session");
  session_options(generate);
  generate->add_option("--prompt-ids", o->prompt_ids, "comma-separated token ids")->required();
  generate->add_option("--max-new-tokens", o->max_new_tokens, "tokens to generate (default 16)");
  CLI::App* signal = client->add_subcommand("signal", "Tell the server the session's phase");
  session_options(signal);
  signal->add_option("--phase", o->phase, "io_wait or compute")->required()->check(CLI::IsMember({"io_wait", "compute"}));
  signal->add_option("--resume-ms", o->resume_ms, "io_wait: expected time until compute resumes")
      ->check(CLI::NonNegativeNumber);
  CLI::App* close = client->add_subcommand("close", "Close a session");
  session_options(close);
  return {client, [o, client] {
            for (CLI::App* sub : client->get_subcommands()) return run_client(*o, sub->get_name());
            return invalid_argument("no client command");
          }};
}

}  // namespace djinn::cli
