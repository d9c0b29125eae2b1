// The core backends side by side on raw pointers: the same arena of bytes
// (params, grads, state, scales) on the host for core::make_cpu_backend and
// on the device for core::make_cuda_backend, the same calls, then the arenas
// compared. This sees the raw 8-bit codes and absmax, and it drives more
// tensors / clip jobs into one call than one launch table holds.
#include "core.hpp"
#include "gpu_util.hpp"

using namespace gputest;
using qrms::Dtype;
using qrms::core::StateKind;

namespace {

// Identical layouts on both sides: offsets into a host and a device arena.
struct Arena {
  size_t used = 0;
  std::vector<uint8_t> host;
  DevBuf dev;

  size_t reserve(size_t bytes) {
    const size_t off = used;
    used += (bytes + 255) / 256 * 256;
    return off;
  }
  void allocate() {
    host.assign(used, 0);
    dev = DevBuf(used);
  }
  void upload() { CUDA_REQUIRE(cudaMemcpy(dev.get(), host.data(), used, cudaMemcpyHostToDevice)); }
  std::vector<uint8_t> download() const {
    std::vector<uint8_t> out(used);
    CUDA_REQUIRE(cudaDeviceSynchronize());
    CUDA_REQUIRE(cudaMemcpy(out.data(), dev.get(), used, cudaMemcpyDeviceToHost));
    return out;
  }
  uint8_t *h(size_t off) { return host.data() + off; }
  uint8_t *d(size_t off) const { return dev.bytes() + off; }
};

constexpr size_t kNone = size_t(-1);

struct TensorLayout {
  int64_t n;
  size_t param, grad, s1, s2 = kNone, sc1 = kNone, sc2 = kNone, gnorm = kNone, unorm = kNone, step = kNone;
  qrms::math::Hyper hp;
};

qrms::core::TensorUpdate at(const TensorLayout &l, uint8_t *base) {
  auto ptr = [base](size_t off) -> uint8_t * { return off == kNone ? nullptr : base + off; };
  qrms::core::TensorUpdate t;
  t.param = ptr(l.param);
  t.grad = ptr(l.grad);
  t.n = l.n;
  t.state1 = ptr(l.s1);
  t.state2 = ptr(l.s2);
  t.scale1 = reinterpret_cast<float *>(ptr(l.sc1));
  t.scale2 = reinterpret_cast<float *>(ptr(l.sc2));
  t.gnorm_scale = reinterpret_cast<const float *>(ptr(l.gnorm));
  t.unorm = reinterpret_cast<float *>(ptr(l.unorm));
  t.step = reinterpret_cast<int64_t *>(ptr(l.step));
  t.hp = l.hp;
  return t;
}

}  // namespace

