// The core entry points on raw CPU pointers: qrms_update_32bit,
// qrms_update_8bit_blockwise, qrms_update_8bit_tensor and
// qrms_percentile_clipping against the reference (codes and scales checked
// directly), and those and qrms_update_4bit_blockwise against the optimizer
// object, bit for bit.
#include <cmath>
#include <vector>

#include "capi_helpers.hpp"

using qref::Dt;

namespace {

enum class Kind { F32, Block8, Tensor8, Block4 };

const char *kind_name(Kind k) {
  return k == Kind::F32 ? "32-bit" : k == Kind::Block8 ? "8-bit block-wise" : k == Kind::Tensor8 ? "8-bit per tensor" : "4-bit";
}

// A tensor's state as the core functions take it.
struct CoreState {
  Kind kind;
  int64_t n;
  bool momentum;
  std::vector<float> s32, b32;             // 32-bit
  std::vector<uint8_t> s8, b8;             // 8-bit codes; 4-bit: two per byte
  std::vector<float> s_scale, b_scale;     // absmax per block, or {max1, new_max1}
  std::vector<float> unorm = std::vector<float>(2, 0.0f);

  CoreState(Kind k, int64_t n_, bool mom) : kind(k), n(n_), momentum(mom) {
    const size_t un = static_cast<size_t>(n);
    if (k == Kind::F32) {
      s32.assign(un, 0.0f);
      if (mom) b32.assign(un, 0.0f);
    } else {
      const size_t scales = k == Kind::Block8   ? static_cast<size_t>((n + 255) / 256)
                            : k == Kind::Block4 ? static_cast<size_t>((n + 127) / 128)
                                                : 2;
      const size_t bytes = k == Kind::Block4 ? (un + 1) / 2 : un;
      s8.assign(bytes, 0);
      s_scale.assign(scales, 0.0f);
      if (mom) {
        b8.assign(bytes, 0);
        b_scale.assign(scales, 0.0f);
      }
    }
  }

  int64_t blocksize() const { return kind == Kind::Block8 ? 256 : n; }

  // Dequantized (or plain) state, as the optimizer's read_state gives it.
  std::vector<float> read(const std::vector<float> &q, bool mom) const {
    if (kind == Kind::F32) return mom ? b32 : s32;
    const std::vector<uint8_t> &codes = mom ? b8 : s8;
    const std::vector<float> &scale = mom ? b_scale : s_scale;
    if (kind == Kind::Block4) {  // the buffer's fixed map, two codes per byte
      const std::vector<float> map4 = mom ? qref::momentum_map4() : qref::square_map4();
      std::vector<float> out(static_cast<size_t>(n));
      for (size_t i = 0; i < out.size(); ++i) out[i] = map4[(codes[i / 2] >> (4 * (i % 2))) & 15] * scale[i / 128];
      return out;
    }
    std::vector<float> out(codes.size());
    for (size_t i = 0; i < codes.size(); ++i)
      out[i] = q[codes[i]] * (kind == Kind::Block8 ? scale[i / 256] : scale[0]);
    return out;
  }

