// The dynamic map against its closed form (computed here in double), and
// block-wise quantization / dequantization through the C ABI.
#include <cmath>
#include <vector>

#include "capi_helpers.hpp"

using qref::Dt;

namespace {

// bitsandbytes' create_dynamic_map(signed, 7, 8), from its closed form: for
// exponent i = 0..6 the midpoints of linspace(0.1, 1, k + 1) with k = 2^i
// (signed, with negatives) or 2^(i+1) (unsigned), scaled by 10^(i-6);
// plus 0 and 1; sorted.
std::vector<double> closed_form(bool is_signed) {
  std::vector<double> v;
  for (int i = 0; i <= 6; ++i) {
    const int k = is_signed ? (1 << i) : (1 << (i + 1));
    for (int j = 0; j < k; ++j) {
      const double m = std::pow(10.0, i - 6) * (0.1 + 0.9 * (2.0 * j + 1.0) / (2.0 * k));
      v.push_back(m);
      if (is_signed) v.push_back(-m);
    }
  }
  v.push_back(0.0);
  v.push_back(1.0);
  std::sort(v.begin(), v.end());
  return v;
}

std::vector<float> map_of(int32_t is_signed) {
  std::vector<float> q(256, -42.0f);
  QRMS_REQUIRE_OK(qrms_dynamic_map(is_signed, q.data()));
  return q;
}

double float_ulp(double x) { return qref::ulp(Dt::F32, x); }

struct Quant {
  std::vector<uint8_t> codes;
  std::vector<float> absmax;
};

// Quantizes through the C ABI with sentinels after the outputs.
Quant quantize(const std::vector<float> &q, const std::vector<float> &in, int64_t bs) {
  const int64_t n = static_cast<int64_t>(in.size()), nb = (n + bs - 1) / bs;
  Quant r;
  r.codes.assign(static_cast<size_t>(n) + 16, 0xEE);
  r.absmax.assign(static_cast<size_t>(nb) + 4, -7.0f);
  QRMS_REQUIRE_OK(qrms_quantize_blockwise(QRMS_DEVICE_CPU, q.data(), in.data(), r.codes.data(), r.absmax.data(), n,
                                          bs, nullptr));
  for (size_t i = static_cast<size_t>(n); i < r.codes.size(); ++i) CHECK(r.codes[i] == 0xEE);
  for (size_t i = static_cast<size_t>(nb); i < r.absmax.size(); ++i) CHECK(r.absmax[i] == -7.0f);
  r.codes.resize(static_cast<size_t>(n));
  r.absmax.resize(static_cast<size_t>(nb));
  return r;
}

// Checks codes and absmax of `in` against the reference quantizer.
void check_quantized(const std::vector<float> &q, const std::vector<float> &in, int64_t bs, const Quant &got) {
  const qref::Quantized ref = qref::quantize(q.data(), in, bs);
  REQUIRE(got.absmax.size() == ref.absmax.size());
  size_t bad_absmax = 0, bad_codes = 0, first = 0;
  for (size_t b = 0; b < ref.absmax.size(); ++b) bad_absmax += got.absmax[b] == ref.absmax[b] ? 0 : 1;
  for (size_t i = 0; i < in.size(); ++i) {
    if (got.codes[i] == ref.codes[i]) continue;
    // Only a value within float rounding of the midpoint of two codes may
    // take the other one.
    const float a = ref.absmax[i / static_cast<size_t>(bs)];
    const std::vector<int> ok = qref::acceptable_codes(q.data(), in[i] / a, 1e-6);
    if (std::find(ok.begin(), ok.end(), got.codes[i]) != ok.end()) continue;
    if (bad_codes++ == 0) first = i;
  }
  INFO("n " << in.size() << ", blocksize " << bs << "; first bad code at " << first << ": value " << in[first]
            << " got code " << int(got.codes[first]) << ", expected " << int(ref.codes[first]));
  CHECK(bad_absmax == 0);
  CHECK(bad_codes == 0);
}

}  // namespace

