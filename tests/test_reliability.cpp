// Reliability: long runs against the reference, no memory growth, several
// optimizers on several threads at once, per-thread error messages.
#include <malloc.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "qrmsprop/qrmsprop.h"
#include "qrmsprop/qrmsprop.hpp"
#include "reference.hpp"

namespace {

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define QRMS_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define QRMS_TEST_SANITIZED 1
#endif

// A noisy quadratic: grad = 2 (p - target) + noise, deterministic per step.
// The noise is a cheap hash of (step, i), uniform in [-0.05, 0.05).
void quadratic_grad(const std::vector<float> &p, const std::vector<float> &target, uint32_t step,
                    std::vector<float> &g) {
  for (size_t i = 0; i < p.size(); ++i) {
    uint32_t x = step * 2654435761u ^ static_cast<uint32_t>(i) * 40503u;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    const float noise = (static_cast<float>(x >> 8) / 16777216.0f - 0.5f) * 0.1f;
    g[i] = 2.0f * (p[i] - target[i]) + noise;
  }
}

float loss(const std::vector<float> &p, const std::vector<float> &target) {
  double l = 0;
  for (size_t i = 0; i < p.size(); ++i) l += double(p[i] - target[i]) * double(p[i] - target[i]);
  return static_cast<float>(l / double(p.size()));
}

std::vector<float> ramp(size_t n, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * std::sin(0.37f * static_cast<float>(i));
  return v;
}

}  // namespace

TEST_CASE("100k steps of 32-bit RMSprop stay on the reference", "[reliability][long]") {
  const size_t n = 300;
  const std::vector<float> target = ramp(n, 1.0f);
  std::vector<float> p(n, 0.0f), g(n);
  qrms::RMSprop32bit opt(1e-3f, 0.99f, 1e-8f, 1e-4f, 0.5f);
  opt.add_param(p.data(), g.data(), qrms::Dtype::Float32, static_cast<int64_t>(n));

  qref::Hyper h;
  h.lr = 1e-3f;
  h.weight_decay = 1e-4f;
  h.momentum = 0.5f;
  std::vector<float> rp(n, 0.0f), rs(n, 0.0f), rb(n, 0.0f), rg(n);
  const uint32_t steps = 100000;
  for (uint32_t k = 1; k <= steps; ++k) {
    quadratic_grad(p, target, k, g);
    quadratic_grad(rp, target, k, rg);
    opt.step();
    const qref::StepOut r = qref::step(h, qref::Dt::F32, rp, rg, rs, rb, 1.0f);
    rp = r.p;
    rs = r.s;
    rb = r.b;
  }
  float worst = 0.0f;
  for (size_t i = 0; i < n; ++i) worst = std::max(worst, std::fabs(p[i] - rp[i]));
  INFO("max |p - reference| after " << steps << " steps: " << worst);
  CHECK(worst <= 1e-5f);
  CHECK(opt.get_step(0) == steps);
  CHECK(loss(p, target) < 0.01f);
}

