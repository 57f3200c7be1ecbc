// djinn: the command-line entry point. Parses the subcommand, runs it, and turns
// every error a user can cause into one line on stderr and a non-zero exit code.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>

#include "djinn/cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"djinn: a tensor operating system for interactive GPU sessions"};
  app.require_subcommand(1);
  spdlog::set_level(spdlog::level::warn);
  spdlog::set_pattern("[djinn %H:%M:%S.%e %l] %v");

  const djinn::cli::Command commands[] = {
      djinn::cli::add_run_command(app),
      djinn::cli::add_bench_command(app),
      djinn::cli::add_serve_command(app),
      djinn::cli::add_client_command(app),
  };

  std::string known;
  bool is_known = false;
  for (const djinn::cli::Command& command : commands) {
    known += (known.empty() ? "" : ", ") + command.subcommand->get_name();
    is_known = is_known || (argc > 1 && command.subcommand->get_name() == argv[1]);
  }
  if (argc > 1 && argv[1][0] != '-' && !is_known) {
    std::fprintf(stderr, "djinn: unknown command '%s' (commands: %s)\n", argv[1], known.c_str());
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "djinn: %s (see djinn --help)\n", e.what());
    return e.get_exit_code() == 0 ? 2 : e.get_exit_code();
  }

  try {
    for (const djinn::cli::Command& command : commands) {
      if (!command.subcommand->parsed()) continue;
      const djinn::Status status = command.run();
      if (!status.ok()) {
        std::fprintf(stderr, "djinn: error: %s\n", status.message().c_str());
        return 1;
      }
      return 0;
    }
  } catch (const std::exception& e) {  // CheckError and anything unexpected: still one line
    std::fprintf(stderr, "djinn: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
