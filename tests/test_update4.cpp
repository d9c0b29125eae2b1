// 4-bit state (StateKind::Blockwise4): its maps, its quantizer, the packing
// of two codes per byte, the zero-point property of the square average's
// map, and the memory it takes. The update itself is checked against the
// reference with every option and dtype in test_update.cpp.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.hpp"
#include "core.hpp"
#include "qrmsprop/qrmsprop.hpp"

using qref::Dt;

namespace {

std::vector<float> to_vector(const qrms::math::Map4 &m) { return std::vector<float>(m.v, m.v + 16); }

}  // namespace

TEST_CASE("4-bit maps: the element math's, the generator's and the reference's agree bit for bit", "[4bit]") {
  const std::vector<float> gen = qrms::dynamic_map(true, 4);
  REQUIRE(gen.size() == 16);
  CHECK_SAME(to_vector(qrms::math::momentum_map4()), gen);
  CHECK_SAME(qref::momentum_map4(), gen);
  CHECK_SAME(to_vector(qrms::math::square_map4()), qref::square_map4());
  // The square average's map has no zero; the momentum map has one, and 1.
  for (float v : qref::square_map4()) CHECK(v > 0.0f);
  CHECK(gen[7] == 0.0f);
  CHECK(gen[15] == 1.0f);
  // The 8-bit map is what it was (256 entries, SPEC 4).
  CHECK(qrms::dynamic_map(true).size() == 256);
  CHECK(qrms::dynamic_map(false, 8).size() == 256);
  CHECK_THROWS_AS(qrms::dynamic_map(true, 9), qrms::ValueError);
}

TEST_CASE("4-bit quantizer: nearest code, ties to the lower code, the sign rule", "[4bit]") {
  for (const std::vector<float> &map : {qref::square_map4(), qref::momentum_map4()}) {
    // Every map value, the midpoints and their float neighbours, and random values.
    std::vector<float> xs = {0.0f, -0.0f, 1e-30f, -1e-30f, 2.0f, -2.0f, std::numeric_limits<float>::infinity()};
    for (size_t c = 0; c < 16; ++c) {
      xs.push_back(map[c]);
      if (c + 1 < 16) {
        const float mid = (map[c] + map[c + 1]) / 2.0f;
        float x = std::nextafter(mid, -2.0f);
        for (int k = 0; k < 3; ++k, x = std::nextafter(x, 2.0f)) xs.push_back(x);
      }
    }
    std::mt19937 rng(4);
    std::uniform_real_distribution<float> u(-1.1f, 1.1f);
    for (int i = 0; i < 20000; ++i) xs.push_back(u(rng));
    qrms::math::Map4 m4;
    std::copy(map.begin(), map.end(), m4.v);
    const qrms::math::Coder4 coder = qrms::math::coder4(m4);
    // Each threshold is where the rule's code steps past k: the float below it
    // codes at most k, the threshold itself above k.
    for (int k = 0; k < 15; ++k) {
      const float t = coder.t[k];
      CAPTURE(k, t);
      CHECK(qref::nearest_code(map.data(), std::nextafter(t, -INFINITY), 16) <= k);
      CHECK(qref::nearest_code(map.data(), t, 16) > k);
      xs.push_back(t);
      xs.push_back(std::nextafter(t, -INFINITY));
    }
    for (float x : xs) {
      INFO("x = " << x);
      CHECK(int(qrms::math::quantize4(coder, x, 1.0f)) == qref::nearest_code(map.data(), x, 16));
      CHECK(int(qrms::math::quantize4(coder, -x, 1.0f)) == qref::nearest_code(map.data(), -x, 16));
      CHECK(qrms::math::quantize4_grouped(coder, x, 1.0f) == qrms::math::quantize4(coder, x, 1.0f));
      CHECK(qrms::math::quantize4_grouped(coder, -x, 1.0f) == qrms::math::quantize4(coder, -x, 1.0f));
    }
    CHECK(qrms::math::quantize4_grouped(coder, NAN, 1.0f) == qrms::math::quantize4(coder, NAN, 1.0f));
    CHECK(qrms::math::quantize4_grouped(coder, 0.5f, 0.0f) == qrms::math::quantize4(coder, 0.5f, 0.0f));
    CHECK(qrms::math::quantize4(coder, NAN, 1.0f) == qref::nearest_code(map.data(), NAN, 16));
    // A zero (or NaN) scale stores the code of the smallest non-negative value.
    CHECK(qrms::math::quantize4(coder, 0.5f, 0.0f) == (map[0] > 0.0f ? 0 : 7));
    CHECK(qrms::math::quantize4(coder, 0.5f, NAN) == (map[0] > 0.0f ? 0 : 7));
  }
  // The sign rule in the momentum map: a negative value never reads back as 0.
  const std::vector<float> mom = qref::momentum_map4();
  const qrms::math::Coder4 mc = qrms::math::coder4(qrms::math::momentum_map4());
  CHECK(mom[qrms::math::quantize4(mc, -1e-6f, 1.0f)] < 0.0f);
  CHECK(mom[qrms::math::quantize4(mc, -1e-45f, 1.0f)] < 0.0f);
  CHECK(mom[qrms::math::quantize4(mc, -0.0f, 1.0f)] == 0.0f);
}

