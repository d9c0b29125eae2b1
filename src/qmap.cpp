// bitsandbytes' dynamic quantization map, computed the way torch computes it
// in float32 (linspace, midpoints, scaling), so entries agree to a few ulp.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "qrmsprop/qrmsprop.hpp"

namespace qrms {

namespace {

// torch.linspace(start, end, steps) for float32 on the CPU (its scalar path).
std::vector<float> linspace(float start, float end, int steps) {
  std::vector<float> v(static_cast<size_t>(steps));
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int halfway = steps / 2;
  for (int i = 0; i < steps; ++i)
    v[i] = i < halfway ? start + step * static_cast<float>(i) : end - step * static_cast<float>(steps - i - 1);
  return v;
}

}  // namespace

// create_dynamic_map(signed, max_exponent_bits=total_bits-1, total_bits): for
// each exponent i the midpoints of linspace(0.1, 1, 2^i + 1) (signed) or
// linspace(0.1, 1, 2^(i+1) + 1) (unsigned), scaled by 10^(i-(total_bits-2)),
// with their negatives when signed; then 0 and 1, sorted: 2^total_bits values
// (bitsandbytes pads a map of fewer than 256 with zeros; this does not).
std::vector<float> dynamic_map(bool is_signed, int total_bits) {
  if (total_bits < 2 || total_bits > 8)
    throw ValueError("dynamic_map: total_bits must be in [2, 8], got " + std::to_string(total_bits));
  std::vector<float> data;
  for (int i = 0; i < total_bits - 1; ++i) {
    const int items = (is_signed ? (1 << i) : (1 << (i + 1))) + 1;
    const std::vector<float> b = linspace(0.1f, 1.0f, items);
    const float scale = static_cast<float>(std::pow(10.0, i - (total_bits - 2)));
    for (int j = 0; j + 1 < items; ++j) {
      const float mean = (b[j] + b[j + 1]) / 2.0f;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-scale * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  return data;
}

}  // namespace qrms
