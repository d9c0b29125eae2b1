// Every variant x dtype x option of the C++ classes against the scalar
// reference of torch.optim.RMSprop, step by step.
#include <memory>
#include <string>

#include "check.hpp"
#include "qrmsprop/qrmsprop.hpp"

using qref::Dt;
using qtest::Trainee;

namespace {

enum class Variant { RMSprop32, RMSprop8, RMSprop8bit, RMSprop32bit, RMSprop4, RMSprop4bit };

const char *variant_name(Variant v) {
  switch (v) {
    case Variant::RMSprop32: return "RMSprop(optim_bits=32)";
    case Variant::RMSprop8: return "RMSprop(optim_bits=8)";
    case Variant::RMSprop8bit: return "RMSprop8bit";
    case Variant::RMSprop32bit: return "RMSprop32bit";
    case Variant::RMSprop4: return "RMSprop(optim_bits=4)";
    case Variant::RMSprop4bit: return "RMSprop4bit";
  }
  return "?";
}

std::unique_ptr<qrms::Optimizer1State> make(Variant v, const qrms::Config &c) {
  switch (v) {
    case Variant::RMSprop32:
      return std::make_unique<qrms::RMSprop>(c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, false, 32, c.args);
    case Variant::RMSprop8:
      return std::make_unique<qrms::RMSprop>(c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, false, 8, c.args);
    case Variant::RMSprop8bit:
      return std::make_unique<qrms::RMSprop8bit>(c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, false, c.args);
    case Variant::RMSprop32bit:
      return std::make_unique<qrms::RMSprop32bit>(c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, false, c.args);
    case Variant::RMSprop4:
      return std::make_unique<qrms::RMSprop>(c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, false, 4, c.args);
    case Variant::RMSprop4bit:
      return std::make_unique<qrms::RMSprop4bit>(c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, false, c.args);
  }
  return nullptr;
}

bool is8(Variant v) { return v == Variant::RMSprop8 || v == Variant::RMSprop8bit; }
bool is4(Variant v) { return v == Variant::RMSprop4 || v == Variant::RMSprop4bit; }

qref::Hyper hyper_of(const qrms::Config &c) {
  qref::Hyper h;
  h.lr = c.lr;
  h.alpha = c.alpha;
  h.eps = c.eps;
  h.weight_decay = c.weight_decay;
  h.momentum = c.momentum;
  h.max_unorm = c.args.max_unorm;
  h.skip_zeros = c.args.skip_zeros;
  h.percentile = c.args.percentile_clipping;
  return h;
}

struct Option {
  const char *name;
  void (*apply)(qrms::Config &);
};

const Option kOptions[] = {
    {"plain", [](qrms::Config &) {}},
    {"momentum", [](qrms::Config &c) { c.momentum = 0.9f; c.eps = 1e-3f; }},
    {"weight_decay", [](qrms::Config &c) { c.weight_decay = 0.1f; }},
    {"skip_zeros", [](qrms::Config &c) { c.args.skip_zeros = true; }},
    {"skip_zeros+momentum+weight_decay",
     [](qrms::Config &c) { c.args.skip_zeros = true; c.momentum = 0.5f; c.weight_decay = 0.05f; }},
    {"percentile_clipping", [](qrms::Config &c) { c.args.percentile_clipping = 5; }},
    {"max_unorm", [](qrms::Config &c) { c.args.max_unorm = 0.5f; }},
    {"per_tensor", [](qrms::Config &c) { c.args.block_wise = false; }},
    {"per_tensor+momentum+skip_zeros",
     [](qrms::Config &c) { c.args.block_wise = false; c.momentum = 0.9f; c.args.skip_zeros = true; }},
    {"min_8bit_size=100", [](qrms::Config &c) { c.args.min_8bit_size = 100; }},
    {"unsigned map", [](qrms::Config &c) { c.args.state_map = qrms::StateMap::Unsigned; }},
    {"unsigned map per_tensor+momentum", [](qrms::Config &c) {
       c.args.state_map = qrms::StateMap::Unsigned; c.args.block_wise = false; c.momentum = 0.9f; c.eps = 1e-3f; }},
    {"min_8bit_size=1M", [](qrms::Config &c) { c.args.min_8bit_size = 1 << 20; }},
    {"all", [](qrms::Config &c) {
       c.momentum = 0.9f; c.weight_decay = 0.05f; c.args.skip_zeros = true; c.args.percentile_clipping = 5;
       c.args.max_unorm = 0.5f; c.args.min_8bit_size = 100; }},
    {"all per_tensor", [](qrms::Config &c) {
       c.momentum = 0.9f; c.weight_decay = 0.05f; c.args.skip_zeros = true; c.args.percentile_clipping = 5;
       c.args.max_unorm = 0.5f; c.args.min_8bit_size = 100; c.args.block_wise = false; }},
};

// Tensor sizes: a multi-block tensor over the default min_8bit_size with a
// partial last block, and two small ones (one with a partial block).
const int64_t kSizes[] = {5000, 300, 777};

void run_variant(Variant v) {
  const Dt dt = GENERATE(Dt::F32, Dt::F16, Dt::BF16);
  const size_t oi = GENERATE(range<size_t>(0, sizeof(kOptions) / sizeof(kOptions[0])));
  const Option &opt_case = kOptions[oi];
  INFO(variant_name(v) << ", " << qref::dt_name(dt) << ", " << opt_case.name);

  qrms::Config c;
  c.lr = 1e-2f;
  c.alpha = 0.95f;
  opt_case.apply(c);
  if (is4(v) && !c.args.block_wise) return;  // 4-bit state is block-wise only (test_rules)
  c.optim_bits = is4(v) ? 4 : is8(v) ? 8 : 32;
  auto opt = make(v, c);
  const std::vector<float> qmap = qrms::dynamic_map(true), umap = qrms::dynamic_map(false);

  std::mt19937 rng(1234u + static_cast<unsigned>(oi) * 17u + static_cast<unsigned>(dt));
  std::vector<Trainee> ts;
  for (int64_t n : kSizes) {
    Trainee t(dt, n, rng);
    t.h = hyper_of(c);
    t.bits8 = is8(v) && n >= c.args.min_8bit_size;
    t.bits4 = is4(v) && n >= c.args.min_8bit_size;
    t.blocksize = c.args.block_wise ? 256 : n;
    if (c.args.state_map == qrms::StateMap::Unsigned) t.smap = umap.data();
    ts.push_back(std::move(t));
  }
  for (size_t i = 0; i < ts.size(); ++i) {
    const int64_t idx = opt->add_param(ts[i].p.data(), ts[i].g.data(), static_cast<qrms::Dtype>(dt), ts[i].p.size());
    CHECK(idx == static_cast<int64_t>(i));
    CHECK(opt->is_8bit(idx) == ts[i].bits8);
    CHECK(opt->state_bits(idx) == (ts[i].bits4 ? 4 : ts[i].bits8 ? 8 : 32));
    CHECK(opt->get_step(idx) == 0);
  }
  CHECK(opt->param_count() == 3);

  const qtest::RunStats st = qtest::run_and_check(*opt, ts, qmap.data(), 6, rng);
  // The options must really have acted in this run.
  if (c.args.percentile_clipping < 100) CHECK(st.clipped > 0);
  if (c.args.max_unorm > 0.0f) CHECK(st.scaled > 0);
  if (c.args.skip_zeros) CHECK(st.skipped > 0);
}

}  // namespace

