// The constant-time quantizer of the dynamic maps (math::DynamicCoder)
// against the rule it replaces, math::quantize_nearest (binary search, ties
// to the lower code, sign rule): the same code for every float tried.
// "[sweep]" is every float in [-1, 1] for both maps (about 2^32 values, its
// own ctest); the rest are quick.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "core.hpp"
#include "element.hpp"
#include "qrmsprop/qrmsprop.hpp"
#include "quant_table.hpp"

namespace {

using qrms::math::bits_float;
using qrms::math::DynamicCoder;
using qrms::math::dynamic_code;
using qrms::math::quantize_nearest;

DynamicCoder coder_of(const std::vector<float> &q) {
  DynamicCoder d{};
  REQUIRE(qrms::core::build_dynamic_coder(q.data(), d));
  return d;
}

// The sum of count(t) for t in [0, threads), each on its own thread.
template <class Count>
uint64_t count_on_threads(unsigned threads, const Count &count) {
  std::atomic<uint64_t> total{0};
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) pool.emplace_back([&, t] { total += count(t); });
  for (auto &th : pool) th.join();
  return total.load();
}

// Mismatches over x = +-bits_float(u) for u in [u0, u1], on `threads` threads.
uint64_t sweep(const DynamicCoder &d, const std::vector<float> &q, uint32_t u0, uint32_t u1, uint32_t stride,
               unsigned threads) {
  return count_on_threads(threads, [&](unsigned t) {
    uint64_t bad = 0;
    for (uint64_t u = u0 + uint64_t(t) * stride; u <= u1; u += uint64_t(threads) * stride) {
      const float x = bits_float(static_cast<uint32_t>(u));
      bad += dynamic_code(d, x) != quantize_nearest(q.data(), x);
      bad += dynamic_code(d, -x) != quantize_nearest(q.data(), -x);
    }
    return bad;
  });
}

// Around every midpoint between neighbouring codes and every code itself:
// the 8 floats either side.
uint64_t around_midpoints(const DynamicCoder &d, const std::vector<float> &q) {
  uint64_t bad = 0;
  for (size_t i = 0; i + 1 < q.size(); ++i) {
    for (const float centre : {q[i], q[i] + (q[i + 1] - q[i]) / 2.0f, (q[i] + q[i + 1]) / 2.0f}) {
      float x = centre;
      for (int k = 0; k < 8; ++k) x = std::nextafter(x, -INFINITY);
      for (int k = 0; k < 17; ++k, x = std::nextafter(x, INFINITY)) bad += dynamic_code(d, x) != quantize_nearest(q.data(), x);
    }
  }
  return bad;
}

// The same through the CPU loops' coder (core::cpu_encode, scale 1) with
// the loops in use: mismatches over x = +-bits_float(u) for every u in
// [u0, u1], 64 Ki at a time per thread.
uint64_t sweep_encoder(const DynamicCoder &d, uint32_t u0, uint32_t u1, unsigned threads) {
  constexpr uint64_t kRun = 65536;
  return count_on_threads(threads, [&](unsigned t) {
    std::vector<float> x(2 * kRun);
    std::vector<uint8_t> codes(2 * kRun);
    uint64_t bad = 0;
    for (uint64_t b = u0 + uint64_t(t) * kRun; b <= u1; b += uint64_t(threads) * kRun) {
      const uint64_t n = std::min<uint64_t>(kRun, uint64_t(u1) - b + 1);
      for (uint64_t i = 0; i < n; ++i) {
        x[2 * i] = bits_float(static_cast<uint32_t>(b + i));
        x[2 * i + 1] = -x[2 * i];
      }
      qrms::core::cpu_encode(d, x.data(), 1.0f, codes.data(), int64_t(2 * n));
      for (uint64_t i = 0; i < 2 * n; ++i) bad += codes[i] != dynamic_code(d, x[i]);
    }
    return bad;
  });
}

unsigned sweep_threads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? hw : 1;
}

}  // namespace

TEST_CASE("dynamic coder: same codes as the search around every midpoint, on specials and a sample", "[quant]") {
  const bool is_signed = GENERATE(true, false);
  CAPTURE(is_signed);
  const std::vector<float> q = qrms::dynamic_map(is_signed);
  const DynamicCoder d = coder_of(q);
  CHECK(d.zero == qrms::math::zero_code(q.data()));
  CHECK(around_midpoints(d, q) == 0);
  for (const float x : {0.0f, -0.0f, 1.0f, -1.0f, 2.0f, -2.0f, INFINITY, -INFINITY, NAN, -NAN, 1e-45f, -1e-45f,
                        3.4e38f, -3.4e38f, q[0], q[255]}) {
    CAPTURE(x);
    CHECK(dynamic_code(d, x) == quantize_nearest(q.data(), x));
  }
  // Every 997th bit pattern of all 2^32, NaNs and infinities included.
  CHECK(sweep(d, q, 0, 0xffffffffu, 997, sweep_threads()) == 0);
  // Scaled state: a block's absmax and zero scale.
  CHECK(qrms::math::quantize_scaled(d, 0.3f, 0.0f) == qrms::math::zero_code(q.data()));
  CHECK(qrms::math::quantize_scaled(d, -0.3f, 0.6f) == qrms::math::quantize_scaled(q.data(), -0.3f, 0.6f, uint8_t(d.zero)));
}

