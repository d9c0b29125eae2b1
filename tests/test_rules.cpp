// The hyper-parameter rules of SPEC section 2 and their messages, for
// qrms::validate, the three constructors and per-parameter configs.
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "check.hpp"
#include "qrmsprop/qrmsprop.hpp"

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

// The ways to apply a config; each must enforce the same rules.
enum class Path { Validate, RMSprop, RMSprop8bit, RMSprop32bit, RMSprop4bit, SetParamConfig };

const char *path_name(Path p) {
  switch (p) {
    case Path::Validate: return "qrms::validate";
    case Path::RMSprop: return "RMSprop()";
    case Path::RMSprop8bit: return "RMSprop8bit()";
    case Path::RMSprop32bit: return "RMSprop32bit()";
    case Path::RMSprop4bit: return "RMSprop4bit()";
    case Path::SetParamConfig: return "set_param_config";
  }
  return "?";
}

void apply(Path p, const qrms::Config &c) {
  switch (p) {
    case Path::Validate: qrms::validate(c); break;
    case Path::RMSprop:
      qrms::RMSprop(c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, c.centered, c.optim_bits, c.args);
      break;
    case Path::RMSprop8bit:
      qrms::RMSprop8bit(c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, c.centered, c.args);
      break;
    case Path::RMSprop32bit:
      qrms::RMSprop32bit(c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, c.centered, c.args);
      break;
    case Path::RMSprop4bit:
      qrms::RMSprop4bit(c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, c.centered, c.args);
      break;
    case Path::SetParamConfig: {
      qrms::RMSprop opt;
      std::vector<float> param(10, 1.0f), grad(10, 1.0f);
      opt.add_param(param.data(), grad.data(), qrms::Dtype::Float32, 10);
      const std::vector<uint8_t> before = opt.save();
      try {
        opt.set_param_config(0, c);
      } catch (...) {
        // A refused config changes nothing.
        CHECK_SAME(opt.save(), before);
        CHECK(opt.param_config(0).lr == 1e-2f);
        throw;
      }
      break;
    }
  }
}

// What a rule violation must produce.
struct Expect {
  enum Kind { NotImplemented, Value } kind;
  std::string message;  // exact when `exact`, else a substring
  bool exact;
};

void expect_error(Path p, const qrms::Config &c, const Expect &e) {
  INFO(path_name(p));
  bool thrown = false;
  try {
    apply(p, c);
  } catch (const qrms::NotImplementedError &err) {
    thrown = true;
    CHECK(e.kind == Expect::NotImplemented);
    CHECK(err.status() == QRMS_ERROR_NOT_IMPLEMENTED);
    if (e.exact) CHECK(std::string(err.what()) == e.message);
    else CHECK_THAT(err.what(), Catch::Contains(e.message));
  } catch (const qrms::ValueError &err) {
    thrown = true;
    CHECK(e.kind == Expect::Value);
    CHECK(err.status() == QRMS_ERROR_INVALID_ARGUMENT);
    if (e.exact) CHECK(std::string(err.what()) == e.message);
    else CHECK_THAT(err.what(), Catch::Contains(e.message));
  }
  CHECK(thrown);
}

std::vector<Path> paths_for(const qrms::Config &c) {
  // RMSprop8bit / RMSprop32bit / RMSprop4bit fix optim_bits, so bit-count
  // rules only go through the others (4-bit's block_wise rule through RMSprop4bit too).
  if (c.optim_bits == 4 && !c.args.block_wise)
    return {Path::Validate, Path::RMSprop, Path::RMSprop4bit, Path::SetParamConfig};
  if (c.optim_bits != 8 && c.optim_bits != 32) return {Path::Validate, Path::RMSprop, Path::SetParamConfig};
  return {Path::Validate, Path::RMSprop, Path::RMSprop8bit, Path::RMSprop32bit, Path::RMSprop4bit,
          Path::SetParamConfig};
}

struct Rule {
  const char *name;
  std::function<void(qrms::Config &)> set;
  Expect expect;
};

