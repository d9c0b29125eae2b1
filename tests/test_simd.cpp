// The CPU backend's baseline (SSE2) and AVX2 loops give the same bits for
// every state kind, dtype and option. (The rest of the suite runs with the
// loops the machine picks; ctest also runs the C ABI suite with
// QRMS_CPU_SIMD=baseline.)
#include <random>
#include <vector>

#include "check.hpp"
#include "core.hpp"
#include "qrmsprop/qrmsprop.hpp"

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
Buffers run(CpuSimd simd, StateKind kind, Dtype dtype, const math::Hyper &hp, int64_t n,
            const core::StepControl &ctl = {}) {
  REQUIRE(core::set_cpu_simd(simd) == simd);
  const qref::Dt dt = static_cast<qref::Dt>(dtype);
  const bool is8 = kind != StateKind::Float32, mom = hp.momentum > 0.0f;
  std::mt19937 rng(12345);
  Buffers out;
  out.param = qref::Tensor(dt, n);
  qref::Tensor grad(dt, n);
  qtest::fill_normal(out.param, rng, 0.5f);
  qtest::fill_grad(grad, rng, 0.05f);  // with exact zeros, for skip_zeros
  const size_t state_bytes = is8 ? size_t(n) : size_t(n) * 4;
  const size_t scales = kind == StateKind::Blockwise8 ? size_t(core::num_blocks(n)) : 2;
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
  const StateKind kind = GENERATE(StateKind::Float32, StateKind::Blockwise8, StateKind::Tensor8);
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