TEST_CASE("RMSprop (32-bit) matches the reference", "[update]") { run_variant(Variant::RMSprop32); }
TEST_CASE("RMSprop with optim_bits=8 matches the reference", "[update]") { run_variant(Variant::RMSprop8); }
TEST_CASE("RMSprop8bit matches the reference", "[update]") { run_variant(Variant::RMSprop8bit); }
TEST_CASE("RMSprop32bit matches the reference", "[update]") { run_variant(Variant::RMSprop32bit); }
TEST_CASE("RMSprop with optim_bits=4 matches the reference", "[update][4bit]") { run_variant(Variant::RMSprop4); }
TEST_CASE("RMSprop4bit matches the reference", "[update][4bit]") { run_variant(Variant::RMSprop4bit); }

TEST_CASE("defaults of the three classes are SPEC section 2's", "[update]") {
  qrms::RMSprop a;
  qrms::RMSprop8bit b;
  qrms::RMSprop32bit c;
  for (const qrms::Optimizer1State *o : {static_cast<qrms::Optimizer1State *>(&a),
                                          static_cast<qrms::Optimizer1State *>(&b),
                                          static_cast<qrms::Optimizer1State *>(&c)}) {
    const qrms::Config &k = o->config();
    CHECK(k.lr == 1e-2f);
    CHECK(k.alpha == 0.99f);
    CHECK(k.eps == 1e-8f);
    CHECK(k.weight_decay == 0.0f);
    CHECK(k.momentum == 0.0f);
    CHECK_FALSE(k.centered);
    CHECK(k.args.min_8bit_size == 4096);
    CHECK(k.args.percentile_clipping == 100);
    CHECK(k.args.block_wise);
    CHECK(k.args.max_unorm == 0.0f);
    CHECK_FALSE(k.args.skip_zeros);
  }
  CHECK(a.config().optim_bits == 32);
  CHECK(b.config().optim_bits == 8);
  CHECK(c.config().optim_bits == 32);
}