std::vector<Rule> rules() {
  using E = Expect;
  return {
      {"alpha == 0", [](qrms::Config &c) { c.alpha = 0.0f; },
       {E::NotImplemented, "RMSprop with alpha==0.0 is not supported!", true}},
      {"alpha == -0.0", [](qrms::Config &c) { c.alpha = -0.0f; },
       {E::NotImplemented, "RMSprop with alpha==0.0 is not supported!", true}},
      {"alpha == 0 before centered", [](qrms::Config &c) { c.alpha = 0.0f; c.centered = true; },
       {E::NotImplemented, "RMSprop with alpha==0.0 is not supported!", true}},
      {"alpha == 0 before everything",
       [](qrms::Config &c) { c.alpha = 0.0f; c.centered = true; c.optim_bits = 4; c.lr = -1.0f; c.eps = kNaN; },
       {E::NotImplemented, "RMSprop with alpha==0.0 is not supported!", true}},
      {"centered", [](qrms::Config &c) { c.centered = true; },
       {E::NotImplemented, "Centered RMSprop is not supported!", true}},
      {"centered before optim_bits and the rest",
       [](qrms::Config &c) { c.centered = true; c.optim_bits = 16; c.lr = -1.0f; c.momentum = 2.0f; },
       {E::NotImplemented, "Centered RMSprop is not supported!", true}},
      {"optim_bits 16", [](qrms::Config &c) { c.optim_bits = 16; },
       {E::NotImplemented, "Amount of optimizer bits not supported: 16", true}},
      {"optim_bits 0", [](qrms::Config &c) { c.optim_bits = 0; },
       {E::NotImplemented, "Amount of optimizer bits not supported: 0", true}},
      {"optim_bits -8", [](qrms::Config &c) { c.optim_bits = -8; },
       {E::NotImplemented, "Amount of optimizer bits not supported: -8", true}},
      {"optim_bits before lr", [](qrms::Config &c) { c.optim_bits = 7; c.lr = -1.0f; },
       {E::NotImplemented, "Amount of optimizer bits not supported: 7", true}},
      {"4-bit state is block-wise only", [](qrms::Config &c) { c.optim_bits = 4; c.args.block_wise = false; c.lr = -1.0f; },
       {E::NotImplemented, "4-bit state is block-wise only (block_wise must be true)", true}},
      {"lr < 0", [](qrms::Config &c) { c.lr = -0.5f; }, {E::Value, "Invalid learning rate: -0.5", true}},
      {"lr -1", [](qrms::Config &c) { c.lr = -1.0f; }, {E::Value, "Invalid learning rate: -1", false}},
      {"lr NaN", [](qrms::Config &c) { c.lr = kNaN; }, {E::Value, "Invalid learning rate: ", false}},
      {"lr inf", [](qrms::Config &c) { c.lr = kInf; }, {E::Value, "Invalid learning rate: ", false}},
      {"lr -inf", [](qrms::Config &c) { c.lr = -kInf; }, {E::Value, "Invalid learning rate: ", false}},
      {"alpha < 0", [](qrms::Config &c) { c.alpha = -0.1f; }, {E::Value, "alpha", false}},
      {"alpha == 1", [](qrms::Config &c) { c.alpha = 1.0f; }, {E::Value, "alpha", false}},
      {"alpha > 1", [](qrms::Config &c) { c.alpha = 1.5f; }, {E::Value, "alpha", false}},
      {"alpha NaN", [](qrms::Config &c) { c.alpha = kNaN; }, {E::Value, "alpha", false}},
      {"alpha inf", [](qrms::Config &c) { c.alpha = kInf; }, {E::Value, "alpha", false}},
      {"eps < 0", [](qrms::Config &c) { c.eps = -1e-8f; }, {E::Value, "eps", false}},
      {"eps NaN", [](qrms::Config &c) { c.eps = kNaN; }, {E::Value, "eps", false}},
      {"eps inf", [](qrms::Config &c) { c.eps = kInf; }, {E::Value, "eps", false}},
      {"weight_decay < 0", [](qrms::Config &c) { c.weight_decay = -0.1f; }, {E::Value, "weight_decay", false}},
      {"weight_decay NaN", [](qrms::Config &c) { c.weight_decay = kNaN; }, {E::Value, "weight_decay", false}},
      {"weight_decay inf", [](qrms::Config &c) { c.weight_decay = kInf; }, {E::Value, "weight_decay", false}},
      {"momentum < 0", [](qrms::Config &c) { c.momentum = -0.1f; }, {E::Value, "momentum", false}},
      {"momentum == 1", [](qrms::Config &c) { c.momentum = 1.0f; }, {E::Value, "momentum", false}},
      {"momentum NaN", [](qrms::Config &c) { c.momentum = kNaN; }, {E::Value, "momentum", false}},
      {"max_unorm < 0", [](qrms::Config &c) { c.args.max_unorm = -1.0f; }, {E::Value, "max_unorm", false}},
      {"max_unorm NaN", [](qrms::Config &c) { c.args.max_unorm = kNaN; }, {E::Value, "max_unorm", false}},
      {"max_unorm inf", [](qrms::Config &c) { c.args.max_unorm = kInf; }, {E::Value, "max_unorm", false}},
      {"min_8bit_size < 0", [](qrms::Config &c) { c.args.min_8bit_size = -1; }, {E::Value, "min_8bit_size", false}},
      {"percentile_clipping < 0", [](qrms::Config &c) { c.args.percentile_clipping = -1; },
       {E::Value, "percentile_clipping", false}},
      {"percentile_clipping > 100", [](qrms::Config &c) { c.args.percentile_clipping = 101; },
       {E::Value, "percentile_clipping", false}},
  };
}

}  // namespace

