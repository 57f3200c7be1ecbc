// SegmentStats: what every VMU segment reports. All sizes in bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>

namespace djinn {

struct SegmentStats {
  size_t capacity = 0;     // bytes the segment holds now (its extents of the VMU region, or its fixed size)
  size_t used = 0;         // bytes handed out to clients and not yet returned
  size_t peak = 0;         // max of `used` since creation
  uint64_t allocations = 0;  // allocations handed out since creation
};

inline nlohmann::json to_json(const SegmentStats& s) {
  return {{"capacity", s.capacity}, {"used", s.used}, {"peak", s.peak}, {"allocations", s.allocations}};
}

}  // namespace djinn
