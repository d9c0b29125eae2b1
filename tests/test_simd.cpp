// The CPU backend's baseline (SSE2) and AVX2 loops give the same bits for
// every state kind, dtype and option. (The rest of the suite runs with the
// loops the machine picks; ctest also runs the C ABI suite with
// QRMS_CPU_SIMD=baseline.)
#include <cmath>
#include <random>
#include <vector>

#include "check.hpp"
#include "core.hpp"
#include "qrmsprop/qrmsprop.hpp"
#include "quant_table.hpp"

namespace {

using namespace qrms;
using core::CpuSimd;
using core::StateKind;

struct Buffers {
  qref::Tensor param;
  std::vector<uint8_t> s, b;
  std::vector<float> s_scale, b_scale, unorm = std::vector<float>(2, 0.0f);
  int64_t step = 0;
};

// Three steps of one tensor with the given loops; everything the steps write.
// float16 bit patterns written over every 7th parameter and 11th gradient
// with `specials`: NaNs with payloads (quiet and signalling, both signs),
// infinities, zeros, subnormals, the largest finite half.
const uint16_t kHalfSpecials[] = {0x7e00, 0xfe01, 0x7d55, 0x7c01, 0xfd00, 0x7c00, 0xfc00, 0x0000, 0x8000,
                                  0x0001, 0x83ff, 0x0200, 0x7bff, 0xfbff, 0x0400, 0x3c00};

Buffers run(CpuSimd simd, StateKind kind, Dtype dtype, const math::Hyper &hp, int64_t n,
            const core::StepControl &ctl = {}, bool specials = false) {
  REQUIRE(core::set_cpu_simd(simd) == simd);
  const qref::Dt dt = static_cast<qref::Dt>(dtype);
  const bool is8 = kind != StateKind::Float32, mom = hp.momentum > 0.0f;
  std::mt19937 rng(12345);
  Buffers out;
  out.param = qref::Tensor(dt, n);
  qref::Tensor grad(dt, n);
  qtest::fill_normal(out.param, rng, 0.5f);
  qtest::fill_grad(grad, rng, 0.05f);  // with exact zeros, for skip_zeros
  if (specials) {
    REQUIRE(dtype == Dtype::Float16);
    uint16_t *p = static_cast<uint16_t *>(out.param.data()), *g = static_cast<uint16_t *>(grad.data());
    const size_t m = sizeof kHalfSpecials / sizeof kHalfSpecials[0];
    for (int64_t i = 0; i < n; i += 7) p[i] = kHalfSpecials[size_t(i / 7) % m];
    for (int64_t i = 0; i < n; i += 11) g[i] = kHalfSpecials[size_t(i / 11) % m];
  }
  const bool is4 = kind == StateKind::Blockwise4;  // two codes per byte, one absmax per 128
  const size_t state_bytes = is4 ? size_t(n + 1) / 2 : is8 ? size_t(n) : size_t(n) * 4;
  const size_t scales = kind == StateKind::Blockwise8 ? size_t(core::num_blocks(n)) : is4 ? size_t((n + 127) / 128) : 2;
  out.s.assign(state_bytes, 0);
  out.s_scale.assign(scales, 0.0f);
  if (mom) {
    out.b.assign(state_bytes, 0);
    out.b_scale.assign(scales, 0.0f);
  }
  const std::vector<float> qmap = dynamic_map(true);
  core::TensorUpdate t;
  t.param = out.param.data();
  t.grad = grad.data();
  t.n = n;
  t.state1 = out.s.data();
  t.state2 = mom ? out.b.data() : nullptr;
  t.scale1 = is8 ? out.s_scale.data() : nullptr;
  t.scale2 = is8 && mom ? out.b_scale.data() : nullptr;
  t.unorm = out.unorm.data();
  t.step = &out.step;
  t.hp = hp;
  auto backend = core::make_cpu_backend();
  for (int k = 0; k < 3; ++k) backend->update(kind, dtype, &t, 1, qmap.data(), ctl, nullptr);
  return out;
}

}  // namespace

