// The `djinn` binary as a user sees it: golden fixtures reproduced through the command
// line, and bad input answered by one clear line and a non-zero exit, never a crash.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "djinn/models/safetensors.h"

namespace djinn {
namespace {

namespace fs = std::filesystem;
const fs::path kGolden = DJINN_GOLDEN_DIR;

struct CommandResult {
  int exit_code = -1;
  bool signaled = false;
  std::string out, err;
};

fs::path scratch_dir() {
  const fs::path dir = fs::temp_directory_path() / ("djinn_cli_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

CommandResult run_djinn(const std::string& args) {
  const fs::path err_path = scratch_dir() / "stderr.txt";
  const std::string command = std::string(DJINN_BINARY) + " " + args + " 2>" + err_path.string();
  CommandResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) result.out.append(buffer.data(), n);
  const int status = pclose(pipe);
  result.signaled = WIFSIGNALED(status);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.err = read_file(err_path);
  return result;
}

std::string golden_prompt(const std::string& name) {
  const nlohmann::json expected = nlohmann::json::parse(read_file(kGolden / name / "expected.json"));
  std::string ids;
  for (int i = 0; i < expected["prompt_len"].get<int>(); ++i)
    ids += (i ? "," : "") + std::to_string(expected["generated_ids"][static_cast<size_t>(i)].get<int>());
  return ids;
}

class CliGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(CliGolden, RunReproducesTheFixture) {
  const std::string name = GetParam();
  const fs::path logits_path = scratch_dir() / (name + "_logits.safetensors");
  const CommandResult r = run_djinn("run --model " + (kGolden / name).string() + " --prompt-ids " + golden_prompt(name) +
                                    " --max-new-tokens 24 --logits-out " + logits_path.string() + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json out = nlohmann::json::parse(r.out);
  const nlohmann::json expected = nlohmann::json::parse(read_file(kGolden / name / "expected.json"));
  EXPECT_EQ(out["generated_ids"], expected["generated_ids"]);
  for (const char* key : {"prefill_ms", "decode_ms_per_token"}) EXPECT_TRUE(out["timings"][key].is_number()) << key;
  for (const char* key : {"family", "params", "weight_bytes", "kv_bytes_per_token"})
    EXPECT_TRUE(out["model"].contains(key)) << key;

  const auto written = *SafetensorsFile::open(logits_path);
  const auto reference = *SafetensorsFile::open(kGolden / name / "expected.safetensors");
  const TensorView got = *written.tensor("logits"), want = *reference.tensor("logits");
  ASSERT_EQ(got.shape, want.shape);
  ASSERT_EQ(got.dtype, DType::kF32);
  float max_error = 0;
  for (int64_t i = 0; i < got.numel(); ++i)
    max_error = std::max(max_error, std::fabs(got.as<float>()[i] - want.as<float>()[i]));
  EXPECT_LE(max_error, 1e-4f);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CliGolden, ::testing::Values("gpt2-tiny", "llama-tiny"));

// One line on stderr, non-zero exit, no signal, no stack trace; the line says `expect`.
void expect_clean_failure(const std::string& args, const std::string& expect) {
  const CommandResult r = run_djinn(args);
  EXPECT_FALSE(r.signaled) << args;
  EXPECT_NE(r.exit_code, 0) << args;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << "\n" << r.err;
  EXPECT_NE(r.err.find(expect), std::string::npos) << args << "\nstderr: " << r.err;
  EXPECT_EQ(r.err.find("terminate"), std::string::npos) << r.err;
}

TEST(CliErrors, BadInputIsOneClearLine) {
  const std::string llama = (kGolden / "llama-tiny").string();
  expect_clean_failure("run --model /no/such/dir --prompt-ids 1,2", "does not exist");
  expect_clean_failure("run --model not-a-preset --prompt-ids 1,2", "neither a model directory nor a preset");
  expect_clean_failure("run --model " + llama + " --prompt-ids 1,512,3", "token id 512");
  expect_clean_failure("run --model " + llama + " --prompt-ids 1,-4", "token id -4");
  expect_clean_failure("run --model " + llama + " --prompt-ids 1,two,3", "'two'");
  expect_clean_failure("run --model " + llama + " --prompt-len 120 --max-new-tokens 24", "exceeds the model's context");
  expect_clean_failure("run --model " + llama + " --prompt-ids 1 --max-new-tokens 0", "--max-new-tokens");
  expect_clean_failure("run --model " + llama + " --dtype f64", "f64");
  expect_clean_failure("run --prompt-ids 1", "--model");
  expect_clean_failure("frobnicate", "frobnicate");
}

TEST(CliErrors, BrokenCheckpointIsOneClearLine) {
  const fs::path dir = scratch_dir() / "broken_model";
  fs::create_directories(dir);
  fs::copy_file(kGolden / "gpt2-tiny" / "config.json", dir / "config.json", fs::copy_options::overwrite_existing);
  const std::string model = read_file(kGolden / "gpt2-tiny" / "model.safetensors");
  std::ofstream(dir / "model.safetensors", std::ios::binary) << model.substr(0, model.size() / 2);  // truncated
  expect_clean_failure("run --model " + dir.string() + " --prompt-ids 1,2", "model.safetensors");
  std::ofstream(dir / "model.safetensors", std::ios::binary) << "garbage";
  expect_clean_failure("run --model " + dir.string() + " --prompt-ids 1,2", "truncated");
  fs::remove(dir / "model.safetensors");
  expect_clean_failure("run --model " + dir.string() + " --prompt-ids 1,2", "model.safetensors");
  std::ofstream(dir / "config.json") << "{\"model_type\": \"gpt2\"";
  expect_clean_failure("run --model " + dir.string() + " --prompt-ids 1,2", "config.json");
}

TEST(CliBench, DecodePrintsJson) {
  const CommandResult r = run_djinn("bench decode --model gpt2-tiny --prompt-len 8 --n-tokens 4 --repeats 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json out = nlohmann::json::parse(r.out);
  EXPECT_GT(out["prefill_ms"].get<double>(), 0.0);
  EXPECT_GT(out["decode_tokens_per_s"].get<double>(), 0.0);
  EXPECT_EQ(out["samples"]["decode_step_ms"].size(), 4u);
}

// bench os-tax end to end on both transports: a server process, the plain-socket
// floor, the bare ZeroMQ echo process and the same-CPU hand-off each answer, the
// micro_add row carries every field the issue names, and the server's VMU has the
// native side's sizes. (Numbers are printed, never judged here.)
TEST(CliBench, OsTaxQuickPrintsEveryReferenceOnBothTransports) {
  for (const char* transport : {"tcp", "ipc"}) {
    SCOPED_TRACE(transport);
    const CommandResult r = run_djinn(std::string("bench os-tax --quick --iterations 20 --cold-repeats 1 --json --listen ") +
                                      transport);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const nlohmann::json out = nlohmann::json::parse(r.out);
    EXPECT_EQ(out["transport"], transport);
    EXPECT_GT(out["floor_us_p50"].get<double>(), 0.0);
    EXPECT_GT(out["zmq_echo_us_p50"].get<double>(), 0.0);
    EXPECT_GT(out["same_cpu_handoff_us_p50"].get<double>(), 0.0);
    ASSERT_EQ(out["rows"].size(), 1u);
    const nlohmann::json& row = out["rows"][0];
    EXPECT_EQ(row["op"], "micro_add");
    for (const char* key : {"native_us_p50", "cold_us", "warm_us_p50", "warm_us_p99"}) EXPECT_GT(row[key].get<double>(), 0.0) << key;
    EXPECT_TRUE(row.contains("overhead_us_p50") && row.contains("overhead_pct"));
    // Native and server report the same VMU sizes, and no swap space.
    EXPECT_EQ(out["runtimes"]["native"], out["runtimes"]["server"]) << out["runtimes"].dump();
    EXPECT_EQ(out["runtimes"]["server"]["host_swap_pool_bytes"], 0);
    EXPECT_GT(out["runtimes"]["server"]["device_bytes"].get<int64_t>(), 0);
  }
}

// The full run's full_forward row pairs each server's cold call with the same server's
// warm calls (one pair per server), splits each pair into its parts, and carries the
// server's dispatch times.
TEST(CliBench, OsTaxFullForwardPairsEachServersColdCallWithItsWarmCallsInParts) {
  const CommandResult r =
      run_djinn("bench os-tax --iterations 10 --large-iterations 2 --cold-repeats 2 --json --listen tcp");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json out = nlohmann::json::parse(r.out);
  ASSERT_EQ(out["rows"].size(), 3u);
  const nlohmann::json& row = out["rows"][2];
  EXPECT_EQ(row["op"], "full_forward");
  EXPECT_EQ(row["cold_us_samples"].size(), 2u);
  EXPECT_EQ(row["cold_minus_warm_paired_samples"].size(), 2u);
  EXPECT_EQ(row["cold_minus_warm_outside_compute_samples"].size(), 2u);
  // Per server, the parts (compute, the server's time outside it, the wire) add up to
  // the whole difference, and the outside parts to the outside-compute one.
  const nlohmann::json& parts = row["cold_minus_warm_parts_samples"];
  for (size_t i = 0; i < 2; ++i) {
    const double compute = parts["compute"][i], server = parts["server_outside_compute"][i], wire = parts["wire"][i];
    EXPECT_NEAR(compute + server + wire, row["cold_minus_warm_paired_samples"][i].get<double>(), 1e-6);
    EXPECT_NEAR(server + wire, row["cold_minus_warm_outside_compute_samples"][i].get<double>(), 1e-6);
  }
  // The median's confidence interval brackets it.
  EXPECT_LE(row["cold_minus_warm_paired_ci95_us"][0].get<double>(), row["cold_minus_warm_paired_us"].get<double>());
  EXPECT_GE(row["cold_minus_warm_paired_ci95_us"][1].get<double>(), row["cold_minus_warm_paired_us"].get<double>());
  EXPECT_GT(row["cold_dispatch_us"].get<double>(), 0.0);
  EXPECT_GT(row["warm_dispatch_us_p50"].get<double>(), 0.0);
  EXPECT_FALSE(out["rows"][0].contains("cold_minus_warm_paired_us"));  // micro_add: no pairs
}

TEST(CliRun, ReadableReportOnAPreset) {
  const CommandResult r = run_djinn("run --model llama-tiny --prompt-len 5 --max-new-tokens 3");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("generated (  3 tokens)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("decode"), std::string::npos);
}

}  // namespace
}  // namespace djinn

namespace djinn {
namespace {

// `djinn serve` + `djinn client` as a script would use them; SIGTERM drains and exits 0.
TEST(CliServe, ClientCommandsContinueOneSessionAndSigtermDrains) {
  const fs::path dir = scratch_dir();
  const std::string address = "ipc://" + (dir / "serve.ipc").string();
  const fs::path log = dir / "serve.log";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    ::execl(DJINN_BINARY, "djinn", "serve", "--listen", address.c_str(), "--device-mem-gb", "0.25", nullptr);
    ::_exit(127);
  }
  const std::string client = "client --server " + address + " --timeout-s 20 ";
  const CommandResult load = run_djinn(client + "load-model --model " + (kGolden / "llama-tiny").string());
  ASSERT_EQ(load.exit_code, 0) << load.err;
  const auto model_id = nlohmann::json::parse(load.out)["model_id"].get<uint64_t>();
  const CommandResult open = run_djinn(client + "open-session --model-id " + std::to_string(model_id) + " --max-context 64");
  ASSERT_EQ(open.exit_code, 0) << open.err;
  const nlohmann::json session = nlohmann::json::parse(open.out);
  const std::string who = "--session " + std::to_string(session["session_id"].get<uint64_t>()) + " --token " +
                          session["token"].get<std::string>();
  // The golden prompt in two calls: the second continues the first's KV cache, so its
  // tokens are the fixture's continuation.
  const nlohmann::json expected = nlohmann::json::parse(read_file(kGolden / "llama-tiny" / "expected.json"));
  const std::string prompt = golden_prompt("llama-tiny");
  const CommandResult first = run_djinn(client + "generate " + who + " --prompt-ids " + prompt + " --max-new-tokens 1");
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const int first_token = nlohmann::json::parse(first.out)["tokens"][0].get<int>();
  EXPECT_EQ(first_token, expected["generated_ids"][16].get<int>());
  const CommandResult second =
      run_djinn(client + "generate " + who + " --prompt-ids " + std::to_string(first_token) + " --max-new-tokens 3");
  ASSERT_EQ(second.exit_code, 0) << second.err;
  const nlohmann::json tokens = nlohmann::json::parse(second.out)["tokens"];
  for (int i = 0; i < 3; ++i) EXPECT_EQ(tokens[static_cast<size_t>(i)], expected["generated_ids"][17 + static_cast<size_t>(i)]);
  EXPECT_EQ(run_djinn(client + "signal " + who + " --phase io_wait --resume-ms 1000").exit_code, 0);
  const CommandResult bad = run_djinn(client + "generate --session 1 --token nope --prompt-ids 1");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("token"), std::string::npos) << bad.err;
  const CommandResult stats = run_djinn(client + "stats");
  ASSERT_EQ(stats.exit_code, 0);
  const nlohmann::json s = nlohmann::json::parse(stats.out);
  EXPECT_EQ(s["sessions"][0]["phase"], "IO_WAIT");
  EXPECT_EQ(s["counters"]["errors"]["bad_token"], 1);

  ::kill(pid, SIGTERM);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "serve did not exit cleanly";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const std::string served = read_file(log);
  EXPECT_NE(served.find("listening on " + address), std::string::npos) << served;
  EXPECT_NE(served.find("drained, closed 1 open sessions"), std::string::npos) << served;
}

}  // namespace
}  // namespace djinn
