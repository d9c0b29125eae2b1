// Every variant x dtype x option through the C++ classes on Device::CUDA and
// on Device::CPU from the same inputs, compared after several steps.
//
// Without percentile clipping and max_unorm both backends run the same
// float32 element math in the same order, so params and state must match bit
// for bit. Clipping and max_unorm add tensor-wide sums whose order differs
// (the GPU adds block partials atomically), so those cases allow float
// tolerance and, for 8-bit state, a tiny fraction of codes one step apart.
#include "gpu_util.hpp"

using namespace gputest;
using qrms::Dtype;

namespace {

enum class Variant { Bits32, Blockwise8, Tensor8, Blockwise4 };
enum class Option { None, Momentum, WeightDecay, SkipZeros, Clipping, MaxUnorm, All, Stochastic, UnsignedMap };

const char *variant_name(Variant v) {
  switch (v) {
    case Variant::Bits32:
      return "32-bit";
    case Variant::Blockwise8:
      return "8-bit block-wise";
    case Variant::Tensor8:
      return "8-bit per-tensor";
    case Variant::Blockwise4:
      return "4-bit";
  }
  return "?";
}

const char *option_name(Option o) {
  switch (o) {
    case Option::None:
      return "plain";
    case Option::Momentum:
      return "momentum";
    case Option::WeightDecay:
      return "weight_decay";
    case Option::SkipZeros:
      return "skip_zeros";
    case Option::Clipping:
      return "percentile_clipping";
    case Option::MaxUnorm:
      return "max_unorm";
    case Option::All:
      return "all options";
    case Option::Stochastic:
      return "stochastic rounding + momentum";
    case Option::UnsignedMap:
      return "unsigned state map + momentum + skip_zeros";
  }
  return "?";
}

bool is_exact(Option o) {
  return o != Option::Clipping && o != Option::MaxUnorm && o != Option::All;
}

std::unique_ptr<qrms::Optimizer1State> make_opt(Variant v, Option o, qrms::Device dev) {
  qrms::Args args;
  args.block_wise = v != Variant::Tensor8;
  const float momentum = (o == Option::Momentum || o == Option::All || o == Option::UnsignedMap) ? 0.9f : 0.0f;
  const float wd = (o == Option::WeightDecay || o == Option::All) ? 0.01f : 0.0f;
  if (o == Option::SkipZeros || o == Option::All || o == Option::UnsignedMap) args.skip_zeros = true;
  if (o == Option::UnsignedMap) args.state_map = qrms::StateMap::Unsigned;
  if (o == Option::Clipping || o == Option::All) args.percentile_clipping = 50;
  if (o == Option::MaxUnorm || o == Option::All) args.max_unorm = 1.0f;
  const int bits = v == Variant::Bits32 ? 32 : v == Variant::Blockwise4 ? 4 : 8;
  if (o == Option::Stochastic) {  // same random bits on both backends: exact
    qrms::Config c;
    c.optim_bits = bits;
    c.args = args;
    c.momentum = 0.9f;
    c.stochastic_rounding = true;
    c.seed = 2026;
    return std::make_unique<qrms::Optimizer1State>(c, dev, 0);
  }
  return std::make_unique<qrms::RMSprop>(1e-2f, 0.99f, 1e-8f, wd, momentum, false, bits, args, dev, 0);
}

struct Case {
  Variant variant;
  Dtype dtype;
  Option option;
  std::vector<int64_t> sizes;
  int steps;
};

// One tensor on both sides. The GPU copy of tensor k is offset by one element
// when k is odd, so the scalar (unaligned) path runs too.
struct Tensor {
  int64_t n = 0;
  int64_t offset = 0;
  std::vector<uint8_t> host_param, host_grad;
  DevBuf dev_param, dev_grad;
};

void run_case(const Case &c) {
  CAPTURE(variant_name(c.variant), dtype_name(c.dtype), option_name(c.option));
  const size_t es = dtype_size(c.dtype);
  auto cpu = make_opt(c.variant, c.option, qrms::Device::CPU);
  auto gpu = make_opt(c.variant, c.option, qrms::Device::CUDA);

  std::vector<Tensor> ts(c.sizes.size());
  for (size_t k = 0; k < ts.size(); ++k) {
    Tensor &t = ts[k];
    t.n = c.sizes[k];
    t.offset = k % 2 == 1 ? 1 : 0;
    t.host_param = random_tensor(c.dtype, t.n, 1000u + uint32_t(k), 1.0f);
    t.host_grad.assign(t.host_param.size(), 0);
    t.dev_param = DevBuf((size_t(t.n) + 8) * es);
    t.dev_grad = DevBuf((size_t(t.n) + 8) * es);
    CUDA_REQUIRE(cudaMemcpy(t.dev_param.bytes() + t.offset * es, t.host_param.data(), t.host_param.size(),
                            cudaMemcpyHostToDevice));
    cpu->add_param(t.host_param.data(), t.host_grad.data(), c.dtype, t.n);
    gpu->add_param(t.dev_param.bytes() + t.offset * es, t.dev_grad.bytes() + t.offset * es, c.dtype, t.n);
  }

  // Growing gradient scales make percentile clipping (50th percentile) bite.
  const float scales[] = {1.0f, 3.0f, 0.5f, 10.0f, 2.0f, 1.0f, 4.0f, 0.25f};
  for (int s = 0; s < c.steps; ++s) {
    for (size_t k = 0; k < ts.size(); ++k) {
      Tensor &t = ts[k];
      // Copy into the registered buffer: the CPU optimizer holds its address.
      const std::vector<uint8_t> g = random_tensor(c.dtype, t.n, 77u * uint32_t(s) + uint32_t(k), scales[s % 8], 0.1);
      std::copy(g.begin(), g.end(), t.host_grad.begin());
      // a run of zero gradients: with skip_zeros whole blocks stay untouched
      for (size_t i = 0; i < std::min<size_t>(300 * es, t.host_grad.size()); ++i) t.host_grad[i] = 0;
      CUDA_REQUIRE(cudaMemcpy(t.dev_grad.bytes() + t.offset * es, t.host_grad.data(), t.host_grad.size(),
                              cudaMemcpyHostToDevice));
    }
    cpu->step();
    gpu->step(nullptr);
    CUDA_REQUIRE(cudaGetLastError());
  }
  CUDA_REQUIRE(cudaDeviceSynchronize());

  const bool exact = is_exact(c.option);
  for (size_t k = 0; k < ts.size(); ++k) {
    Tensor &t = ts[k];
    CAPTURE(k, t.n, gpu->is_8bit(int64_t(k)));
    std::vector<uint8_t> back(t.host_param.size());
    CUDA_REQUIRE(cudaMemcpy(back.data(), t.dev_param.bytes() + t.offset * es, back.size(), cudaMemcpyDeviceToHost));
    const Diff dp = compare(
        t.n, exact, [&](int64_t i) { return get_elem(c.dtype, t.host_param.data(), i); },
        [&](int64_t i) { return get_elem(c.dtype, back.data(), i); });
    INFO("params: " << dp.str());
    if (exact) {
      CHECK(dp.mismatches == 0);
    } else {
      CHECK(dp.fraction() <= 0.01);
      CHECK(dp.max_abs_diff <= 0.02);
    }
    CHECK(gpu->get_step(int64_t(k)) == cpu->get_step(int64_t(k)));

    const bool mom = c.option == Option::Momentum || c.option == Option::All || c.option == Option::Stochastic ||
                     c.option == Option::UnsignedMap;
    for (int which = 0; which < (mom ? 2 : 1); ++which) {
      CAPTURE(which);
      const std::vector<float> a = cpu->read_state(int64_t(k), which);
      const std::vector<float> b = gpu->read_state(int64_t(k), which);
      REQUIRE(a.size() == b.size());
      const Diff ds = compare(
          t.n, exact, [&](int64_t i) { return a[size_t(i)]; }, [&](int64_t i) { return b[size_t(i)]; });
      INFO("state: " << ds.str());
      if (exact) {
        CHECK(ds.mismatches == 0);
      } else {
        // 8-bit: a code one step away is at most a few percent of the scale;
        // 4-bit: up to a quarter of it (the momentum map's widest step).
        CHECK(ds.fraction() <= 0.01);
        CHECK(ds.max_abs_diff <= (c.variant == Variant::Blockwise4 ? 0.25 : 0.05) * ds.max_abs + 1e-30);
      }
    }
  }
}

// Sizes: below min_8bit_size (stays 32-bit in 8-bit mode: a second group),
// exactly 4096, a partial last block, several chunks with a partial one.
const std::vector<int64_t> kSizes = {300, 4096, 5000, 70001, 262144 + 8};

}  // namespace