TEST_CASE("100k steps of 8-bit RMSprop: no drift, codes stay the reference's", "[reliability][long]") {
  const size_t n = 700;  // two full blocks and a partial one
  const std::vector<float> target = ramp(n, 1.0f);
  qrms::Args args;
  args.min_8bit_size = 0;
  for (bool block_wise : {true, false}) {
    INFO((block_wise ? "block-wise" : "per-tensor"));
    args.block_wise = block_wise;
    std::vector<float> p(n, 0.0f), g(n), p32(n, 0.0f), g32(n);
    qrms::RMSprop8bit opt(1e-3f, 0.99f, 1e-8f, 0.0f, 0.0f, false, args);
    qrms::RMSprop32bit opt32(1e-3f);
    opt.add_param(p.data(), g.data(), qrms::Dtype::Float32, static_cast<int64_t>(n));
    opt32.add_param(p32.data(), g32.data(), qrms::Dtype::Float32, static_cast<int64_t>(n));
    REQUIRE(opt.is_8bit(0));
    float qmap[256];
    REQUIRE(qrms_dynamic_map(1, qmap) == QRMS_SUCCESS);
    qref::Hyper h;
    h.lr = 1e-3f;

    const uint32_t steps = 100000;
    int checked = 0;
    for (uint32_t k = 1; k <= steps; ++k) {
      quadratic_grad(p, target, k, g);
      quadratic_grad(p32, target, k, g32);
      const bool check_now = k % 5000 == 0;
      std::vector<float> s_before, p_before;
      if (check_now) {
        s_before = opt.read_state(0, QRMS_STATE_SQUARE_AVG);
        p_before = p;
      }
      opt.step();
      opt32.step();
      if (check_now) {
        // One reference step from the library's own state: the stored codes
        // are the nearest codes of the reference's new state.
        const qref::StepOut r = qref::step(h, qref::Dt::F32, p_before, g, s_before, {}, 1.0f);
        const qref::Quantized q = qref::quantize(qmap, r.s, block_wise ? 256 : static_cast<int64_t>(n));
        const std::vector<float> s_after = opt.read_state(0, QRMS_STATE_SQUARE_AVG);
        int off = 0;
        for (size_t i = 0; i < n; ++i) {
          const float expect = qmap[q.codes[i]] * q.absmax[block_wise ? i / 256 : 0];
          if (expect != s_after[i]) ++off;
        }
        CHECK(off <= 1);  // a code may differ by one where the value sits on a midpoint
        for (size_t i = 0; i < n; ++i) REQUIRE(std::fabs(p[i] - r.p[i]) <= 1e-6f + 1e-5f * std::fabs(r.p[i]));
        ++checked;
      }
    }
    CHECK(checked == 20);
    for (float x : p) REQUIRE(std::isfinite(x));
    // 8-bit state trains as well as 32-bit state on this problem.
    INFO("loss 8-bit " << loss(p, target) << ", 32-bit " << loss(p32, target));
    CHECK(loss(p, target) < 2.0f * loss(p32, target) + 1e-4f);
  }
}

TEST_CASE("stepping does not grow the heap", "[reliability][memory]") {
#ifdef QRMS_TEST_SANITIZED
  // The sanitizer's allocator does not report through mallinfo2; the leak
  // checker covers this build instead.
  SUCCEED("heap accounting not available under sanitizers; LeakSanitizer checks this build");
#else
  const size_t n = 5000;
  std::vector<float> p(n, 0.5f), g(n, 0.1f), p2(n, 0.5f), g2(n, 0.2f);
  qrms::Args args;
  args.percentile_clipping = 90;
  args.max_unorm = 1.0f;
  qrms::RMSprop8bit opt(1e-3f, 0.99f, 1e-8f, 0.0f, 0.9f, false, args);
  opt.add_param(p.data(), g.data(), qrms::Dtype::Float32, static_cast<int64_t>(n));
  opt.add_param(p2.data(), g2.data(), qrms::Dtype::Float32, static_cast<int64_t>(n));
  for (int k = 0; k < 100; ++k) opt.step();
  const size_t before = mallinfo2().uordblks;
  for (int k = 0; k < 3000; ++k) opt.step();
  const size_t after = mallinfo2().uordblks;
  INFO("heap in use before " << before << " B, after 3000 more steps " << after << " B");
  CHECK(after <= before);
#endif
}