TEST_CASE("every rule gives its error and message on every path", "[rules]") {
  for (const Rule &r : rules()) {
    qrms::Config c;
    r.set(c);
    for (Path p : paths_for(c)) {
      INFO("rule: " << r.name);
      expect_error(p, c, r.expect);
    }
  }
}

TEST_CASE("RMSprop8bit and RMSprop32bit still check alpha and centered first", "[rules]") {
  qrms::Args bad;
  bad.percentile_clipping = 500;
  try {
    qrms::RMSprop8bit(-1.0f, 0.0f, -1.0f, 0.0f, 0.0f, true, bad);
    FAIL("no exception");
  } catch (const qrms::NotImplementedError &e) {
    CHECK(std::string(e.what()) == "RMSprop with alpha==0.0 is not supported!");
  }
  try {
    qrms::RMSprop32bit(-1.0f, 0.9f, -1.0f, 0.0f, 0.0f, true, bad);
    FAIL("no exception");
  } catch (const qrms::NotImplementedError &e) {
    CHECK(std::string(e.what()) == "Centered RMSprop is not supported!");
  }
}

TEST_CASE("boundary values that the rules allow", "[rules]") {
  std::vector<std::function<void(qrms::Config &)>> ok = {
      [](qrms::Config &c) { c.lr = 0.0f; },
      [](qrms::Config &c) { c.lr = 1e30f; },
      [](qrms::Config &c) { c.alpha = 0.99999994f; },  // largest float below 1
      [](qrms::Config &c) { c.alpha = 1e-30f; },
      [](qrms::Config &c) { c.eps = 0.0f; },
      [](qrms::Config &c) { c.weight_decay = 0.0f; },
      [](qrms::Config &c) { c.weight_decay = 10.0f; },
      [](qrms::Config &c) { c.momentum = 0.99999994f; },
      [](qrms::Config &c) { c.optim_bits = 8; },
      [](qrms::Config &c) { c.optim_bits = 4; },
      [](qrms::Config &c) { c.args.min_8bit_size = 0; },
      [](qrms::Config &c) { c.args.percentile_clipping = 0; },
      [](qrms::Config &c) { c.args.percentile_clipping = 99; },
      [](qrms::Config &c) { c.args.percentile_clipping = 100; },
      [](qrms::Config &c) { c.args.max_unorm = 0.0f; },
      [](qrms::Config &c) { c.args.max_unorm = 1.0f; },
  };
  for (size_t i = 0; i < ok.size(); ++i) {
    qrms::Config c;
    ok[i](c);
    INFO("case " << i);
    for (Path p : paths_for(c)) {
      INFO(path_name(p));
      CHECK_NOTHROW(apply(p, c));
    }
  }
}

TEST_CASE("set_lr follows the learning-rate rule and changes nothing when it refuses", "[rules]") {
  qrms::RMSprop8bit opt;
  std::vector<float> p(10), g(10);
  opt.add_param(p.data(), g.data(), qrms::Dtype::Float32, 10);
  qrms::Config own = opt.config();
  own.lr = 3e-3f;
  opt.set_param_config(0, own);
  for (float bad : {-0.5f, kNaN, kInf}) {
    try {
      opt.set_lr(bad);
      FAIL("set_lr accepted " << bad);
    } catch (const qrms::ValueError &e) {
      CHECK_THAT(e.what(), Catch::StartsWith("Invalid learning rate: "));
    }
  }
  CHECK(opt.config().lr == 1e-2f);
  CHECK(opt.param_config(0).lr == 3e-3f);
  opt.set_lr(0.0f);
  CHECK(opt.config().lr == 0.0f);
  CHECK(opt.param_config(0).lr == 0.0f);
}

