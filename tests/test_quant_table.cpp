// The CPU's table-driven quantizer (src/quant_table.hpp) against the binary
// search the GPU runs (math::quantize_nearest): the same code for every float
// tried, so CPU and GPU state stay bit-identical.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "element.hpp"
#include "qrmsprop/qrmsprop.hpp"
#include "quant_table.hpp"

namespace {

using qrms::core::QuantTable;
using qrms::math::bits_float;
using qrms::math::quantize_nearest;

// Every `stride`-th bit pattern of all 2^32 (NaNs, infinities, subnormals
// and both zeros included), plus the neighbourhood of every midpoint between
// two codes, where ties and the walk from the table's start matter.
uint64_t count_mismatches(const QuantTable &table, const std::vector<float> &q, uint32_t stride) {
  uint64_t bad = 0;
  for (uint64_t u = 0; u < (uint64_t(1) << 32); u += stride) {
    const float x = bits_float(static_cast<uint32_t>(u));
    bad += table.nearest(x) != quantize_nearest(q.data(), x);
  }
  for (size_t i = 0; i + 1 < q.size(); ++i) {
    bad += table.nearest(q[i]) != quantize_nearest(q.data(), q[i]);
    float x = q[i] + (q[i + 1] - q[i]) / 2.0f;
    for (int k = 0; k < 4; ++k) x = std::nextafter(x, -INFINITY);
    for (int k = 0; k < 9; ++k, x = std::nextafter(x, INFINITY)) bad += table.nearest(x) != quantize_nearest(q.data(), x);
  }
  return bad;
}

}  // namespace

TEST_CASE("table quantizer gives the binary search's code for the dynamic maps", "[quant]") {
  const bool is_signed = GENERATE(true, false);
  const std::vector<float> q = qrms::dynamic_map(is_signed);
  const auto table = QuantTable::of(q.data());
  REQUIRE(table != nullptr);
  CHECK(count_mismatches(*table, q, 9973) == 0);
  // Values inside [-1, 1] (where the scaled state lies), more densely.
  uint64_t bad = 0;
  for (uint32_t u = 0; u <= 0x3f800000u; u += 37) {
    for (const float x : {bits_float(u), -bits_float(u)}) bad += table->nearest(x) != quantize_nearest(q.data(), x);
  }
  CHECK(bad == 0);
}

TEST_CASE("table quantizer on other ascending maps walks to the same code", "[quant]") {
  // Codes crowded into a narrow range (many per table bucket) and repeated
  // values: the table's start is several steps below the answer.
  std::vector<float> q(256);
  for (int i = 0; i < 256; ++i) q[static_cast<size_t>(i)] = 1.0f + static_cast<float>(i / 2) * 1e-5f - 0.5f * (i < 8);
  const auto table = QuantTable::of(q.data());
  REQUIRE(table != nullptr);
  CHECK(count_mismatches(*table, q, 99991) == 0);
  uint64_t bad = 0;
  for (float x = 0.99f; x < 1.0015f; x = std::nextafter(x, INFINITY) + 1e-8f) bad += table->nearest(x) != quantize_nearest(q.data(), x);
  CHECK(bad == 0);
}

TEST_CASE("maps that are not finite and ascending get no table", "[quant]") {
  std::vector<float> q = qrms::dynamic_map(true);
  SECTION("descending pair") { std::swap(q[10], q[11]); }
  SECTION("NaN entry") { q[100] = NAN; }
  SECTION("infinite entry") { q[255] = INFINITY; }
  CHECK(QuantTable::of(q.data()) == nullptr);
}

TEST_CASE("the table cache tells maps apart", "[quant]") {
  const std::vector<float> s = qrms::dynamic_map(true), u = qrms::dynamic_map(false);
  const auto ts = QuantTable::of(s.data()), tu = QuantTable::of(u.data());
  REQUIRE(ts != nullptr);
  REQUIRE(tu != nullptr);
  CHECK(ts != tu);
  CHECK(QuantTable::of(s.data()) == ts);  // cached
  CHECK(ts->nearest(-0.5f) == quantize_nearest(s.data(), -0.5f));
  CHECK(tu->nearest(0.5f) == quantize_nearest(u.data(), 0.5f));
}
