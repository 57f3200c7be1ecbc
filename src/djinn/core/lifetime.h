// Lifetime classes: what a tensor *means*, which decides where the VMU keeps it.
//   kWeight     model parameters       -> Text segment, shared by every session
//   kKv         per-session KV cache   -> Data segment (the session's arena), swappable
//   kActivation one step's temporaries -> Stack segment, reset after every step
//   kIo         step inputs / outputs  -> staging buffers, copied in and out per call
#pragma once

#include <cstdint>

namespace djinn {

enum class LifetimeClass : uint8_t { kWeight, kKv, kActivation, kIo };

inline const char* lifetime_name(LifetimeClass lifetime) {
  switch (lifetime) {
    case LifetimeClass::kWeight: return "weight";
    case LifetimeClass::kKv: return "kv";
    case LifetimeClass::kActivation: return "activation";
    case LifetimeClass::kIo: return "io";
  }
  return "?";
}

}  // namespace djinn
