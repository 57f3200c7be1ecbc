#include "djinn/core/cpu_affinity.h"

#include <pthread.h>
#include <sched.h>

namespace djinn {
namespace {

// The process's CPUs at load time, before any thread pinned itself.
struct StartupCpus {
  cpu_set_t set;
  StartupCpus() {
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) != 0)
      for (int c = 0; c < CPU_SETSIZE; ++c) CPU_SET(c, &set);
  }
};
const StartupCpus& startup_cpus() {
  static const StartupCpus cpus;
  return cpus;
}
[[maybe_unused]] const StartupCpus& g_captured_at_load = startup_cpus();

}  // namespace

bool pin_current_thread(int cpu) {
  if (cpu < 0 || cpu >= CPU_SETSIZE) return false;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set) == 0;
}

void unpin_current_thread() {
  ::pthread_setaffinity_np(::pthread_self(), sizeof startup_cpus().set, &startup_cpus().set);
}

ScopedCpuPin::ScopedCpuPin(int cpu) {
  if (cpu < 0 || ::pthread_getaffinity_np(::pthread_self(), sizeof saved_, &saved_) != 0) return;
  pinned_ = pin_current_thread(cpu);
}

ScopedCpuPin::~ScopedCpuPin() {
  if (pinned_) ::pthread_setaffinity_np(::pthread_self(), sizeof saved_, &saved_);
}

int startup_cpu_count() { return CPU_COUNT(&startup_cpus().set); }

int startup_cpu(int i) {
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &startup_cpus().set) && i-- == 0) return c;
  return -1;
}

bool is_startup_cpu(int cpu) { return cpu >= 0 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, &startup_cpus().set); }

int default_request_path_cpu() {
  if (startup_cpu_count() < 2) return -1;
  for (int c = CPU_SETSIZE - 1; c >= 0; --c)
    if (CPU_ISSET(c, &startup_cpus().set)) return c;
  return -1;
}

}  // namespace djinn