TEST_CASE("the signed dynamic map matches the closed form", "[quant][map]") {
  const std::vector<float> q = map_of(1);
  const std::vector<double> ref = closed_form(true);
  REQUIRE(ref.size() == 256);
  for (size_t i = 0; i < 256; ++i) {
    INFO("entry " << i << ": " << q[i] << " vs " << ref[i]);
    CHECK(std::fabs(static_cast<double>(q[i]) - ref[i]) <= 3.0 * float_ulp(ref[i]));
    if (i > 0) CHECK(q[i] > q[i - 1]);
  }
  // Hand-written anchors.
  CHECK(q[127] == 0.0f);
  CHECK(q[255] == 1.0f);
  CHECK(std::fabs(q[0] - (-0.99296875)) <= 2.0 * float_ulp(0.99296875));    // -(0.1 + 0.9 * 127/128)
  CHECK(std::fabs(q[254] - 0.99296875) <= 2.0 * float_ulp(0.99296875));
  CHECK(std::fabs(q[128] - 5.5e-7) <= 2.0 * float_ulp(5.5e-7));            // 1e-6 * (0.1 + 0.9/2)
  CHECK(std::fabs(q[126] - (-5.5e-7)) <= 2.0 * float_ulp(5.5e-7));
  CHECK(std::fabs(q[129] - 3.25e-6) <= 2.0 * float_ulp(3.25e-6));          // 1e-5 * (0.1 + 0.9/4)
  CHECK(std::fabs(q[190] - 0.09859375) <= 2.0 * float_ulp(0.09859375));    // 0.1 * (0.1 + 0.9*63/64)
  CHECK(std::fabs(q[191] - 0.10703125) <= 2.0 * float_ulp(0.10703125));    // 0.1 + 0.9/128
  // Symmetric: the negative half is the positive half negated.
  for (int k = 0; k < 127; ++k) CHECK(q[static_cast<size_t>(k)] == -q[static_cast<size_t>(254 - k)]);
}

TEST_CASE("the unsigned dynamic map matches the closed form", "[quant][map]") {
  const std::vector<float> q = map_of(0);
  const std::vector<double> ref = closed_form(false);
  REQUIRE(ref.size() == 256);
  for (size_t i = 0; i < 256; ++i) {
    INFO("entry " << i << ": " << q[i] << " vs " << ref[i]);
    CHECK(std::fabs(static_cast<double>(q[i]) - ref[i]) <= 3.0 * float_ulp(ref[i]));
    if (i > 0) CHECK(q[i] > q[i - 1]);
  }
  CHECK(q[0] == 0.0f);
  CHECK(q[255] == 1.0f);
  CHECK(std::fabs(q[1] - 3.25e-7) <= 2.0 * float_ulp(3.25e-7));            // 1e-6 * (0.1 + 0.9/4)
  CHECK(std::fabs(q[254] - 0.996484375) <= 2.0 * float_ulp(0.996484375));  // 0.1 + 0.9 * 255/256
  CHECK(std::fabs(q[2] - 7.75e-7) <= 2.0 * float_ulp(7.75e-7));            // 1e-6 * (0.1 + 0.9*3/4)
}

TEST_CASE("quantize_blockwise and dequantize_blockwise match the reference", "[quant]") {
  const std::vector<float> q = map_of(1);
  const int64_t n = GENERATE(int64_t(1), int64_t(100), int64_t(256), int64_t(257), int64_t(1000), int64_t(4097),
                             int64_t(20000));
  const int64_t bs = GENERATE(int64_t(1), int64_t(3), int64_t(64), int64_t(256), int64_t(1000), int64_t(4096));
  std::mt19937 rng(static_cast<uint32_t>(n * 31 + bs));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> kind(0, 19);
  std::vector<float> in(static_cast<size_t>(n));
  for (float &x : in) {
    const int k = kind(rng);
    // Mostly normal values; some exact zeros, some tiny ones of either sign
    // (nearest code 0.0, where the sign rule applies), some large.
    x = k == 0 ? 0.0f : k == 1 ? normal(rng) * 1e-9f : k == 2 ? normal(rng) * 1e4f : normal(rng);
  }
  const Quant got = quantize(q, in, bs);
  check_quantized(q, in, bs, got);

  std::vector<float> out(static_cast<size_t>(n) + 8, 99.0f);
  QRMS_REQUIRE_OK(qrms_dequantize_blockwise(QRMS_DEVICE_CPU, q.data(), got.codes.data(), got.absmax.data(),
                                            out.data(), n, bs, nullptr));
  size_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const size_t k = static_cast<size_t>(i);
    bad += out[k] == q[got.codes[k]] * got.absmax[static_cast<size_t>(i / bs)] ? 0 : 1;
  }
  CHECK(bad == 0);
  for (size_t i = static_cast<size_t>(n); i < out.size(); ++i) CHECK(out[i] == 99.0f);
}

