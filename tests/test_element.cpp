// The 16-bit conversions of src/element.hpp (shared by the CPU and the GPU)
// against the test reference: every half value, and float -> half / bfloat16
// over a sweep of all float bit patterns plus every rounding boundary.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "element.hpp"
#include "reference.hpp"

namespace {

using namespace qrms::math;
using qref::Dt;

uint32_t bits_of(float f) { return float_bits(f); }

// Expected bits of float x rounded to d: NaN maps to a quiet NaN of the same
// sign (half: 0x7e00; bfloat16: the top bits with the quiet bit set).
uint16_t expected16(Dt d, float x) {
  if (std::isnan(x)) {
    const uint32_t u = bits_of(x);
    return d == Dt::F16 ? static_cast<uint16_t>(((u >> 16) & 0x8000u) | 0x7e00u) : static_cast<uint16_t>((u >> 16) | 0x40u);
  }
  return qref::encode16(d, qref::round_to(d, x));
}

}  // namespace

TEST_CASE("half -> float is exact for all 65536 values", "[element]") {
  uint32_t bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = to_float(half_t{static_cast<uint16_t>(h)});
    if ((h & 0x7c00u) == 0x7c00u) {
      // inf or nan, sign and payload kept
      bad += bits_of(got) != (((h & 0x8000u) << 16) | 0x7f800000u | ((h & 0x3ffu) << 13));
    } else {
      bad += static_cast<double>(got) != qref::decode16(Dt::F16, static_cast<uint16_t>(h)) ||
             std::signbit(got) != bool(h & 0x8000u);
    }
  }
  CHECK(bad == 0);
}

TEST_CASE("float -> half and float -> bfloat16 round to nearest even", "[element]") {
  uint64_t bad_h = 0, bad_b = 0;
  auto check = [&](float x) {
    bad_h += to_half(x).bits != expected16(Dt::F16, x);
    bad_b += to_bf16(x).bits != expected16(Dt::BF16, x);
  };
  for (uint64_t u = 0; u < (uint64_t(1) << 32); u += 4093) check(bits_float(static_cast<uint32_t>(u)));
  // Around every half value: the value, the midpoints to its neighbours, and
  // one float either side of each (ties and near-ties, subnormals, overflow).
  for (uint32_t h = 0; h < 0x7c00u; ++h) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const float v = to_float(half_t{static_cast<uint16_t>(h | sign)});
      const float next = h + 1 < 0x7c00u ? to_float(half_t{static_cast<uint16_t>((h + 1) | sign)})
                                         : (sign ? -65536.0f : 65536.0f);  // the "next" value past the largest
      const float mid = v + (next - v) / 2.0f;
      for (float x : {v, mid}) {
        check(x);
        check(std::nextafter(x, -INFINITY));
        check(std::nextafter(x, INFINITY));
      }
    }
  }
  // Around every bfloat16 midpoint of one binade and the specials.
  for (uint32_t b = 0x3f80; b < 0x4000; ++b) {
    const float mid = bits_float((b << 16) | 0x8000u);
    check(mid);
    check(std::nextafter(mid, 0.0f));
    check(std::nextafter(mid, INFINITY));
  }
  for (float x : {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 65504.0f, 65519.99f, 65520.0f, 1e-8f, -1e-8f}) check(x);
  CHECK(bad_h == 0);
  CHECK(bad_b == 0);
}