TEST_CASE("default hyper-parameters over several steps match the reference", "[update]") {
  // lr 1e-2, alpha 0.99, eps 1e-8: exactly torch.optim.RMSprop's defaults.
  const bool eight = GENERATE(false, true);
  std::unique_ptr<qrms::Optimizer1State> opt;
  if (eight) opt = std::make_unique<qrms::RMSprop8bit>(); else opt = std::make_unique<qrms::RMSprop>();
  std::mt19937 rng(7);
  std::vector<Trainee> ts;
  ts.emplace_back(Dt::F32, 4096, rng);  // exactly min_8bit_size: 8-bit
  ts.emplace_back(Dt::F32, 4095, rng);  // one less: 32-bit
  ts[0].bits8 = eight;
  ts[1].bits8 = false;
  for (Trainee &t : ts) {
    const int64_t i = opt->add_param(t.p.data(), t.g.data(), qrms::Dtype::Float32, t.p.size());
    CHECK(opt->is_8bit(i) == t.bits8);
  }
  const std::vector<float> q = qrms::dynamic_map(true);
  qtest::run_and_check(*opt, ts, q.data(), 5, rng);
}

TEST_CASE("per-parameter configs override the optimizer's, and set_lr moves them all", "[update][config]") {
  const Dt dt = GENERATE(Dt::F32, Dt::BF16);
  qrms::Args args;
  args.min_8bit_size = 1000;
  qrms::RMSprop8bit opt(1e-2f, 0.9f, 1e-8f, 0.0f, 0.0f, false, args);
  std::mt19937 rng(99);
  std::vector<Trainee> ts;
  for (int64_t n : {5000, 5000, 3000, 500}) ts.emplace_back(dt, n, rng);
  for (Trainee &t : ts) opt.add_param(t.p.data(), t.g.data(), static_cast<qrms::Dtype>(dt), t.p.size());

  // 0: the optimizer's config (8-bit block-wise).
  ts[0].h = qref::Hyper{};
  ts[0].h.lr = 1e-2f;
  ts[0].h.alpha = 0.9f;
  ts[0].bits8 = true;
  // 1: kept 32-bit with its own lr and weight decay (an "embedding").
  qrms::Config c1 = opt.config();
  c1.optim_bits = 32;
  c1.lr = 5e-3f;
  c1.weight_decay = 0.05f;
  opt.set_param_config(1, c1);
  ts[1].h = ts[0].h;
  ts[1].h.lr = 5e-3f;
  ts[1].h.weight_decay = 0.05f;
  ts[1].bits8 = false;
  // 2: 8-bit per tensor with momentum, clipping and max_unorm.
  qrms::Config c2 = opt.config();
  c2.momentum = 0.8f;
  c2.alpha = 0.99f;
  c2.args.block_wise = false;
  c2.args.percentile_clipping = 10;
  c2.args.max_unorm = 0.3f;
  opt.set_param_config(2, c2);
  ts[2].h = ts[0].h;
  ts[2].h.alpha = 0.99f;
  ts[2].h.momentum = 0.8f;
  ts[2].h.percentile = 10;
  ts[2].h.max_unorm = 0.3f;
  ts[2].bits8 = true;
  ts[2].blocksize = 3000;
  // 3: 500 elements, made 8-bit by its own smaller min_8bit_size.
  qrms::Config c3 = opt.config();
  c3.args.min_8bit_size = 0;
  c3.args.skip_zeros = true;
  opt.set_param_config(3, c3);
  ts[3].h = ts[0].h;
  ts[3].h.skip_zeros = true;
  ts[3].bits8 = true;

  CHECK(opt.is_8bit(0));
  CHECK_FALSE(opt.is_8bit(1));
  CHECK(opt.is_8bit(2));
  CHECK(opt.is_8bit(3));
  CHECK(opt.param_config(1).lr == 5e-3f);
  CHECK(opt.param_config(0).lr == 1e-2f);

  const std::vector<float> q = qrms::dynamic_map(true);
  const float *qmap = q.data();
  qtest::RunStats st = qtest::run_and_check(opt, ts, qmap, 4, rng);

  // A schedule moves every parameter, own configs included.
  opt.set_lr(1e-3f);
  for (int64_t i = 0; i < 4; ++i) CHECK(opt.param_config(i).lr == 1e-3f);
  CHECK(opt.config().lr == 1e-3f);
  for (Trainee &t : ts) t.h.lr = 1e-3f;
  const qtest::RunStats st2 = qtest::run_and_check(opt, ts, qmap, 3, rng, 4);
  CHECK(st.clipped + st2.clipped > 0);
  CHECK(st.scaled + st2.scaled > 0);
}

