// What machine a number was measured on: recorded beside every benchmark result.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace djinn {

struct MachineInfo {
  std::string cpu_model;       // /proc/cpuinfo "model name"
  unsigned logical_cores = 0;  // std::thread::hardware_concurrency()
  uint64_t memory_bytes = 0;   // physical memory
  std::string hostname;
  std::string git_commit;      // the commit djinn was configured from ("-dirty": with local changes)
};

MachineInfo machine_info();
nlohmann::json to_json(const MachineInfo& info);

}  // namespace djinn