TEST_CASE("baseline and AVX2 loops give the same bits", "[simd]") {
  if (core::set_cpu_simd(CpuSimd::Avx2) != CpuSimd::Avx2) {
    WARN("this CPU has no AVX2: only the baseline loops exist here, nothing to compare");
    core::set_cpu_simd(CpuSimd::Baseline);
    return;
  }
  const StateKind kind = GENERATE(StateKind::Float32, StateKind::Blockwise8, StateKind::Tensor8, StateKind::Blockwise4);
  const Dtype dtype = GENERATE(Dtype::Float32, Dtype::Float16, Dtype::BFloat16);
  // plain, momentum, skip_zeros + weight decay, max_unorm + momentum, stochastic rounding + skip_zeros
  const int option = GENERATE(0, 1, 2, 3, 4);
  math::Hyper hp{1e-3f, 0.99f, 1e-8f, 0.0f, 0.0f, 0.0f, 0, 0};
  if (option == 1 || option == 3) hp.momentum = 0.9f;
  core::StepControl ctl;
  if (option == 4) {
    ctl.stochastic_round = true;
    ctl.seed = 0x1234567890abcdefull;
    hp.stream = 3;
  }
  if (option == 2 || option == 4) {
    hp.skip_zeros = 1;
    hp.weight_decay = 0.01f;
  }
  if (option == 3) hp.max_unorm = 0.5f;
  const int64_t n = 70001;  // several chunks, a partial block and odd vector tails
  CAPTURE(int(kind), int(dtype), option);
  const Buffers base = run(CpuSimd::Baseline, kind, dtype, hp, n, ctl);
  const Buffers wide = run(CpuSimd::Avx2, kind, dtype, hp, n, ctl);
  CHECK(base.param.same_bits(wide.param));
  CHECK(qtest::first_difference(base.s, wide.s) == -1);
  CHECK(qtest::first_difference(base.b, wide.b) == -1);
  CHECK(qtest::first_difference(base.s_scale, wide.s_scale) == -1);
  CHECK(qtest::first_difference(base.b_scale, wide.b_scale) == -1);
  CHECK(base.step == 3);
  core::set_cpu_simd(CpuSimd::Avx2);
}

// The AVX2 loops convert float16 parameters with F16C: every half to float,
// and floats to half, give the bits of the portable to_float / to_half, NaNs
// included (a signalling NaN may come out of to_float quiet: every use of it
// is arithmetic, which quiets it anyway). Here 2^22 random bit patterns;
// every one of the 2^32 in test_quant_sweep.cpp.
TEST_CASE("F16C conversions give the portable bits for every half and a sample of floats", "[simd]") {
  if (core::set_cpu_simd(CpuSimd::Avx2) != CpuSimd::Avx2) {
    WARN("this CPU has no AVX2 and F16C: only the portable conversions exist here, nothing to compare");
    core::set_cpu_simd(CpuSimd::Baseline);
    return;
  }
  std::vector<math::half_t> h(65536);
  std::vector<float> f(65536);
  for (uint32_t i = 0; i < 65536; ++i) h[i].bits = uint16_t(i);
  core::cpu_halves_to_floats(h.data(), f.data(), 65536);
  int64_t bad = 0, first = -1;
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint32_t want = math::float_bits(math::to_float(h[i])), got = math::float_bits(f[i]);
    if (got != want && got != (want | 0x00400000u)) {
      if (first < 0) first = i;
      ++bad;
    }
  }
  CAPTURE(first);
  CHECK(bad == 0);
  std::mt19937 rng(7);
  std::vector<float> in(1 << 22);
  std::vector<math::half_t> out(in.size());
  for (float &x : in) x = math::bits_float(uint32_t(rng()));
  core::cpu_floats_to_halves(in.data(), out.data(), int64_t(in.size()));
  bad = 0;
  first = -1;
  for (size_t i = 0; i < in.size(); ++i)
    if (out[i].bits != math::to_half(in[i]).bits) {
      if (first < 0) first = int64_t(math::float_bits(in[i]));
      ++bad;
    }
  CAPTURE(first);
  CHECK(bad == 0);
}