TEST_CASE("argument errors of the C++ methods are ValueErrors naming the argument", "[rules]") {
  qrms::RMSprop opt;
  std::vector<float> p(16), g(16);
  CHECK_THROWS_AS(opt.add_param(nullptr, g.data(), qrms::Dtype::Float32, 16), qrms::ValueError);
  CHECK_THROWS_WITH(opt.add_param(nullptr, g.data(), qrms::Dtype::Float32, 16), Catch::Contains("param"));
  CHECK_THROWS_AS(opt.add_param(p.data(), g.data(), qrms::Dtype::Float32, 0), qrms::ValueError);
  CHECK_THROWS_WITH(opt.add_param(p.data(), g.data(), qrms::Dtype::Float32, -3), Catch::Contains("numel"));
  CHECK_THROWS_AS(opt.add_param(p.data(), g.data(), static_cast<qrms::Dtype>(7), 16), qrms::ValueError);
  CHECK_THROWS_WITH(opt.add_param(p.data(), g.data(), static_cast<qrms::Dtype>(7), 16), Catch::Contains("dtype"));
  char *raw = reinterpret_cast<char *>(p.data());
  CHECK_THROWS_AS(opt.add_param(raw + 1, g.data(), qrms::Dtype::Float32, 8), qrms::ValueError);
  CHECK_THROWS_AS(opt.add_param(raw + 2, g.data(), qrms::Dtype::Float32, 8), qrms::ValueError);
  CHECK_THROWS_AS(opt.add_param(raw + 1, nullptr, qrms::Dtype::BFloat16, 8), qrms::ValueError);
  CHECK_THROWS_AS(opt.add_param(p.data(), reinterpret_cast<char *>(g.data()) + 1, qrms::Dtype::Float32, 8),
                  qrms::ValueError);
  CHECK(opt.param_count() == 0);
  CHECK(opt.add_param(raw + 2, nullptr, qrms::Dtype::Float16, 8) == 0);  // 2-byte aligned is fine for 16-bit
  CHECK(opt.add_param(p.data(), g.data(), qrms::Dtype::Float32, 4) == 1);
  CHECK(opt.param_count() == 2);
  CHECK_THROWS_AS(opt.get_step(2), qrms::ValueError);
  CHECK_THROWS_AS(opt.get_step(-1), qrms::ValueError);
  CHECK_THROWS_AS(opt.set_grad(2, g.data()), qrms::ValueError);
  CHECK_THROWS_AS(opt.set_grad(1, reinterpret_cast<char *>(g.data()) + 1), qrms::ValueError);
  CHECK_THROWS_AS(opt.set_param_config(5, qrms::Config{}), qrms::ValueError);
  CHECK_THROWS_AS(opt.param_config(-1), qrms::ValueError);
  CHECK_THROWS_AS(opt.read_state(9, QRMS_STATE_SQUARE_AVG), qrms::ValueError);
  CHECK_THROWS_AS(opt.read_state(0, 2), qrms::ValueError);
  CHECK_THROWS_WITH(opt.read_state(0, QRMS_STATE_MOMENTUM), Catch::Contains("momentum"));
  CHECK_THROWS_AS(opt.is_8bit(4), qrms::ValueError);
}

TEST_CASE("CUDA optimizers without a usable device are DeviceErrors", "[rules]") {
  // This machine may or may not have a GPU; an index past any count fails.
  CHECK_THROWS_AS(qrms::RMSprop(1e-2f, 0.99f, 1e-8f, 0.0f, 0.0f, false, 32, qrms::Args{}, qrms::Device::CUDA, 4096),
                  qrms::DeviceError);
  CHECK_THROWS_AS(qrms::RMSprop(1e-2f, 0.99f, 1e-8f, 0.0f, 0.0f, false, 32, qrms::Args{},
                                static_cast<qrms::Device>(9)),
                  qrms::ValueError);
}