  qrms_status_t update(const std::vector<float> &q, Dt dt, qref::Tensor &p, const qref::Tensor &g,
                       const qrms_update_params &hp, const float *gnorm_scale) {
    float *un = hp.max_unorm > 0.0f ? unorm.data() : nullptr;
    switch (kind) {
      case Kind::F32:
        return qrms_update_32bit(QRMS_DEVICE_CPU, static_cast<qrms_dtype_t>(dt), p.data(), g.data(), s32.data(),
                                 momentum ? b32.data() : nullptr, n, &hp, gnorm_scale, un, nullptr);
      case Kind::Block8:
        return qrms_update_8bit_blockwise(QRMS_DEVICE_CPU, static_cast<qrms_dtype_t>(dt), p.data(), g.data(),
                                          s8.data(), s_scale.data(), momentum ? b8.data() : nullptr,
                                          momentum ? b_scale.data() : nullptr, q.data(), n, &hp, gnorm_scale, un,
                                          nullptr);
      case Kind::Tensor8:
        return qrms_update_8bit_tensor(QRMS_DEVICE_CPU, static_cast<qrms_dtype_t>(dt), p.data(), g.data(), s8.data(),
                                       s_scale.data(), momentum ? b8.data() : nullptr,
                                       momentum ? b_scale.data() : nullptr, q.data(), n, &hp, gnorm_scale, un,
                                       nullptr);
      case Kind::Block4:
        return qrms_update_4bit_blockwise(QRMS_DEVICE_CPU, static_cast<qrms_dtype_t>(dt), p.data(), g.data(),
                                          s8.data(), s_scale.data(), momentum ? b8.data() : nullptr,
                                          momentum ? b_scale.data() : nullptr, n, &hp, gnorm_scale, un, nullptr);
    }
    return QRMS_ERROR_INTERNAL;
  }
};

// Codes and scales of an 8-bit state against the reference quantizer of the
// reference's new state.
void check_codes(const char *what, const std::vector<float> &q, Kind kind, const std::vector<uint8_t> &codes,
                 const std::vector<float> &scale, const std::vector<float> &ref_state) {
  const int64_t n = static_cast<int64_t>(ref_state.size());
  const int64_t bs = kind == Kind::Block8 ? 256 : n;
  const qref::Quantized ref = qref::quantize(q.data(), ref_state, bs);
  INFO(what);
  if (kind == Kind::Block8) {
    REQUIRE(scale.size() == ref.absmax.size());
    size_t bad = 0;
    for (size_t b = 0; b < scale.size(); ++b)
      bad += std::fabs(scale[b] - ref.absmax[b]) <= 1e-6 * std::fabs(ref.absmax[b]) ? 0 : 1;
    CHECK(bad == 0);
  } else {
    // {max1, new_max1}: both hold max |s_new| after the step.
    CHECK(std::fabs(scale[0] - ref.absmax[0]) <= 1e-6 * std::fabs(ref.absmax[0]));
    CHECK(scale[1] == scale[0]);
  }
  size_t bad = 0, first = 0;
  for (int64_t i = 0; i < n; ++i) {
    const size_t k = static_cast<size_t>(i);
    if (codes[k] == ref.codes[k]) continue;
    const float a = ref.absmax[static_cast<size_t>(i / bs)];
    const std::vector<int> ok = qref::acceptable_codes(q.data(), ref_state[k] / a, 2e-6);
    if (std::find(ok.begin(), ok.end(), codes[k]) != ok.end()) continue;
    if (bad++ == 0) first = k;
  }
  INFO(bad << " of " << n << " codes differ; first at " << first << ": got " << int(codes[first]) << ", expected "
            << int(ref.codes[first]));
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("core updates on raw pointers match the reference", "[core]") {
  const Kind kind = GENERATE(Kind::F32, Kind::Block8, Kind::Tensor8);
  const Dt dt = GENERATE(Dt::F32, Dt::F16, Dt::BF16);
  const int opt_case = GENERATE(0, 1, 2, 3);
  // 66000 elements: over one 64 Ki-element chunk, with a partial last block.
  const int64_t n = GENERATE(int64_t(5000), int64_t(66000));
  qrms_update_params hp;
  qrms_update_params_init(&hp);
  hp.alpha = 0.9f;
  bool with_gnorm = false;
  switch (opt_case) {
    case 1: hp.momentum = 0.9f; hp.weight_decay = 0.1f; break;
    case 2: hp.skip_zeros = 1; hp.max_unorm = 0.4f; with_gnorm = true; break;
    case 3: hp.momentum = 0.5f; hp.weight_decay = 0.01f; hp.skip_zeros = 1; hp.max_unorm = 0.4f; with_gnorm = true; break;
    default: break;
  }
  INFO(kind_name(kind) << ", " << qref::dt_name(dt) << ", option set " << opt_case << ", n " << n);
  const std::vector<float> q = qtest::signed_map();
  CoreState st(kind, n, hp.momentum > 0.0f);
  std::mt19937 rng(static_cast<uint32_t>(opt_case * 100 + static_cast<int>(dt) * 10 + static_cast<int>(kind)));
  qref::Tensor p(dt, n), g(dt, n);
  qtest::fill_normal(p, rng, 1.0f);
  const qref::Hyper h = qtest::hyper_of(hp);
  int scaled = 0;
  for (int k = 0; k < 4; ++k) {
    INFO("step " << k + 1);
    qtest::fill_grad(g, rng, qtest::grad_scale_for(k));
    const float gscale = with_gnorm ? 0.75f : 1.0f;
    const std::vector<float> p0 = p.values(), s0 = st.read(q, false);
    const std::vector<float> b0 = st.momentum ? st.read(q, true) : std::vector<float>{};
    QRMS_REQUIRE_OK(st.update(q, dt, p, g, hp, with_gnorm ? &gscale : nullptr));
    const qref::StepOut ref = qref::step(h, dt, p0, g.values(), s0, b0, gscale);
    scaled += ref.update_scale < 1.0f ? 1 : 0;
    qtest::check_params("params", dt, p.values(), ref, p0);
    if (kind == Kind::F32) {
      qtest::check_state32("square_avg", st.s32, ref.s, 1e-12, 2e-6);
      if (st.momentum) qtest::check_state32("momentum", st.b32, ref.b, 1e-6, 1e-5);
    } else {
      check_codes("square_avg", q, kind, st.s8, st.s_scale, ref.s);
      if (st.momentum) check_codes("momentum", q, kind, st.b8, st.b_scale, ref.b);
    }
    if (hp.max_unorm > 0.0f) {
      // The scratch holds the sums of squares of the update and the param.
      double pp = 0.0;
      for (float x : p0) pp += static_cast<double>(x) * static_cast<double>(x);
      CHECK(std::fabs(st.unorm[1] - pp) <= 1e-5 * pp);
    }
  }
  if (hp.max_unorm > 0.0f) CHECK(scaled > 0);
}

TEST_CASE("qrms_percentile_clipping matches the reference", "[core]") {
  const Dt dt = GENERATE(Dt::F32, Dt::F16, Dt::BF16);
  const int32_t pct = GENERATE(0, 5, 50, 99);
  std::vector<float> hist(100, -1.0f);
  std::fill(hist.begin(), hist.end(), 0.0f);
  int64_t step = 0;
  float scale = -1.0f;
  qref::Clip ref;
  qref::Tensor g(dt, 3000);
  std::mt19937 rng(static_cast<uint32_t>(pct));
  int clipped = 0;
  for (int k = 0; k < 130; ++k) {  // past the 100-entry wrap-around
    INFO("step " << k + 1);
    qtest::fill_grad(g, rng, qtest::grad_scale_for(k) * (1.0f + 0.01f * static_cast<float>(k % 13)));
    QRMS_REQUIRE_OK(qrms_percentile_clipping(QRMS_DEVICE_CPU, static_cast<qrms_dtype_t>(dt), g.data(), 3000,
                                             hist.data(), &step, pct, &scale, nullptr));
    const float expect = ref.next(g.values(), pct);
    CHECK(step == k + 1);
    CHECK(std::fabs(scale - expect) <= 1e-6f * expect);
    size_t bad = 0;
    for (size_t i = 0; i < 100; ++i) bad += std::fabs(hist[i] - ref.hist[i]) <= 1e-6f * ref.hist[i] ? 0 : 1;
    CHECK(bad == 0);
    clipped += expect < 1.0f ? 1 : 0;
  }
  if (pct < 99) CHECK(clipped > 0);
}

TEST_CASE("core entry points reproduce the optimizer bit for bit", "[core]") {
  const Kind kind = GENERATE(Kind::F32, Kind::Block8, Kind::Tensor8, Kind::Block4);
  const Dt dt = GENERATE(Dt::F32, Dt::F16, Dt::BF16);
  INFO(kind_name(kind) << ", " << qref::dt_name(dt));
  const int64_t n = kind == Kind::Block4 ? 3001 : 3000;  // 4-bit: an odd tensor's last high nibble
  qrms_config c = qtest::config(5e-3f);
  c.alpha = 0.95f;
  c.momentum = 0.8f;
  c.weight_decay = 0.02f;
  c.skip_zeros = 1;
  c.percentile_clipping = 20;
  c.max_unorm = 0.5f;
  c.min_8bit_size = 0;
  c.optim_bits = kind == Kind::F32 ? 32 : kind == Kind::Block4 ? 4 : 8;
  c.block_wise = kind == Kind::Tensor8 ? 0 : 1;
  qtest::COpt opt(QRMS_RMSPROP, c);

  const qrms_update_params hp = qtest::update_params_of(c);

  std::mt19937 rng(21);
  qref::Tensor p_opt(dt, n), p_core(dt, n), g(dt, n);
  qtest::fill_normal(p_opt, rng, 1.0f);
  p_core = p_opt;
  opt.add(p_opt, &g);
  CoreState st(kind, n, true);
  std::vector<float> hist(100, 0.0f);
  int64_t step = 0;
  float gscale = 0.0f;
  const std::vector<float> q = qtest::signed_map();
  for (int k = 0; k < 6; ++k) {
    INFO("step " << k + 1);
    qtest::fill_grad(g, rng, qtest::grad_scale_for(k));
    opt.step();
    QRMS_REQUIRE_OK(qrms_percentile_clipping(QRMS_DEVICE_CPU, static_cast<qrms_dtype_t>(dt), g.data(), n,
                                             hist.data(), &step, c.percentile_clipping, &gscale, nullptr));
    QRMS_REQUIRE_OK(st.update(q, dt, p_core, g, hp, &gscale));
    CHECK(p_core.same_bits(p_opt));
    CHECK_SAME(st.read(q, false), opt.read_state(0, QRMS_STATE_SQUARE_AVG));
    CHECK_SAME(st.read(q, true), opt.read_state(0, QRMS_STATE_MOMENTUM));
    CHECK(opt.get_step(0) == step);
  }
}