TEST_CASE("4-bit state: two codes per byte, low nibble first, nothing written past the state", "[4bit]") {
  // The CPU backend on raw buffers with guard bytes behind every one.
  using qrms::core::StateKind;
  const int64_t n = GENERATE(int64_t(1), int64_t(127), int64_t(129), int64_t(255), int64_t(1001));
  INFO("n = " << n);
  const int64_t bytes = (n + 1) / 2, blocks = (n + 127) / 128;
  const uint8_t kGuard = 0xA5;
  std::vector<float> p(static_cast<size_t>(n)), g(static_cast<size_t>(n));
  std::mt19937 rng(static_cast<unsigned>(n));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float &x : p) x = normal(rng);
  std::vector<uint8_t> s(static_cast<size_t>(bytes) + 16, 0), b(static_cast<size_t>(bytes) + 16, 0);
  std::vector<float> sa(static_cast<size_t>(blocks) + 4, 0.0f), ba(static_cast<size_t>(blocks) + 4, 0.0f);
  std::fill(s.begin() + bytes, s.end(), kGuard);
  std::fill(b.begin() + bytes, b.end(), kGuard);
  const float fguard = -7.0f;
  std::fill(sa.begin() + blocks, sa.end(), fguard);
  std::fill(ba.begin() + blocks, ba.end(), fguard);

  auto backend = qrms::core::make_cpu_backend();
  qrms::core::TensorUpdate t;
  t.param = p.data();
  t.grad = g.data();
  t.n = n;
  t.state1 = s.data();
  t.state2 = b.data();
  t.scale1 = sa.data();
  t.scale2 = ba.data();
  t.hp = qrms::math::Hyper{1e-2f, 0.9f, 1e-8f, 0.0f, 0.9f, 0.0f, 0, 0};
  for (int k = 0; k < 3; ++k) {
    for (float &x : g) x = normal(rng);
    backend->update(StateKind::Blockwise4, qrms::Dtype::Float32, &t, 1, nullptr, qrms::core::StepControl{}, nullptr);
  }
  for (size_t i = static_cast<size_t>(bytes); i < s.size(); ++i) {
    CHECK(int(s[i]) == kGuard);
    CHECK(int(b[i]) == kGuard);
  }
  for (size_t i = static_cast<size_t>(blocks); i < sa.size(); ++i) {
    CHECK(sa[i] == fguard);
    CHECK(ba[i] == fguard);
  }
  if (n % 2 == 1) {  // the padding nibble is 0
    CHECK((s[static_cast<size_t>(bytes - 1)] >> 4) == 0);
    CHECK((b[static_cast<size_t>(bytes - 1)] >> 4) == 0);
  }
  // Element 2i in the low nibble, 2i + 1 in the high one: decoding that way
  // gives each block's absmax back at its largest element.
  const std::vector<float> map = qref::square_map4();
  for (int64_t blk = 0; blk < blocks; ++blk) {
    int top = -1;
    for (int64_t i = blk * 128; i < std::min(n, blk * 128 + 128); ++i)
      top = std::max(top, int((s[static_cast<size_t>(i / 2)] >> (4 * (i % 2))) & 15));
    CHECK(top == 15);  // the element at the absmax has code 15 (value 1)
    CHECK(sa[static_cast<size_t>(blk)] > 0.0f);
  }
}