TEST_CASE("core update: more tensors than one launch table, per-tensor hyper-parameters", "[gpu][core]") {
  const StateKind kind = GENERATE(StateKind::Float32, StateKind::Blockwise8, StateKind::Tensor8, StateKind::Blockwise4);
  const bool bits4 = kind == StateKind::Blockwise4;
  const Dtype dtype = GENERATE(Dtype::Float16, Dtype::Float32, Dtype::BFloat16);
  const bool with_unorm = GENERATE(false, true);
  CAPTURE(int(kind), dtype_name(dtype), with_unorm);
  const size_t es = dtype_size(dtype);
  const int kTensors = 300;  // more than gpu::kMaxTensors (288): two launches

  Arena arena;
  const size_t qmap_off = arena.reserve(256 * sizeof(float));
  const size_t half_off = arena.reserve(sizeof(float));  // a gnorm_scale of 0.5
  std::vector<TensorLayout> ls;
  for (int i = 0; i < kTensors; ++i) {
    TensorLayout l;
    l.n = i == 0 ? 100000 : 1 + (int64_t(i) * 977) % 6000;
    l.hp = qrms::math::Hyper{1e-2f * float(1 + i % 3),  0.9f + 0.001f * float(i % 50), 1e-8f,
                             i % 3 == 0 ? 0.01f : 0.0f, i % 2 ? 0.9f : 0.0f,           0.0f,
                             uint16_t(i % 4 == 0 ? 1 : 0), 0};
    const bool mom = l.hp.momentum > 0.0f;
    if (with_unorm && i % 5 == 0) {
      l.hp.max_unorm = 1.0f;
      l.unorm = arena.reserve(2 * sizeof(float));
    }
    l.param = arena.reserve(size_t(l.n) * es);
    l.grad = arena.reserve(size_t(l.n) * es);
    const size_t sbytes = kind == StateKind::Float32 ? size_t(l.n) * 4 : bits4 ? size_t(l.n + 1) / 2 : size_t(l.n);
    const size_t scbytes = kind == StateKind::Blockwise8 ? size_t(qrms::core::num_blocks(l.n)) * 4
                           : bits4                       ? size_t(qrms::core::num_blocks4(l.n)) * 4
                           : kind == StateKind::Tensor8  ? 8
                                                         : 0;
    l.s1 = arena.reserve(sbytes);
    if (scbytes) l.sc1 = arena.reserve(scbytes);
    if (mom) {
      l.s2 = arena.reserve(sbytes);
      if (scbytes) l.sc2 = arena.reserve(scbytes);
    }
    if (i % 7 == 0) l.gnorm = half_off;
    ls.push_back(l);
  }
  arena.allocate();
  const std::vector<float> qmap = qrms::dynamic_map(true);
  std::memcpy(arena.h(qmap_off), qmap.data(), 256 * sizeof(float));
  const float half = 0.5f;
  std::memcpy(arena.h(half_off), &half, sizeof(float));
  for (int i = 0; i < kTensors; ++i) {
    const TensorLayout &l = ls[size_t(i)];
    const std::vector<uint8_t> p = random_tensor(dtype, l.n, 3u * uint32_t(i), 1.0f);
    const std::vector<uint8_t> g = random_tensor(dtype, l.n, 3u * uint32_t(i) + 1, 1.0f, 0.1);
    std::memcpy(arena.h(l.param), p.data(), p.size());
    std::memcpy(arena.h(l.grad), g.data(), g.size());
  }
  arena.upload();

  std::vector<qrms::core::TensorUpdate> cpu_t, gpu_t;
  for (const TensorLayout &l : ls) {
    cpu_t.push_back(at(l, arena.host.data()));
    gpu_t.push_back(at(l, arena.dev.bytes()));
  }
  auto cpu = qrms::core::make_cpu_backend();
  auto gpu = qrms::core::make_cuda_backend(0);
  for (int step = 0; step < 3; ++step) {
    cpu->update(kind, dtype, cpu_t.data(), cpu_t.size(), reinterpret_cast<const float *>(arena.h(qmap_off)),
                qrms::core::StepControl{}, nullptr);
    gpu->update(kind, dtype, gpu_t.data(), gpu_t.size(), reinterpret_cast<const float *>(arena.d(qmap_off)),
                qrms::core::StepControl{}, nullptr);
  }
  const std::vector<uint8_t> back = arena.download();

  int64_t unorm_code_diffs = 0, unorm_codes = 0;
  for (int i = 0; i < kTensors; ++i) {
    const TensorLayout &l = ls[size_t(i)];
    CAPTURE(i, l.n);
    const bool exact = !(l.hp.max_unorm > 0.0f);
    const Diff dp = compare(
        l.n, exact, [&](int64_t k) { return get_elem(dtype, arena.h(l.param), k); },
        [&](int64_t k) { return get_elem(dtype, back.data() + l.param, k); });
    INFO("params: " << dp.str());
    CHECK(dp.fraction() <= (exact ? 0.0 : 0.01));
    for (size_t s : {l.s1, l.s2}) {
      if (s == kNone) continue;
      if (kind == StateKind::Float32) {
        const Diff ds = compare(
            l.n, exact, [&](int64_t k) { return reinterpret_cast<const float *>(arena.h(s))[k]; },
            [&](int64_t k) { return reinterpret_cast<const float *>(back.data() + s)[k]; });
        INFO("state: " << ds.str());
        CHECK(ds.fraction() <= (exact ? 0.0 : 0.01));
      } else {
        int64_t diff = 0, far = 0;
        // A code: a byte, or 4-bit's nibble.
        auto code = [&](const uint8_t *base, int64_t k) { return int(bits4 ? qrms::math::code4(base, k) : base[k]); };
        for (int64_t k = 0; k < l.n; ++k) {
          const int a = code(arena.h(s), k), b = code(back.data() + s, k);
          diff += a != b;
          far += std::abs(a - b) > 1;
        }
        INFO("codes: " << diff << " of " << l.n << " differ, " << far << " by more than one");
        if (exact) {
          CHECK(diff == 0);
        } else {
          CHECK(far == 0);
          unorm_code_diffs += diff;
          unorm_codes += l.n;
        }
      }
    }
    for (size_t sc : {l.sc1, l.sc2}) {
      if (sc == kNone) continue;
      const int64_t count = kind == StateKind::Blockwise8 ? qrms::core::num_blocks(l.n)
                            : bits4                       ? qrms::core::num_blocks4(l.n)
                                                          : 2;
      const Diff da = compare(
          count, exact, [&](int64_t k) { return reinterpret_cast<const float *>(arena.h(sc))[k]; },
          [&](int64_t k) { return reinterpret_cast<const float *>(back.data() + sc)[k]; });
      INFO("scales: " << da.str());
      CHECK(da.fraction() <= (exact ? 0.0 : 0.05));
    }
  }
  CHECK(unorm_code_diffs <= unorm_codes / 100);
}

