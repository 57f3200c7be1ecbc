// CPU pinning for the threads on a request's path (rpc/server.h, --pin-cpu) and its
// undoing for the threads that do bulk work (core/parallel.h).
//
// Threads inherit their creator's CPUs, so a worker started by a pinned thread would be
// pinned too; workers call unpin_current_thread() to take back every CPU the process
// had when it started (captured before main runs, so `taskset` limits still hold).
#pragma once

#include <sched.h>

namespace djinn {

// Pins the calling thread to `cpu`; false when the kernel refuses (no such CPU, or one
// outside the process's cpuset).
bool pin_current_thread(int cpu);

// Gives the calling thread every CPU the process started with.
void unpin_current_thread();

// The number of CPUs the process started with.
int startup_cpu_count();

// The i-th CPU (0-based, in increasing order) the process started with; -1 past the end.
int startup_cpu(int i);

// Whether `cpu` is one of the CPUs the process started with (pinning elsewhere fails,
// and ZeroMQ aborts when its I/O thread's affinity cannot be set).
bool is_startup_cpu(int cpu);

// The default CPU for a server's request path: the highest-numbered CPU the process
// started with, when it started with two or more (so that one stays for the rest);
// -1 otherwise.
int default_request_path_cpu();

// Pins the calling thread to `cpu` for the object's lifetime and then gives it back
// the CPUs it had (cpu < 0: does nothing). pinned() says whether the pin took.
class ScopedCpuPin {
 public:
  explicit ScopedCpuPin(int cpu);
  ~ScopedCpuPin();
  ScopedCpuPin(const ScopedCpuPin&) = delete;
  ScopedCpuPin& operator=(const ScopedCpuPin&) = delete;
  bool pinned() const { return pinned_; }

 private:
  bool pinned_ = false;
  cpu_set_t saved_;
};

}  // namespace djinn
