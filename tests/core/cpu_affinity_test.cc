#include "djinn/core/cpu_affinity.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <thread>

#include "djinn/core/parallel.h"

namespace djinn {
namespace {

int own_cpu_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(pthread_getaffinity_np(pthread_self(), sizeof set, &set), 0);
  return CPU_COUNT(&set);
}

TEST(CpuAffinity, ParallelRangesWorkersOfAPinnedThreadGetEveryCpuBack) {
  std::thread pinned([] {
    ASSERT_TRUE(pin_current_thread(0));
    EXPECT_EQ(own_cpu_count(), 1);
    std::atomic<int> ranges{0}, min_cpus{1 << 30};
    parallel_ranges(1 << 20, 0, [&](int64_t begin, int64_t end) {
      ASSERT_LT(begin, end);
      ++ranges;
      if (begin != 0) {  // a worker, not the calling thread
        const int n = own_cpu_count();
        int seen = min_cpus.load();
        while (n < seen && !min_cpus.compare_exchange_weak(seen, n)) {
        }
      }
    });
    EXPECT_EQ(ranges.load(), static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    if (ranges.load() > 1) {
      EXPECT_EQ(min_cpus.load(), startup_cpu_count());
    }
    EXPECT_EQ(own_cpu_count(), 1);  // the caller stays pinned
    unpin_current_thread();
    EXPECT_EQ(own_cpu_count(), startup_cpu_count());
  });
  pinned.join();
}

TEST(CpuAffinity, PinningRefusesCpusThatDoNotExist) {
  std::thread t([] {
    EXPECT_FALSE(pin_current_thread(-1));
    EXPECT_FALSE(pin_current_thread(CPU_SETSIZE));
    EXPECT_EQ(own_cpu_count(), startup_cpu_count());
  });
  t.join();
}

TEST(CpuAffinity, TheDefaultRequestPathCpuLeavesOthersFree) {
  const int cpu = default_request_path_cpu();
  if (startup_cpu_count() < 2) {
    EXPECT_EQ(cpu, -1);
  } else {
    EXPECT_GE(cpu, 1);
  }
}

}  // namespace
}  // namespace djinn
