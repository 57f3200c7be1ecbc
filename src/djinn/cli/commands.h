// The `djinn` subcommands. Each add_*_command registers its options on the CLI11
// app and returns it with the function that runs it after parsing.
// Errors a user can cause come back as a Status, printed by main as one line.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

#include "djinn/core/status.h"

namespace djinn::cli {

struct Command {
  CLI::App* subcommand = nullptr;   // owned by the parent app
  std::function<Status()> run;      // called after parsing when `subcommand` was given
};

Command add_run_command(CLI::App& app);
Command add_bench_command(CLI::App& app);
Command add_serve_command(CLI::App& app);
Command add_client_command(CLI::App& app);

}  // namespace djinn::cli