// Parameters and gradients holding NaNs, infinities and subnormals take the
// same bits through the F16C loop as through the portable one.
TEST_CASE("float16 special values: baseline and AVX2 loops give the same bits", "[simd]") {
  if (core::set_cpu_simd(CpuSimd::Avx2) != CpuSimd::Avx2) {
    WARN("this CPU has no AVX2: only the baseline loops exist here, nothing to compare");
    core::set_cpu_simd(CpuSimd::Baseline);
    return;
  }
  const StateKind kind = GENERATE(StateKind::Float32, StateKind::Blockwise8);
  const bool momentum = GENERATE(false, true);
  math::Hyper hp{1e-3f, 0.99f, 1e-8f, 0.0f, 0.0f, 0.0f, 0, 0};
  if (momentum) hp.momentum = 0.9f;
  CAPTURE(int(kind), momentum);
  const Buffers base = run(CpuSimd::Baseline, kind, Dtype::Float16, hp, 70001, {}, true);
  const Buffers wide = run(CpuSimd::Avx2, kind, Dtype::Float16, hp, 70001, {}, true);
  CHECK(base.param.same_bits(wide.param));
  CHECK(qtest::first_difference(base.s, wide.s) == -1);
  CHECK(qtest::first_difference(base.b, wide.b) == -1);
  core::set_cpu_simd(CpuSimd::Avx2);
}

// The AVX2 coder of 8-bit state against the baseline loop and
// math::quantize_scaled, on both dynamic maps: a sample of [-1, 1], every
// threshold and map value +-2 ulps, and special values, under several
// scales (zero, NaN and infinite ones too). Every float in [-1, 1] is in
// test_quant_sweep.cpp's "[sweep]".
TEST_CASE("8-bit coder: baseline and AVX2 give the same codes", "[simd]") {
  if (core::set_cpu_simd(CpuSimd::Avx2) != CpuSimd::Avx2) {
    WARN("this CPU has no AVX2: only the baseline coder exists here, nothing to compare");
    core::set_cpu_simd(CpuSimd::Baseline);
    return;
  }
  const bool is_signed = GENERATE(true, false);
  // The library's map, and its entries moved by 9.5e-6 up or down (a coder
  // is built for entries within 1e-5 of the ideal ones): the thresholds move
  // about as far as the coder allows.
  const int moved = GENERATE(0, 1, -1);
  CAPTURE(is_signed, moved);
  std::vector<float> q = dynamic_map(is_signed);
  for (float &v : q) v *= 1.0f + float(moved) * 9.5e-6f;
  math::DynamicCoder d{};
  REQUIRE(core::build_dynamic_coder(q.data(), d));
  std::vector<float> x;
  auto around = [&](float c) {  // c and 2 floats either side, both signs
    for (int sign = 0; sign < 2; ++sign) {
      float v = sign ? -c : c;
      for (int k = 0; k < 2; ++k) v = std::nextafter(v, -INFINITY);
      for (int k = 0; k < 5; ++k, v = std::nextafter(v, INFINITY)) x.push_back(v);
    }
  };
  for (uint32_t u = 0; u <= 0x3f800000u; u += 4099) {
    x.push_back(math::bits_float(u));
    x.push_back(-math::bits_float(u));
  }
  for (const float t : d.up)
    if (t == t) around(t);
  for (const float v : q) around(v);
  for (const uint32_t u : {0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu, 0x00800000u, 0x3f800000u,
                           0xbf800000u, 0x40000000u, 0x7f7fffffu, 0xff7fffffu, 0x7f800000u, 0xff800000u,
                           0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xffa00005u, 0x7fffffffu})
    x.push_back(math::bits_float(u));
  if (x.size() % 8 == 0) x.push_back(1.0f);  // a length the vectors do not divide: the scalar tail too
  CAPTURE(x.size());
  for (const float a : {1.0f, 0.37f, 3.0f, 1e-30f, 1e-45f, 0.0f, -1.0f, INFINITY, NAN}) {
    CAPTURE(a);
    std::vector<uint8_t> base(x.size()), wide(x.size()), want(x.size());
    REQUIRE(core::set_cpu_simd(CpuSimd::Baseline) == CpuSimd::Baseline);
    core::cpu_encode(d, x.data(), a, base.data(), int64_t(x.size()));
    REQUIRE(core::set_cpu_simd(CpuSimd::Avx2) == CpuSimd::Avx2);
    core::cpu_encode(d, x.data(), a, wide.data(), int64_t(x.size()));
    for (size_t i = 0; i < x.size(); ++i) want[i] = math::quantize_scaled(d, x[i], a);
    CHECK(qtest::first_difference(want, base) == -1);
    const int64_t i = qtest::first_difference(want, wide);
    CAPTURE(i, i >= 0 ? x[size_t(i)] : 0.0f);
    CHECK(i == -1);
  }
  core::set_cpu_simd(CpuSimd::Avx2);
}