// Every tensor counts the step, also one without elements (it has no chunk
// of the grid-stride walk), and also in a launch with no chunk at all.
TEST_CASE("core update: tensors with no elements count their steps", "[gpu][core][sanitize]") {
  const StateKind kind = GENERATE(StateKind::Float32, StateKind::Blockwise8, StateKind::Tensor8);
  CAPTURE(int(kind));
  for (const std::vector<int64_t> &sizes : {std::vector<int64_t>{0, 3000, 0, 1}, std::vector<int64_t>{0, 0}}) {
    CAPTURE(sizes.size());
    Arena arena;
    const size_t qmap_off = arena.reserve(256 * sizeof(float));
    std::vector<TensorLayout> ls;
    for (int64_t n : sizes) {
      TensorLayout l;
      l.n = n;
      l.hp = qrms::math::Hyper{1e-2f, 0.99f, 1e-8f, 0.0f, 0.0f, 0.0f, 0, 0};
      l.param = arena.reserve(size_t(n) * 4 + 4);
      l.grad = arena.reserve(size_t(n) * 4 + 4);
      l.s1 = arena.reserve(size_t(n) * 4 + 4);
      if (kind != StateKind::Float32) l.sc1 = arena.reserve(size_t(qrms::core::num_blocks(n) + 2) * 4);
      l.step = arena.reserve(sizeof(int64_t));
      ls.push_back(l);
    }
    arena.allocate();
    const std::vector<float> qmap = qrms::dynamic_map(true);
    std::memcpy(arena.h(qmap_off), qmap.data(), 256 * sizeof(float));
    arena.upload();
    std::vector<qrms::core::TensorUpdate> cpu_t, gpu_t;
    for (const TensorLayout &l : ls) {
      cpu_t.push_back(at(l, arena.host.data()));
      gpu_t.push_back(at(l, arena.dev.bytes()));
    }
    auto cpu = qrms::core::make_cpu_backend();
    auto gpu = qrms::core::make_cuda_backend(0);
    for (int step = 0; step < 3; ++step) {
      cpu->update(kind, Dtype::Float32, cpu_t.data(), cpu_t.size(), reinterpret_cast<const float *>(arena.h(qmap_off)),
                  qrms::core::StepControl{}, nullptr);
      gpu->update(kind, Dtype::Float32, gpu_t.data(), gpu_t.size(), reinterpret_cast<const float *>(arena.d(qmap_off)),
                  qrms::core::StepControl{}, nullptr);
    }
    const std::vector<uint8_t> back = arena.download();
    for (const TensorLayout &l : ls) {
      CAPTURE(l.n);
      int64_t sc = 0, sg = 0;
      std::memcpy(&sc, arena.h(l.step), 8);
      std::memcpy(&sg, back.data() + l.step, 8);
      CHECK(sc == 3);
      CHECK(sg == 3);
    }
  }
}