TEST_CASE("GPU matches CPU: every variant x dtype x option", "[gpu][matrix]") {
  const Variant v = GENERATE(Variant::Bits32, Variant::Blockwise8, Variant::Tensor8, Variant::Blockwise4);
  const Dtype d = GENERATE(Dtype::Float32, Dtype::Float16, Dtype::BFloat16);
  const Option o = GENERATE(Option::None, Option::Momentum, Option::WeightDecay, Option::SkipZeros, Option::Clipping,
                            Option::MaxUnorm, Option::All, Option::Stochastic, Option::UnsignedMap);
  run_case(Case{v, d, o, kSizes, 5});
}

TEST_CASE("GPU matches CPU: small subset for the sanitizers", "[gpu][sanitize]") {
  const Variant v = GENERATE(Variant::Bits32, Variant::Blockwise8, Variant::Tensor8, Variant::Blockwise4);
  const Option o = GENERATE(Option::Momentum, Option::All, Option::Stochastic, Option::UnsignedMap);
  run_case(Case{v, Dtype::BFloat16, o, {300, 4100, 9000}, 3});
}

TEST_CASE("GPU matches CPU: mixed dtypes and configs in one optimizer", "[gpu]") {
  // One optimizer, every (state kind, dtype) group at once, per-parameter
  // configs: the class layer makes one backend call per group.
  qrms::Args args;
  auto cpu = std::make_unique<qrms::RMSprop8bit>(1e-2f, 0.95f, 1e-8f, 0.0f, 0.5f, false, args, qrms::Device::CPU, 0);
  auto gpu = std::make_unique<qrms::RMSprop8bit>(1e-2f, 0.95f, 1e-8f, 0.0f, 0.5f, false, args, qrms::Device::CUDA, 0);
  enum Kind { kBlockwise8, kTensor8, kBits4 };
  struct P {
    Dtype d;
    int64_t n;
    Kind kind;
    std::vector<uint8_t> hp, hg;
    DevBuf dp, dg;
  };
  std::vector<P> ps;
  for (Dtype d : {Dtype::Float32, Dtype::Float16, Dtype::BFloat16})
    for (int64_t n : {1000, 20000})
      for (Kind kind : {kBlockwise8, kTensor8, kBits4})
        ps.push_back(P{d, n + (kind == kTensor8 ? 3 : kind == kBits4 ? 5 : 0), kind, {}, {}, DevBuf(), DevBuf()});
  for (size_t k = 0; k < ps.size(); ++k) {
    P &p = ps[k];
    const size_t bytes = size_t(p.n) * dtype_size(p.d);
    p.hp = random_tensor(p.d, p.n, 5u + uint32_t(k), 1.0f);
    p.hg = random_tensor(p.d, p.n, 50u + uint32_t(k), 1.0f, 0.05);
    p.dp = DevBuf(bytes);
    p.dg = DevBuf(bytes);
    CUDA_REQUIRE(cudaMemcpy(p.dp.get(), p.hp.data(), bytes, cudaMemcpyHostToDevice));
    CUDA_REQUIRE(cudaMemcpy(p.dg.get(), p.hg.data(), bytes, cudaMemcpyHostToDevice));
    const int64_t ic = cpu->add_param(p.hp.data(), p.hg.data(), p.d, p.n);
    const int64_t ig = gpu->add_param(p.dp.get(), p.dg.get(), p.d, p.n);
    if (p.kind == kTensor8 || (p.kind == kBlockwise8 && p.n > 10000)) {
      qrms::Config cfg = cpu->config();
      if (p.kind == kTensor8) {
        cfg.args.block_wise = false;
        cfg.args.skip_zeros = true;
        cfg.weight_decay = 0.02f;
      }
      if (p.n > 10000) cfg.args.state_map = qrms::StateMap::Unsigned;  // groups of their own
      cpu->set_param_config(ic, cfg);
      gpu->set_param_config(ig, cfg);
    }
    if (p.kind == kBits4) {
      qrms::Config cfg = cpu->config();
      cfg.optim_bits = 4;
      cfg.weight_decay = 0.01f;
      cpu->set_param_config(ic, cfg);
      gpu->set_param_config(ig, cfg);
    }
  }
  for (int s = 0; s < 4; ++s) {
    cpu->step();
    gpu->step(nullptr);
  }
  CUDA_REQUIRE(cudaDeviceSynchronize());
  for (size_t k = 0; k < ps.size(); ++k) {
    P &p = ps[k];
    CAPTURE(k, dtype_name(p.d), p.n, int(p.kind));
    std::vector<uint8_t> back(p.hp.size());
    CUDA_REQUIRE(cudaMemcpy(back.data(), p.dp.get(), back.size(), cudaMemcpyDeviceToHost));
    CHECK(back == p.hp);
    for (int which = 0; which < 2; ++which) {
      const std::vector<float> a = cpu->read_state(int64_t(k), which);
      const std::vector<float> b = gpu->read_state(int64_t(k), which);
      const Diff ds = compare(
          p.n, true, [&](int64_t i) { return a[size_t(i)]; }, [&](int64_t i) { return b[size_t(i)]; });
      INFO("state " << which << ": " << ds.str());
      CHECK(ds.mismatches == 0);
    }
  }
}