TEST_CASE("4-bit codes: element 2i in the low nibble, 2i + 1 in the high one", "[4bit]") {
  // One step from zero state with |g| 1 at even elements and 1e-3 at odd
  // ones: s is 0.1 (the block's absmax, code 15) and 1e-7 (code 0), so every
  // byte of s is 0x0F; for an odd count the last one holds one code.
  const int64_t n = GENERATE(int64_t(256), int64_t(301));
  qrms::Args args;
  args.min_8bit_size = 0;
  qrms::RMSprop4bit opt(1e-3f, 0.9f, 1e-8f, 0.0f, 0.0f, false, args);
  std::vector<float> p(static_cast<size_t>(n), 0.0f), g(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) g[static_cast<size_t>(i)] = i % 2 == 0 ? 1.0f : -1e-3f;
  opt.add_param(p.data(), g.data(), qrms::Dtype::Float32, n);
  opt.step();
  const std::vector<uint8_t> blob = opt.save();
  const size_t codes = 32 + 96 + 8;  // header, record fields (format 3), the buffer's byte count (docs/state-format.md)
  REQUIRE(blob.size() > codes + static_cast<size_t>((n + 1) / 2));
  for (int64_t k = 0; k < (n + 1) / 2; ++k) {
    INFO("byte " << k);
    CHECK(int(blob[codes + static_cast<size_t>(k)]) == 0x0F);
  }
}

TEST_CASE("4-bit square average never reads back as 0 (the zero-point problem)", "[4bit]") {
  // One block holds one huge gradient and tiny ones: with a map that had a
  // zero, the tiny elements' square average would read back as 0 and their
  // next update would be g / eps. Here it reads back as at least absmax / 16.
  qrms::Args args;
  args.min_8bit_size = 0;
  const float eps = 1e-8f, lr = 1e-3f;
  qrms::RMSprop4bit opt(lr, 0.9f, eps, 0.0f, 0.0f, false, args);
  const int64_t n = 128;
  std::vector<float> p(n, 0.0f), g(n, 1e-4f);
  g[0] = 1e3f;
  opt.add_param(p.data(), g.data(), qrms::Dtype::Float32, n);
  opt.step();
  const std::vector<float> s = opt.read_state(0, QRMS_STATE_SQUARE_AVG);
  const float absmax = 0.1f * 1e6f;  // (1 - alpha) * g0^2
  for (int64_t i = 1; i < n; ++i) CHECK(s[static_cast<size_t>(i)] >= absmax / 16.0f * 0.999f);
  // The next step's update of a tiny element stays tiny: about
  // lr * g / sqrt(0.9 absmax / 16) = 1.3e-9; a zero would give lr * g / (3e-5 + eps) = 3e-3.
  std::vector<float> before = p;
  opt.step();
  for (int64_t i = 1; i < n; ++i)
    CHECK(std::fabs(p[static_cast<size_t>(i)] - before[static_cast<size_t>(i)]) < 1e-7f);
}

TEST_CASE("4-bit state takes half a byte per element plus one float per 128", "[4bit]") {
  const int64_t n = 5001;
  std::vector<float> p(n), g(n), p2(100), g2(100);
  qrms::RMSprop32bit plain;
  plain.add_param(p.data(), g.data(), qrms::Dtype::Float32, n);
  const int64_t overhead = plain.state_bytes() - 4 * n;
  const int64_t per_buffer = (n + 1) / 2 + 4 * ((n + 127) / 128);
  SECTION("without momentum") {
    qrms::RMSprop4bit o;
    o.add_param(p.data(), g.data(), qrms::Dtype::Float32, n);
    CHECK(o.state_bytes() == per_buffer + overhead);
    CHECK(o.state_bits(0) == 4);
    CHECK_FALSE(o.is_8bit(0));
  }
  SECTION("with momentum, plus a small 32-bit fallback tensor") {
    qrms::RMSprop4bit o(1e-2f, 0.99f, 1e-8f, 0.0f, 0.9f);
    o.add_param(p.data(), g.data(), qrms::Dtype::Float32, n);
    CHECK(o.state_bytes() == 2 * per_buffer + overhead);
    o.add_param(p2.data(), g2.data(), qrms::Dtype::Float32, 100);
    CHECK(o.state_bits(1) == 32);
    CHECK(o.state_bytes() == 2 * per_buffer + 2 * 4 * 100 + 2 * overhead);
  }
}