TEST_CASE("several optimizers on several threads give the single-thread results", "[reliability][threads]") {
  // Each job trains its own optimizer; run all at once, then one by one.
  struct Job {
    int variant_bits;
    bool block_wise;
    qrms::Dtype dtype;
    std::vector<float> p32, g32;
    std::vector<uint16_t> p16, g16;
    std::vector<uint8_t> blob;
  };
  auto run = [](Job &j) {
    const size_t n = 70000;
    qrms::Args args;
    args.block_wise = j.block_wise;
    args.percentile_clipping = 95;
    qrms::RMSprop opt(1e-3f, 0.99f, 1e-8f, 0.0f, 0.9f, false, j.variant_bits, args);
    void *p;
    void *g;
    if (j.dtype == qrms::Dtype::Float32) {
      j.p32.assign(n, 0.25f);
      j.g32.assign(n, 0.0f);
      p = j.p32.data();
      g = j.g32.data();
    } else {
      j.p16.assign(n, 0x3e80);  // 0.25 in bf16
      j.g16.assign(n, 0);
      p = j.p16.data();
      g = j.g16.data();
    }
    opt.add_param(p, g, j.dtype, static_cast<int64_t>(n));
    for (uint32_t k = 0; k < 30; ++k) {
      std::mt19937 rng(k);
      std::uniform_real_distribution<float> d(-1.0f, 1.0f);
      for (size_t i = 0; i < n; ++i) {
        const float v = d(rng);
        if (j.dtype == qrms::Dtype::Float32) {
          j.g32[i] = v;
        } else {
          uint32_t u;
          std::memcpy(&u, &v, 4);
          j.g16[i] = static_cast<uint16_t>(u >> 16);
        }
      }
      opt.step();
    }
    j.blob = opt.save();
  };
  auto make_jobs = [] {
    std::vector<Job> jobs;
    jobs.push_back({32, true, qrms::Dtype::Float32, {}, {}, {}, {}, {}});
    jobs.push_back({8, true, qrms::Dtype::Float32, {}, {}, {}, {}, {}});
    jobs.push_back({8, false, qrms::Dtype::BFloat16, {}, {}, {}, {}, {}});
    jobs.push_back({8, true, qrms::Dtype::BFloat16, {}, {}, {}, {}, {}});
    return jobs;
  };
  std::vector<Job> together = make_jobs(), alone = make_jobs();
  {
    std::vector<std::thread> threads;
    for (Job &j : together) threads.emplace_back(run, std::ref(j));
    for (auto &t : threads) t.join();
  }
  for (Job &j : alone) run(j);
  for (size_t i = 0; i < together.size(); ++i) {
    INFO("job " << i);
    CHECK(together[i].blob == alone[i].blob);
    CHECK(together[i].p32 == alone[i].p32);
    CHECK(together[i].p16 == alone[i].p16);
  }
}

TEST_CASE("error messages stay with their thread", "[reliability][threads]") {
  std::atomic<int> mismatches{0};
  auto worker = [&](int which) {
    for (int k = 0; k < 500; ++k) {
      qrms_config c;
      qrms_config_init(&c);
      const char *expect;
      if (which == 0) {
        c.alpha = 0.0f;
        expect = "RMSprop with alpha==0.0 is not supported!";
      } else {
        c.lr = -1.0f;
        expect = "Invalid learning rate: -1";
      }
      qrms_optimizer_t opt = nullptr;
      const qrms_status_t st = qrms_optimizer_create(&opt, QRMS_RMSPROP, &c, QRMS_DEVICE_CPU, 0);
      const std::string msg = qrms_last_error();
      if (st == QRMS_SUCCESS || msg.find(expect) == std::string::npos) ++mismatches;
      std::this_thread::yield();
    }
  };
  std::thread a(worker, 0), b(worker, 1);
  a.join();
  b.join();
  CHECK(mismatches.load() == 0);
}

// ---- non-finite gradients, the unscale factor ---------------------------------

namespace {

struct CTrainer {
  qrms_optimizer_t opt = nullptr;
  std::vector<float> p1, g1;
  std::vector<uint16_t> p2, g2;  // bfloat16

  explicit CTrainer(const qrms_config &c, qrms_variant_t variant = QRMS_RMSPROP_8BIT)
      : p1(5000, 0.5f), g1(5000, 0.1f), p2(300, 0x3f00), g2(300, 0x3dcd) {
    REQUIRE(qrms_optimizer_create(&opt, variant, &c, QRMS_DEVICE_CPU, 0) == QRMS_SUCCESS);
    REQUIRE(qrms_optimizer_add_param(opt, p1.data(), g1.data(), QRMS_FLOAT32, 5000, nullptr) == QRMS_SUCCESS);
    REQUIRE(qrms_optimizer_add_param(opt, p2.data(), g2.data(), QRMS_BFLOAT16, 300, nullptr) == QRMS_SUCCESS);
  }
  ~CTrainer() { qrms_optimizer_destroy(opt); }
  CTrainer(const CTrainer &) = delete;
  CTrainer &operator=(const CTrainer &) = delete;

