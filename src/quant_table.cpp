#include "quant_table.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

namespace qrms {
namespace core {

bool build_dynamic_coder(const float *qmap, math::DynamicCoder &d) {
  for (const int is_signed : {1, 0}) {
    const math::DynamicShape sh = math::dynamic_shape(is_signed);
    bool ok = true;
    for (int c = 0; c < 256 && ok; ++c) ok = math::dynamic_entry_ok(sh, qmap, c);
    if (!ok) continue;
    math::dynamic_params(d, sh);
    for (int s = 0; s < 2; ++s)
      for (int L = 0; L < 256; ++L) math::dynamic_threshold(d, sh, qmap, s, L);
    return true;
  }
  return false;
}

QuantTable::QuantTable(const float *qmap) {
  std::memcpy(q_, qmap, sizeof q_);
  dynamic_ = build_dynamic_coder(qmap, coder_);
  for (uint32_t prefix = 0; prefix < 65536; ++prefix) {
    // The smallest float whose top 16 bits are `prefix`: the low bits all
    // zero for a positive prefix, all ones for a negative one. Prefixes of
    // NaN and infinity never reach the table (nearest_code decides those
    // values before it looks at lo), any start is safe for them.
    const float low = math::bits_float(prefix & 0x8000u ? (prefix << 16) | 0xffffu : prefix << 16);
    int lo = 0;
    if (std::isfinite(low)) {
      // Largest index < 255 with q[lo] <= low (0 when there is none).
      lo = static_cast<int>(std::upper_bound(q_, q_ + 255, low) - q_) - 1;
      lo = std::max(lo, 0);
    }
    start_[prefix] = static_cast<uint8_t>(std::min(lo, 254));
    // The index searched for is at most that of the prefix's largest value.
    const float high = math::bits_float(prefix & 0x8000u ? prefix << 16 : (prefix << 16) | 0xffffu);
    if (std::isfinite(high)) {
      const int hi = static_cast<int>(std::upper_bound(q_, q_ + 255, high) - q_) - 1;
      if (hi > start_[prefix] + 1) one_step_ = false;
    }
  }
}

std::shared_ptr<const QuantTable> QuantTable::of(const float *qmap) {
  for (int i = 0; i < 256; ++i)
    if (!std::isfinite(qmap[i]) || (i > 0 && !(qmap[i - 1] <= qmap[i]))) return nullptr;

  // A few recently used maps; an optimizer uses at most two (signed and
  // unsigned) for its lifetime.
  static std::mutex mutex;
  static std::vector<std::shared_ptr<const QuantTable>> cache;
  constexpr size_t kCached = 8;
  std::lock_guard<std::mutex> lock(mutex);
  for (size_t i = 0; i < cache.size(); ++i) {
    if (std::memcmp(cache[i]->q_, qmap, sizeof cache[i]->q_) == 0) {
      std::rotate(cache.begin(), cache.begin() + static_cast<std::ptrdiff_t>(i),
                  cache.begin() + static_cast<std::ptrdiff_t>(i) + 1);  // most recent first
      return cache.front();
    }
  }
  std::shared_ptr<const QuantTable> table(new QuantTable(qmap));
  cache.insert(cache.begin(), table);
  if (cache.size() > kCached) cache.pop_back();
  return table;
}

}  // namespace core
}  // namespace qrms