namespace {

// Percentile clipping on both backends for `steps` steps; the scales are
// compared after every step, history and step counters at the end. Gradient
// scales vary per job and step so the history holds distinct norms.
// nonfinite: job 0 gets a NaN gradient at step 2 and job 1 an inf at step 3,
// so their histories hold non-finite norms for the rest of the run.
void check_clip(Dtype dtype, int jobs, int steps, int64_t first_n, int64_t max_n, bool nonfinite = false) {
  CAPTURE(dtype_name(dtype), jobs, steps, nonfinite);
  Arena arena;
  struct J {
    int64_t n;
    size_t grad, hist, step, scale;
  };
  std::vector<J> js;
  for (int i = 0; i < jobs; ++i) {
    J j;
    j.n = i == 0 ? first_n : 1 + (int64_t(i) * 131) % max_n;
    j.grad = arena.reserve(size_t(j.n) * dtype_size(dtype));
    j.hist = arena.reserve(100 * sizeof(float));
    j.step = arena.reserve(sizeof(int64_t));
    j.scale = arena.reserve(sizeof(float));
    js.push_back(j);
  }
  arena.allocate();
  arena.upload();  // zero history, steps and scales on the device too
  auto cpu = qrms::core::make_cpu_backend();
  auto gpu = qrms::core::make_cuda_backend(0);
  std::vector<qrms::core::ClipJob> cj, gj;
  for (int i = 0; i < jobs; ++i) {
    const J &j = js[size_t(i)];
    qrms::core::ClipJob c;
    c.advance = true;  // no update pass counts the steps here
    c.n = j.n;
    c.percentile = (i * 37) % 100;
    c.grad = arena.h(j.grad);
    c.gnorm_vec = reinterpret_cast<float *>(arena.h(j.hist));
    c.step = reinterpret_cast<int64_t *>(arena.h(j.step));
    c.gnorm_scale = reinterpret_cast<float *>(arena.h(j.scale));
    cj.push_back(c);
    c.grad = arena.d(j.grad);
    c.gnorm_vec = reinterpret_cast<float *>(arena.d(j.hist));
    c.step = reinterpret_cast<int64_t *>(arena.d(j.step));
    c.gnorm_scale = reinterpret_cast<float *>(arena.d(j.scale));
    gj.push_back(c);
  }
  std::mt19937 rng(123);
  std::uniform_real_distribution<float> gscale(0.2f, 5.0f);
  int64_t scale_mismatches = 0, clipped = 0;
  for (int step = 0; step < steps; ++step) {
    for (int i = 0; i < jobs; ++i) {
      const J &j = js[size_t(i)];
      std::vector<uint8_t> g = random_tensor(dtype, j.n, 7u * uint32_t(i) + 1000u * uint32_t(step), gscale(rng));
      if (nonfinite && i == 0 && step == 1) set_elem(dtype, g.data(), j.n / 2, std::nanf(""));
      if (nonfinite && i == 1 && step == 2) set_elem(dtype, g.data(), 0, INFINITY);
      std::memcpy(arena.h(j.grad), g.data(), g.size());
      CUDA_REQUIRE(cudaMemcpy(arena.d(j.grad), g.data(), g.size(), cudaMemcpyHostToDevice));
    }
    cpu->clip(dtype, cj.data(), cj.size(), qrms::core::StepControl{}, nullptr);
    gpu->clip(dtype, gj.data(), gj.size(), qrms::core::StepControl{}, nullptr);
    CUDA_REQUIRE(cudaDeviceSynchronize());
    for (int i = 0; i < jobs; ++i) {
      const J &j = js[size_t(i)];
      float a = 0, b = 0;
      std::memcpy(&a, arena.h(j.scale), 4);
      CUDA_REQUIRE(cudaMemcpy(&b, arena.d(j.scale), 4, cudaMemcpyDeviceToHost));
      clipped += a < 1.0f;
      // q is a sum: the GPU adds block partials in another order.
      if (!(std::fabs(a - b) <= 1e-4f * std::fabs(a))) {
        if (scale_mismatches == 0) WARN("step " << step + 1 << " job " << i << ": scale " << a << " vs " << b);
        ++scale_mismatches;
      }
    }
  }
  CHECK(scale_mismatches == 0);
  CHECK(clipped > 0);
  const std::vector<uint8_t> back = arena.download();
  for (int i = 0; i < jobs; ++i) {
    const J &j = js[size_t(i)];
    CAPTURE(i, j.n);
    int64_t sc = 0, sg = 0;
    std::memcpy(&sc, arena.h(j.step), 8);
    std::memcpy(&sg, back.data() + j.step, 8);
    CHECK(sc == steps);
    CHECK(sg == steps);
    // Non-finite norms are the same on both sides; the rest are sums in
    // another order.
    const auto nan_as = [](float v) { return std::isnan(v) ? -1.0f : std::isinf(v) ? -2.0f : v; };
    const Diff dh = compare(
        100, false, [&](int64_t k) { return nan_as(reinterpret_cast<const float *>(arena.h(j.hist))[k]); },
        [&](int64_t k) { return nan_as(reinterpret_cast<const float *>(back.data() + j.hist)[k]); });
    INFO("history: " << dh.str());
    CHECK(dh.mismatches == 0);
  }
}

}  // namespace