TEST_CASE("set_param_config can change the state layout only before the first step", "[update][config]") {
  qrms::Args args;
  args.min_8bit_size = 0;
  qrms::RMSprop8bit opt(1e-2f, 0.99f, 1e-8f, 0.0f, 0.0f, false, args);
  std::mt19937 rng(5);
  Trainee a(Dt::F32, 1000, rng), b(Dt::F32, 1000, rng);
  opt.add_param(a.p.data(), a.g.data(), qrms::Dtype::Float32, 1000);
  opt.add_param(b.p.data(), b.g.data(), qrms::Dtype::Float32, 1000);

  qrms::Config to32 = opt.config();
  to32.optim_bits = 32;
  opt.set_param_config(1, to32);  // before any step: allowed
  CHECK_FALSE(opt.is_8bit(1));
  opt.set_param_config(1, opt.config());  // and back
  CHECK(opt.is_8bit(1));
  opt.set_param_config(1, to32);

  qtest::fill_grad(a.g, rng, 1.0f);
  qtest::fill_grad(b.g, rng, 1.0f);
  opt.step();
  const std::vector<uint8_t> before = opt.save();

  // After a step, every layout change is refused and changes nothing.
  qrms::Config c = opt.config();
  c.optim_bits = 32;
  CHECK_THROWS_AS(opt.set_param_config(0, c), qrms::ValueError);
  c = opt.config();
  c.momentum = 0.5f;
  CHECK_THROWS_AS(opt.set_param_config(0, c), qrms::ValueError);
  c = opt.config();
  c.args.block_wise = false;
  CHECK_THROWS_AS(opt.set_param_config(0, c), qrms::ValueError);
  qrms::Config back8 = opt.config();
  CHECK_THROWS_AS(opt.set_param_config(1, back8), qrms::ValueError);
  CHECK(opt.is_8bit(0));
  CHECK_FALSE(opt.is_8bit(1));
  CHECK_SAME(opt.save(), before);
  CHECK(opt.param_config(0).momentum == 0.0f);

  // Changes that keep the layout are fine after steps.
  c = opt.config();
  c.lr = 2e-3f;
  c.weight_decay = 0.1f;
  c.alpha = 0.9f;
  opt.set_param_config(0, c);
  CHECK(opt.param_config(0).lr == 2e-3f);
  CHECK(opt.param_config(0).weight_decay == 0.1f);
}