TEST_CASE("quantization: ties, the sign rule, zero blocks, partial blocks", "[quant]") {
  const std::vector<float> q = map_of(1);
  SECTION("exact ties take the lower code") {
    std::vector<float> in{1.0f};  // absmax 1: values are quantized as they are
    std::vector<uint8_t> lower;
    for (int c = 0; c < 255; ++c) {
      const double mid = (static_cast<double>(q[c]) + static_cast<double>(q[c + 1])) / 2.0;
      const float m = static_cast<float>(mid);
      if (static_cast<double>(m) != mid || m - q[c] != q[c + 1] - m) continue;  // not a tie in float
      if (m > 0.0f && q[c] < 0.0f) continue;
      in.push_back(m);
      lower.push_back(static_cast<uint8_t>(c));
    }
    INFO(lower.size() << " exact midpoints");
    REQUIRE(lower.size() >= 20);
    const Quant got = quantize(q, in, static_cast<int64_t>(in.size()));
    CHECK(got.absmax[0] == 1.0f);
    CHECK(got.codes[0] == 255);
    for (size_t i = 0; i < lower.size(); ++i) {
      INFO("midpoint " << in[i + 1] << " between codes " << int(lower[i]) << " and " << int(lower[i]) + 1);
      CHECK(got.codes[i + 1] == lower[i]);
    }
  }
  SECTION("a negative value whose nearest code is 0.0 takes the next lower code") {
    const std::vector<float> in{1.0f, -1e-9f, 1e-9f, -1e-30f, 0.0f, -2e-7f, 2e-7f, -1.0f};
    const Quant got = quantize(q, in, 8);
    CHECK(got.codes[0] == 255);
    CHECK(got.codes[1] == 126);
    CHECK(got.codes[2] == 127);
    CHECK(got.codes[3] == 126);
    CHECK(got.codes[4] == 127);
    CHECK(got.codes[5] == 126);
    CHECK(got.codes[6] == 127);
    CHECK(got.codes[7] == 0);  // -1 is nearest to the most negative code
  }
  SECTION("a zero block stores the code of 0.0 and absmax 0") {
    std::vector<float> in(600, 0.0f);
    for (size_t i = 0; i < 256; ++i) in[i] = static_cast<float>(i) - 100.0f;  // block 0 nonzero
    const Quant got = quantize(q, in, 256);
    CHECK(got.absmax[0] == 155.0f);
    CHECK(got.absmax[1] == 0.0f);
    CHECK(got.absmax[2] == 0.0f);
    for (size_t i = 256; i < 600; ++i) CHECK(got.codes[i] == 127);
    std::vector<float> out(600, 1.0f);
    QRMS_REQUIRE_OK(qrms_dequantize_blockwise(QRMS_DEVICE_CPU, q.data(), got.codes.data(), got.absmax.data(),
                                              out.data(), 600, 256, nullptr));
    for (size_t i = 256; i < 600; ++i) CHECK(out[i] == 0.0f);
    CHECK(out[255] == 155.0f);
  }
  SECTION("the last partial block has its own absmax") {
    std::vector<float> in(1000);
    for (size_t i = 0; i < in.size(); ++i) in[i] = i < 768 ? 50.0f + static_cast<float>(i % 7) : 0.5f;
    in[999] = -2.0f;
    const Quant got = quantize(q, in, 256);
    REQUIRE(got.absmax.size() == 4);
    CHECK(got.absmax[3] == 2.0f);
    CHECK(got.codes[999] == 0);
    check_quantized(q, in, 256, got);
  }
  SECTION("the unsigned map quantizes non-negative values") {
    const std::vector<float> u = map_of(0);
    std::vector<float> in(700);
    std::mt19937 rng(2);
    std::exponential_distribution<float> e(1.0f);
    for (float &x : in) x = e(rng);
    in[5] = 0.0f;
    const Quant got = quantize(u, in, 256);
    check_quantized(u, in, 256, got);
    CHECK(got.codes[5] == 0);
    std::vector<float> zeros(300, 0.0f);
    const Quant z = quantize(u, zeros, 256);
    for (uint8_t c : z.codes) CHECK(c == 0);  // the unsigned map's 0.0 is code 0
  }
}