  std::vector<uint8_t> blob() const {
    size_t size = 0;
    REQUIRE(qrms_optimizer_save(opt, nullptr, 0, &size) == QRMS_SUCCESS);
    std::vector<uint8_t> b(size);
    REQUIRE(qrms_optimizer_save(opt, b.data(), size, &size) == QRMS_SUCCESS);
    return b;
  }
  int64_t steps(int64_t i) const {
    int64_t s = -1;
    REQUIRE(qrms_optimizer_get_step(opt, i, &s) == QRMS_SUCCESS);
    return s;
  }
  int32_t found() const {
    int32_t f = -1;
    REQUIRE(qrms_optimizer_read_found_inf(opt, &f) == QRMS_SUCCESS);
    return f;
  }
};

qrms_config nonfinite_config() {
  qrms_config c;
  qrms_config_init(&c);
  c.skip_nonfinite = 1;
  c.momentum = 0.9f;
  c.percentile_clipping = 90;
  c.max_unorm = 1.0f;
  return c;
}

}  // namespace

TEST_CASE("skip_nonfinite: an inf or NaN anywhere skips the whole step and sets the flag", "[reliability][nonfinite]") {
  const float bad_values[] = {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                              std::numeric_limits<float>::quiet_NaN()};
  for (float bad : bad_values) {
    for (int where : {0, 1}) {
      INFO("bad value " << bad << " in parameter " << where);
      CTrainer t(nonfinite_config());
      REQUIRE(qrms_optimizer_step(t.opt, nullptr) == QRMS_SUCCESS);
      CHECK(t.found() == 0);
      const std::vector<uint8_t> before = t.blob();
      const std::vector<float> p1 = t.p1;
      const std::vector<uint16_t> p2 = t.p2;
      if (where == 0) {
        t.g1[4321] = bad;
      } else {
        uint32_t u;
        std::memcpy(&u, &bad, 4);
        t.g2[7] = static_cast<uint16_t>(u >> 16);
      }
      REQUIRE(qrms_optimizer_step(t.opt, nullptr) == QRMS_SUCCESS);
      CHECK(t.found() == 1);
      CHECK(t.blob() == before);  // state, step counters, clipping history
      CHECK(t.p1 == p1);
      CHECK(t.p2 == p2);
      CHECK(t.steps(0) == 1);
      CHECK(t.steps(1) == 1);
      // The flag lives where the optimizer does (host memory on the CPU).
      const int32_t *flag = nullptr;
      REQUIRE(qrms_optimizer_found_inf(t.opt, &flag) == QRMS_SUCCESS);
      CHECK(*flag == 1);
      // A finite step afterwards runs and clears the flag.
      t.g1[4321] = 0.1f;
      t.g2[7] = 0x3dcd;
      REQUIRE(qrms_optimizer_step(t.opt, nullptr) == QRMS_SUCCESS);
      CHECK(*flag == 0);
      CHECK(t.steps(0) == 2);
      CHECK(t.p1 != p1);
    }
  }
}

TEST_CASE("without skip_nonfinite a NaN gradient propagates, as in torch", "[reliability][nonfinite]") {
  qrms_config c = nonfinite_config();
  c.skip_nonfinite = 0;
  c.percentile_clipping = 100;
  c.max_unorm = 0.0f;
  CTrainer t(c, QRMS_RMSPROP_32BIT);
  t.g1[10] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE(qrms_optimizer_step(t.opt, nullptr) == QRMS_SUCCESS);
  CHECK(std::isnan(t.p1[10]));
  CHECK(t.p1[11] != 0.5f);
  CHECK(t.steps(0) == 1);
  CHECK(t.found() == 0);
}