// Loss scaling as a mixed-precision loop uses it: every gradient times the
// unscale factor (a device float the caller changes between steps), and
// skip_nonfinite skipping a whole step when a scaled gradient holds inf or
// NaN, reported through found_inf. Same inputs on both backends: the found
// flags, the step counters and the params (bit for bit) must agree.
TEST_CASE("GPU matches CPU: grad unscale factor, skip_nonfinite and found_inf", "[gpu][sanitize]") {
  const int bits = GENERATE(32, 8);
  const Dtype d = GENERATE(Dtype::Float32, Dtype::BFloat16);
  CAPTURE(bits, dtype_name(d));
  qrms::Config cfg;
  cfg.optim_bits = bits;
  cfg.momentum = 0.9f;
  cfg.skip_nonfinite = true;
  qrms::Optimizer1State cpu(cfg, qrms::Device::CPU, 0), gpu(cfg, qrms::Device::CUDA, 0);
  const std::vector<int64_t> sizes{5000, 300, 70001};
  std::vector<std::vector<uint8_t>> hp, hg;
  std::vector<DevBuf> dp, dg;
  for (size_t k = 0; k < sizes.size(); ++k) {
    hp.push_back(random_tensor(d, sizes[k], 40u + uint32_t(k), 1.0f));
    hg.emplace_back(hp.back().size(), 0);
    dp.emplace_back(hp.back().size());
    dg.emplace_back(hp.back().size());
    CUDA_REQUIRE(cudaMemcpy(dp.back().get(), hp.back().data(), hp.back().size(), cudaMemcpyHostToDevice));
    cpu.add_param(hp.back().data(), hg.back().data(), d, sizes[k]);
    gpu.add_param(dp.back().get(), dg.back().get(), d, sizes[k]);
  }
  float host_unscale = 1.0f;
  DevBuf dev_unscale(sizeof(float));
  cpu.set_grad_unscale(&host_unscale);
  gpu.set_grad_unscale(dev_unscale.get<float>());

  // Per step: the unscale factor and which gradient element turns bad.
  struct S {
    float unscale;
    float bad;     // 0: none
    size_t where;  // tensor holding it
  };
  const float big = 3e38f;  // finite in both dtypes
  const std::vector<S> plan = {{0.5f, 0.0f, 0},      {0.25f, INFINITY, 1}, {1.0f, std::nanf(""), 2},
                               {2.0f, 0.0f, 0},      {1e-3f, -INFINITY, 0}, {4.0f, big, 1},  // finite, overflows * 4
                               {0.125f, 0.0f, 0}};
  int64_t taken = 0;
  for (size_t s = 0; s < plan.size(); ++s) {
    CAPTURE(s, plan[s].unscale, plan[s].bad);
    for (size_t k = 0; k < sizes.size(); ++k) {
      // Into the registered buffer: the CPU optimizer holds its address.
      const std::vector<uint8_t> g = random_tensor(d, sizes[k], 700u + 13u * uint32_t(s) + uint32_t(k), 2.0f, 0.05);
      std::copy(g.begin(), g.end(), hg[k].begin());
      if (plan[s].bad != 0.0f && plan[s].where == k) set_elem(d, hg[k].data(), sizes[k] / 3, plan[s].bad);
      CUDA_REQUIRE(cudaMemcpy(dg[k].get(), hg[k].data(), hg[k].size(), cudaMemcpyHostToDevice));
    }
    host_unscale = plan[s].unscale;
    CUDA_REQUIRE(cudaMemcpy(dev_unscale.get(), &host_unscale, sizeof(float), cudaMemcpyHostToDevice));
    cpu.step();
    gpu.step(nullptr);
    const bool expect_skip = plan[s].bad != 0.0f && !std::isfinite(plan[s].bad * plan[s].unscale);
    taken += expect_skip ? 0 : 1;
    CHECK(cpu.read_found_inf() == expect_skip);
    CHECK(gpu.read_found_inf() == expect_skip);
    for (size_t k = 0; k < sizes.size(); ++k) {
      CAPTURE(k);
      CHECK(cpu.get_step(int64_t(k)) == taken);
      CHECK(gpu.get_step(int64_t(k)) == taken);
    }
  }
  CUDA_REQUIRE(cudaDeviceSynchronize());
  for (size_t k = 0; k < sizes.size(); ++k) {
    CAPTURE(k, sizes[k]);
    std::vector<uint8_t> back(hp[k].size());
    CUDA_REQUIRE(cudaMemcpy(back.data(), dp[k].get(), back.size(), cudaMemcpyDeviceToHost));
    const Diff dd = compare(
        sizes[k], true, [&](int64_t i) { return get_elem(d, hp[k].data(), i); },
        [&](int64_t i) { return get_elem(d, back.data(), i); });
    INFO("params: " << dd.str());
    CHECK(dd.mismatches == 0);
    const std::vector<float> a = cpu.read_state(int64_t(k), QRMS_STATE_SQUARE_AVG);
    const std::vector<float> b = gpu.read_state(int64_t(k), QRMS_STATE_SQUARE_AVG);
    const Diff ds = compare(
        sizes[k], true, [&](int64_t i) { return a[size_t(i)]; }, [&](int64_t i) { return b[size_t(i)]; });
    INFO("state: " << ds.str());
    CHECK(ds.mismatches == 0);
  }
}
