// The CPU's quantizers for one map: math::DynamicCoder when the map is one
// of the dynamic maps (the constant-time one both backends use), and for any
// other finite ascending map a shortcut for the binary search of
// math::quantize_nearest: a 64 Ki-
// entry table indexed by the top 16 bits of a float gives an index at or
// below the one the search finds, and a short forward walk reaches it (one
// step at most for the dynamic maps). The code then comes from
// math::nearest_code, as for the binary search, so both give the same code
// (tests/test_quant_table.cpp: a sweep over all float bit patterns and the
// floats around every midpoint of the map).
#pragma once

#include <cstdint>
#include <memory>

#include "element.hpp"

namespace qrms {
namespace core {

class QuantTable {
 public:
  // The table of this map, shared and cached by the map's contents; nullptr
  // when the map is not finite and ascending (then only the binary search
  // has defined results, and callers use it).
  static std::shared_ptr<const QuantTable> of(const float *qmap);

  uint8_t nearest(float x) const { return math::nearest_code(q_, x, *this); }

  // The constant-time coder when the map has a dynamic map's shape, else nullptr.
  const math::DynamicCoder *coder() const { return dynamic_ ? &coder_ : nullptr; }

  // The largest index lo < 255 with q[lo] <= x, for q[0] < x < q[255].
  int operator()(float x) const {
    int lo = start_[math::float_bits(x) >> 16];
    lo += q_[lo + 1] <= x;  // without a branch: the dynamic maps never need more
    if (!one_step_)
      while (lo < 254 && q_[lo + 1] <= x) ++lo;
    return lo;
  }

 private:
  explicit QuantTable(const float *qmap);
  float q_[256];
  uint8_t start_[65536];
  bool one_step_ = true;  // no table entry is more than one step below the index searched for
  bool dynamic_ = false;
  math::DynamicCoder coder_;
};

// Builds the coder of qmap when every entry has the value of a signed or an
// unsigned dynamic map; false (d unspecified) otherwise.
bool build_dynamic_coder(const float *qmap, math::DynamicCoder &d);

}  // namespace core
}  // namespace qrms