TEST_CASE("quantization gives the same codes for any thread count", "[quant][threads]") {
  const std::vector<float> q = map_of(1);
  std::vector<float> in(300000);
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float &x : in) x = normal(rng);
  QRMS_REQUIRE_OK(qrms_set_num_threads(1));
  const Quant one = quantize(q, in, 256);
  QRMS_REQUIRE_OK(qrms_set_num_threads(2));
  const Quant two = quantize(q, in, 256);
  QRMS_REQUIRE_OK(qrms_set_num_threads(0));
  CHECK_SAME(one.codes, two.codes);
  CHECK_SAME(one.absmax, two.absmax);
  check_quantized(q, in, 256, two);
}

TEST_CASE("quantization argument errors", "[quant]") {
  const std::vector<float> q = map_of(1);
  std::vector<float> in(10, 1.0f), absmax(4), out(10);
  std::vector<uint8_t> codes(10);
  constexpr qrms_status_t INV = QRMS_ERROR_INVALID_ARGUMENT;
  QRMS_CHECK_FAILS(qrms_quantize_blockwise(QRMS_DEVICE_CPU, nullptr, in.data(), codes.data(), absmax.data(), 10, 4,
                                           nullptr),
                   INV, "NULL");
  QRMS_CHECK_FAILS(qrms_quantize_blockwise(QRMS_DEVICE_CPU, q.data(), nullptr, codes.data(), absmax.data(), 10, 4,
                                           nullptr),
                   INV, "NULL");
  QRMS_CHECK_FAILS(qrms_quantize_blockwise(QRMS_DEVICE_CPU, q.data(), in.data(), nullptr, absmax.data(), 10, 4,
                                           nullptr),
                   INV, "NULL");
  QRMS_CHECK_FAILS(qrms_quantize_blockwise(QRMS_DEVICE_CPU, q.data(), in.data(), codes.data(), nullptr, 10, 4,
                                           nullptr),
                   INV, "NULL");
  QRMS_CHECK_FAILS(qrms_quantize_blockwise(QRMS_DEVICE_CPU, q.data(), in.data(), codes.data(), absmax.data(), 10, 0,
                                           nullptr),
                   INV, "blocksize");
  QRMS_CHECK_FAILS(qrms_quantize_blockwise(QRMS_DEVICE_CPU, q.data(), in.data(), codes.data(), absmax.data(), 10,
                                           -256, nullptr),
                   INV, "blocksize");
  QRMS_CHECK_FAILS(qrms_quantize_blockwise(QRMS_DEVICE_CPU, q.data(), in.data(), codes.data(), absmax.data(), -1, 4,
                                           nullptr),
                   INV, "n ");
  QRMS_CHECK_FAILS(qrms_quantize_blockwise(7, q.data(), in.data(), codes.data(), absmax.data(), 10, 4, nullptr), INV,
                   "device");
  QRMS_CHECK_FAILS(qrms_dequantize_blockwise(QRMS_DEVICE_CPU, q.data(), codes.data(), absmax.data(), nullptr, 10, 4,
                                             nullptr),
                   INV, "NULL");
  QRMS_CHECK_FAILS(qrms_dequantize_blockwise(QRMS_DEVICE_CPU, q.data(), codes.data(), absmax.data(), out.data(), 10,
                                             0, nullptr),
                   INV, "blocksize");
  QRMS_CHECK_FAILS(qrms_dequantize_blockwise(QRMS_DEVICE_CPU, q.data(), codes.data(), absmax.data(), out.data(), -5,
                                             4, nullptr),
                   INV, "n ");
}