TEST_CASE("a parameter with a NULL grad is skipped and its step does not advance", "[update]") {
  const bool eight = GENERATE(false, true);
  qrms::Args args;
  args.min_8bit_size = 0;
  args.percentile_clipping = 50;
  qrms::RMSprop opt(1e-2f, 0.95f, 1e-8f, 0.01f, 0.9f, false, eight ? 8 : 32, args);
  std::mt19937 rng(11);
  std::vector<Trainee> ts;
  ts.emplace_back(Dt::F32, 700, rng);
  ts.emplace_back(Dt::F16, 600, rng);
  for (Trainee &t : ts) {
    opt.add_param(t.p.data(), nullptr, static_cast<qrms::Dtype>(t.p.dtype()), t.p.size());  // grads set later
    t.h.lr = 1e-2f;
    t.h.alpha = 0.95f;
    t.h.weight_decay = 0.01f;
    t.h.momentum = 0.9f;
    t.h.percentile = 50;
    t.bits8 = eight;
  }
  const std::vector<float> q = qrms::dynamic_map(true);

  // No grads at all: nothing moves.
  const qref::Tensor p0 = ts[0].p, p1 = ts[1].p;
  const std::vector<uint8_t> blob0 = opt.save();
  opt.step();
  CHECK(ts[0].p.same_bits(p0));
  CHECK(ts[1].p.same_bits(p1));
  CHECK(opt.get_step(0) == 0);
  CHECK(opt.get_step(1) == 0);
  CHECK_SAME(opt.save(), blob0);

  // Only parameter 0 has a grad.
  opt.set_grad(0, ts[0].g.data());
  ts[1].has_grad = false;
  qtest::run_and_check(opt, ts, q.data(), 3, rng);
  CHECK(opt.get_step(0) == 3);
  CHECK(opt.get_step(1) == 0);
  CHECK(ts[1].p.same_bits(p1));

  // Parameter 1 joins: its first step is a first step (clipping history
  // filled at its step 1), parameter 0 continues; then 0 is cleared again.
  opt.set_grad(1, ts[1].g.data());
  ts[1].has_grad = true;
  qtest::run_and_check(opt, ts, q.data(), 2, rng, 3);
  CHECK(opt.get_step(0) == 5);
  CHECK(opt.get_step(1) == 2);
  opt.set_grad(0, nullptr);
  ts[0].has_grad = false;
  qtest::run_and_check(opt, ts, q.data(), 1, rng, 5);
  CHECK(opt.get_step(0) == 5);
  CHECK(opt.get_step(1) == 3);
}

TEST_CASE("state_bytes counts the state buffers", "[update]") {
  const int64_t n = 5000, nb = (n + 255) / 256;
  std::vector<float> p(n), g(n), p2(100), g2(100);
  // Per parameter the state buffers, plus at most a few bytes of
  // bookkeeping (a step counter), the same for every layout.
  qrms::RMSprop32bit plain;
  CHECK(plain.state_bytes() == 0);
  plain.add_param(p.data(), g.data(), qrms::Dtype::Float32, n);
  const int64_t overhead = plain.state_bytes() - 4 * n;
  CHECK(overhead >= 0);
  CHECK(overhead <= 64);
  SECTION("32-bit with momentum") {
    qrms::RMSprop32bit o(1e-2f, 0.99f, 1e-8f, 0.0f, 0.9f);
    o.add_param(p.data(), g.data(), qrms::Dtype::Float32, n);
    CHECK(o.state_bytes() == 8 * n + overhead);
  }
  SECTION("8-bit block-wise, momentum, plus a small 32-bit fallback tensor") {
    qrms::RMSprop8bit o(1e-2f, 0.99f, 1e-8f, 0.0f, 0.9f);
    o.add_param(p.data(), g.data(), qrms::Dtype::Float32, n);
    CHECK(o.state_bytes() == 2 * (n + 4 * nb) + overhead);
    o.add_param(p2.data(), g2.data(), qrms::Dtype::Float32, 100);
    CHECK(o.state_bytes() == 2 * (n + 4 * nb) + 2 * 4 * 100 + 2 * overhead);
  }
  SECTION("8-bit per tensor") {
    qrms::Args a;
    a.block_wise = false;
    qrms::RMSprop8bit o(1e-2f, 0.99f, 1e-8f, 0.0f, 0.0f, false, a);
    std::vector<uint16_t> h(n), hg(n);
    o.add_param(h.data(), hg.data(), qrms::Dtype::BFloat16, n);
    CHECK(o.state_bytes() == n + 8 + overhead);
  }
  SECTION("percentile clipping keeps a 100-entry history") {
    qrms::Args a;
    a.percentile_clipping = 90;
    qrms::RMSprop8bit o(1e-2f, 0.99f, 1e-8f, 0.0f, 0.0f, false, a);
    o.add_param(p.data(), g.data(), qrms::Dtype::Float32, n);
    CHECK(o.state_bytes() >= n + 4 * nb + 400 + overhead);
  }
}