TEST_CASE("core clip: more jobs than one launch table", "[gpu][core][sanitize]") {
  const Dtype dtype = GENERATE(Dtype::Float32, Dtype::BFloat16);
  check_clip(dtype, 600, 4, 50000, 3000);  // 600 > gpu::kMaxClipJobs (512)
}

TEST_CASE("core clip: NaN and inf norms in the history", "[gpu][core][sanitize]") {
  check_clip(Dtype::Float32, 5, 12, 3000, 700, true);
}

TEST_CASE("core clip: a full history of distinct norms, every percentile", "[gpu][core]") {
  const Dtype dtype = GENERATE(Dtype::Float32, Dtype::Float16);
  check_clip(dtype, 40, 130, 20000, 700);
}

namespace {

void check_quantize(int64_t n, int64_t blocksize) {
  CAPTURE(n, blocksize);
  const int64_t nb = (n + blocksize - 1) / blocksize;
  Arena arena;
  const size_t qmap_off = arena.reserve(256 * 4), in = arena.reserve(size_t(n) * 4), codes = arena.reserve(size_t(n)),
               absmax = arena.reserve(size_t(nb) * 4), out = arena.reserve(size_t(n) * 4);
  arena.allocate();
  const std::vector<float> qmap = qrms::dynamic_map(true);
  std::memcpy(arena.h(qmap_off), qmap.data(), 1024);
  std::vector<uint8_t> vals = random_tensor(Dtype::Float32, n, 99u, 3.0f, 0.05);
  for (int64_t i = 0; i < std::min<int64_t>(n, 2 * blocksize + 5); ++i)
    reinterpret_cast<float *>(vals.data())[i] = 0.0f;
  std::memcpy(arena.h(in), vals.data(), vals.size());
  arena.upload();
  auto cpu = qrms::core::make_cpu_backend();
  auto gpu = qrms::core::make_cuda_backend(0);
  auto f = [](uint8_t *p) { return reinterpret_cast<float *>(p); };
  cpu->quantize_blockwise(f(arena.h(qmap_off)), f(arena.h(in)), arena.h(codes), f(arena.h(absmax)), n, blocksize,
                          nullptr);
  cpu->dequantize_blockwise(f(arena.h(qmap_off)), arena.h(codes), f(arena.h(absmax)), f(arena.h(out)), n, blocksize,
                            nullptr);
  gpu->quantize_blockwise(f(arena.d(qmap_off)), f(arena.d(in)), arena.d(codes), f(arena.d(absmax)), n, blocksize,
                          nullptr);
  gpu->dequantize_blockwise(f(arena.d(qmap_off)), arena.d(codes), f(arena.d(absmax)), f(arena.d(out)), n, blocksize,
                            nullptr);
  const std::vector<uint8_t> back = arena.download();
  CHECK(std::equal(back.begin() + long(codes), back.begin() + long(codes) + n, arena.host.begin() + long(codes)));
  CHECK(std::memcmp(back.data() + absmax, arena.h(absmax), size_t(nb) * 4) == 0);
  CHECK(std::memcmp(back.data() + out, arena.h(out), size_t(n) * 4) == 0);
}

}  // namespace

TEST_CASE("core quantize / dequantize block-wise of any block size", "[gpu][core]") {
  const int64_t blocksize = GENERATE(int64_t(1), int64_t(7), int64_t(64), int64_t(256), int64_t(4096), int64_t(200000));
  check_quantize(100003, blocksize);
}

TEST_CASE("core quantize / dequantize, small, for the sanitizers", "[gpu][core][sanitize]") {
  const int64_t blocksize = GENERATE(int64_t(7), int64_t(256), int64_t(5000));
  check_quantize(20011, blocksize);
}
