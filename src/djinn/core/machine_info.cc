#include "djinn/core/machine_info.h"

#include <unistd.h>

#include <fstream>
#include <thread>

namespace djinn {

MachineInfo machine_info() {
  MachineInfo info;
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) info.cpu_model = line.substr(line.find_first_not_of(' ', colon + 1));
      break;
    }
  }
  info.logical_cores = std::thread::hardware_concurrency();
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page_size > 0) info.memory_bytes = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) == 0) info.hostname = host;
#ifdef DJINN_GIT_COMMIT
  info.git_commit = DJINN_GIT_COMMIT;
#endif
  return info;
}

nlohmann::json to_json(const MachineInfo& info) {
  return {{"cpu_model", info.cpu_model},
          {"logical_cores", info.logical_cores},
          {"memory_bytes", info.memory_bytes},
          {"hostname", info.hostname},
          {"git_commit", info.git_commit}};
}

}  // namespace djinn