TEST_CASE("a caller built with the first published qrms_config keeps working", "[reliability][nonfinite][abi]") {
  // The old struct ends at skip_zeros: whatever lies after it in the caller's
  // memory is not read, so skip_nonfinite keeps its default (off).
  qrms_config c = nonfinite_config();
  c.percentile_clipping = 100;
  c.max_unorm = 0.0f;
  c.struct_size = offsetof(qrms_config, skip_zeros) + sizeof(int32_t);
  c.skip_nonfinite = 1;  // beyond struct_size: must be ignored
  CTrainer t(c, QRMS_RMSPROP_32BIT);
  qrms_config back;
  back.struct_size = sizeof(back);
  REQUIRE(qrms_optimizer_get_param_config(t.opt, 0, &back) == QRMS_SUCCESS);
  CHECK(back.skip_nonfinite == 0);
  CHECK(back.momentum == 0.9f);
  t.g1[3] = std::numeric_limits<float>::infinity();
  REQUIRE(qrms_optimizer_step(t.opt, nullptr) == QRMS_SUCCESS);
  CHECK(t.steps(0) == 1);  // not skipped
  CHECK(!std::isfinite(t.p1[3]));
  // The same struct with the new size turns it on.
  c.struct_size = sizeof(qrms_config);
  CTrainer t2(c, QRMS_RMSPROP_32BIT);
  t2.g1[3] = std::numeric_limits<float>::infinity();
  REQUIRE(qrms_optimizer_step(t2.opt, nullptr) == QRMS_SUCCESS);
  CHECK(t2.steps(0) == 0);
  CHECK(t2.found() == 1);
}

TEST_CASE("the grad unscale factor is applied before clipping, the check and the update", "[reliability][nonfinite]") {
  // Gradients scaled by 1024 with an unscale factor of 1/1024 (exact in
  // binary) give the bits of the unscaled run.
  qrms_config c = nonfinite_config();
  CTrainer plain(c), scaled(c);
  float unscale = 1.0f / 1024.0f;
  REQUIRE(qrms_optimizer_set_grad_unscale(scaled.opt, &unscale) == QRMS_SUCCESS);
  for (int k = 0; k < 5; ++k) {
    for (size_t i = 0; i < plain.g1.size(); ++i) {
      plain.g1[i] = 0.01f * std::sin(0.1f * static_cast<float>(i + 17 * static_cast<size_t>(k)));
      scaled.g1[i] = plain.g1[i] * 1024.0f;
    }
    for (size_t i = 0; i < plain.g2.size(); ++i) {
      plain.g2[i] = static_cast<uint16_t>(0x3c00 + (i * 7 + static_cast<size_t>(k)) % 200);
      scaled.g2[i] = static_cast<uint16_t>(plain.g2[i] + (10 << 7));  // times 2^10 in bfloat16
    }
    REQUIRE(qrms_optimizer_step(plain.opt, nullptr) == QRMS_SUCCESS);
    REQUIRE(qrms_optimizer_step(scaled.opt, nullptr) == QRMS_SUCCESS);
  }
  CHECK(scaled.p1 == plain.p1);
  CHECK(scaled.p2 == plain.p2);
  CHECK(scaled.blob() == plain.blob());
  // Overflow of the scaled gradient is caught after unscaling: a factor
  // that is itself NaN makes every gradient non-finite.
  unscale = std::numeric_limits<float>::quiet_NaN();
  const std::vector<uint8_t> before = scaled.blob();
  REQUIRE(qrms_optimizer_step(scaled.opt, nullptr) == QRMS_SUCCESS);
  CHECK(scaled.found() == 1);
  CHECK(scaled.blob() == before);
  REQUIRE(qrms_optimizer_set_grad_unscale(scaled.opt, nullptr) == QRMS_SUCCESS);
  REQUIRE(qrms_optimizer_step(scaled.opt, nullptr) == QRMS_SUCCESS);
  CHECK(scaled.found() == 0);
}