TEST_CASE("dynamic coder: only for maps of the dynamic shape", "[quant]") {
  std::vector<float> q = qrms::dynamic_map(true);
  DynamicCoder d{};
  SECTION("an entry moved by 1e-4") { q[200] *= 1.0001f; }
  SECTION("NaN entry") { q[100] = NAN; }
  SECTION("zero not exact") { q[127] = 1e-30f; }
  SECTION("linear map") {
    for (int i = 0; i < 256; ++i) q[size_t(i)] = -1.0f + float(i) * (2.0f / 255.0f);
  }
  CHECK_FALSE(qrms::core::build_dynamic_coder(q.data(), d));
  const auto table = qrms::core::QuantTable::of(q.data());
  CHECK((table == nullptr || table->coder() == nullptr));
}

TEST_CASE("dynamic coder: a map a few ulp off the library's gets its own thresholds", "[quant]") {
  std::vector<float> q = qrms::dynamic_map(true);
  for (size_t i = 0; i < q.size(); i += 3) q[i] = std::nextafter(q[i], i % 2 ? INFINITY : -INFINITY);
  const DynamicCoder d = coder_of(q);
  CHECK(around_midpoints(d, q) == 0);
  CHECK(sweep(d, q, 0, 0x3f800000u, 101, sweep_threads()) == 0);
}

TEST_CASE("dynamic coder: every float in [-1, 1] and beyond", "[sweep]") {
  const bool is_signed = GENERATE(true, false);
  CAPTURE(is_signed);
  const std::vector<float> q = qrms::dynamic_map(is_signed);
  const DynamicCoder d = coder_of(q);
  // Every float with |x| <= 1 (both signs, both zeros), then a sample of the rest.
  CHECK(sweep(d, q, 0, 0x3f800000u, 1, sweep_threads()) == 0);
  CHECK(sweep(d, q, 0x3f800001u, 0xffffffffu, 7, sweep_threads()) == 0);
}

// The CPU loops' coder (the AVX2 loop) against dynamic_code
// for every float in [-1, 1], both maps; the baseline loop is dynamic_code
// itself.
TEST_CASE("CPU AVX2 coder: dynamic_code's code for every float in [-1, 1]", "[sweep]") {
  if (qrms::core::set_cpu_simd(qrms::core::CpuSimd::Avx2) != qrms::core::CpuSimd::Avx2) {
    WARN("this CPU has no AVX2: only the baseline coder exists here, nothing to compare");
    return;
  }
  const bool is_signed = GENERATE(true, false);
  CAPTURE(is_signed);
  const DynamicCoder d = coder_of(qrms::dynamic_map(is_signed));
  CHECK(sweep_encoder(d, 0, 0x3f800000u, sweep_threads()) == 0);
}

// The F16C conversion of the CPU's AVX2 loops (float16 parameters) against
// the portable to_half, for every float (test_simd.cpp checks a sample).
TEST_CASE("F16C float -> half: the portable bits for every float", "[sweep]") {
  if (qrms::core::set_cpu_simd(qrms::core::CpuSimd::Avx2) != qrms::core::CpuSimd::Avx2) {
    WARN("this CPU has no AVX2 and F16C: only the portable conversion exists here, nothing to compare");
    return;
  }
  std::vector<float> f(65536);
  std::vector<qrms::math::half_t> h(65536);
  int64_t bad = 0, first = -1;
  for (uint64_t hi = 0; hi < 65536; ++hi) {
    for (uint32_t lo = 0; lo < 65536; ++lo) f[lo] = qrms::math::bits_float(uint32_t(hi << 16) | lo);
    qrms::core::cpu_floats_to_halves(f.data(), h.data(), 65536);
    for (uint32_t lo = 0; lo < 65536; ++lo)
      if (h[lo].bits != qrms::math::to_half(f[lo]).bits) {
        if (first < 0) first = int64_t(hi << 16 | lo);
        ++bad;
      }
  }
  CAPTURE(first);
  CHECK(bad == 0);
}

// The 4-bit coder (15 thresholds, counted directly and by groups) against
// the rule it replaces, for both 4-bit maps: every float, both signs (the thresholds are found by
// bisection, so this is what shows the rule is monotone).
TEST_CASE("4-bit coder: every float", "[sweep]") {
  const bool square = GENERATE(true, false);
  CAPTURE(square);
  const qrms::math::Map4 map = square ? qrms::math::square_map4() : qrms::math::momentum_map4();
  const qrms::math::Coder4 c = qrms::math::coder4(map);
  const unsigned threads = sweep_threads();
  CHECK(count_on_threads(threads, [&](unsigned t) {
          uint64_t bad = 0;
          for (uint64_t u = t; u <= 0xffffffffu; u += threads) {
            const float x = bits_float(static_cast<uint32_t>(u));
            const uint8_t want = qrms::math::nearest_code4(map.v, x);
            bad += qrms::math::quantize4(c, x, 1.0f) != want;
            bad += qrms::math::quantize4_grouped(c, x, 1.0f) != want;  // the GPU's form
          }
          return bad;
        }) == 0);
}
