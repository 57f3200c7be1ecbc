// `djinn bench os-tax`: remote vs in-process execution, beside a plain-socket floor.
#pragma once

#include <string>

#include "djinn/core/status.h"
#include "djinn/rpc/client.h"
#include "djinn/rpc/server.h"

namespace djinn::cli {

struct OsTaxOptions {
  std::string transport = "tcp";  // tcp | ipc
  std::string device = "cpu";     // cpu | cuda: the native Runtime's and the server's
  int small_iterations = 2000;    // micro_add and the floor
  int large_iterations = 10;      // layer and full_forward
  bool quick = false;             // micro_add only
  int busy_poll_us = rpc::ServerOptions{}.busy_poll_us;    // the server's busy-poll window (0: block at once)
  int client_busy_poll_us = ClientOptions{}.busy_poll_us;  // the client's (0: block at once)
  int cold_repeats = 25;          // fresh servers giving a cold sample each (median reported)
  int pin_cpu = -1;               // the server's --pin-cpu
  double host_swap_pool_gb = 0;   // both runtimes' swap space (os-tax never swaps)
  bool json = false;
};

Status bench_os_tax(const OsTaxOptions& options);

// `djinn bench zmq-echo` (hidden; bench os-tax starts it): a bare ZeroMQ ROUTER that
// echoes every message, on `pin_cpu` with its I/O thread when >= 0. Runs until killed.
struct ZmqEchoOptions {
  std::string address;
  int pin_cpu = -1;
};
Status zmq_echo(const ZmqEchoOptions& options);

}  // namespace djinn::cli
