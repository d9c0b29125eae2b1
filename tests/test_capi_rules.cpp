// The hyper-parameter rules through the C ABI: qrms_optimizer_create (every
// variant), qrms_optimizer_set_param_config and the core update entry
// points all give the same status and message, and change nothing.
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "capi_helpers.hpp"

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

struct Rule {
  const char *name;
  std::function<void(qrms_config &)> set;
  qrms_status_t status;
  std::string message;  // the message ends with it (exact) or contains it
  bool exact;
  bool in_update_params;  // the rule's field exists in qrms_update_params
};

std::vector<Rule> rules() {
  constexpr qrms_status_t NI = QRMS_ERROR_NOT_IMPLEMENTED, INV = QRMS_ERROR_INVALID_ARGUMENT;
  return {
      {"alpha == 0", [](qrms_config &c) { c.alpha = 0.0f; }, NI, "RMSprop with alpha==0.0 is not supported!", true, true},
      {"alpha == 0 first", [](qrms_config &c) { c.alpha = 0.0f; c.centered = 1; c.optim_bits = 7; c.lr = -1.0f; },
       NI, "RMSprop with alpha==0.0 is not supported!", true, false},
      {"alpha == 0 before lr", [](qrms_config &c) { c.alpha = 0.0f; c.lr = -1.0f; c.eps = kNaN; }, NI,
       "RMSprop with alpha==0.0 is not supported!", true, true},
      {"centered", [](qrms_config &c) { c.centered = 1; }, NI, "Centered RMSprop is not supported!", true, false},
      {"centered = 2 is true too", [](qrms_config &c) { c.centered = 2; }, NI, "Centered RMSprop is not supported!",
       true, false},
      {"centered before the rest", [](qrms_config &c) { c.centered = 1; c.optim_bits = 7; c.momentum = -1.0f; }, NI,
       "Centered RMSprop is not supported!", true, false},
      {"optim_bits 16", [](qrms_config &c) { c.optim_bits = 16; }, NI, "Amount of optimizer bits not supported: 16",
       true, false},
      {"optim_bits before lr", [](qrms_config &c) { c.optim_bits = 7; c.lr = kNaN; }, NI,
       "Amount of optimizer bits not supported: 7", true, false},
      {"4-bit without block_wise", [](qrms_config &c) { c.optim_bits = 4; c.block_wise = 0; }, NI,
       "4-bit state is block-wise only (block_wise must be true)", true, false},
      {"lr < 0", [](qrms_config &c) { c.lr = -0.5f; }, INV, "Invalid learning rate: -0.5", true, true},
      {"lr NaN", [](qrms_config &c) { c.lr = kNaN; }, INV, "Invalid learning rate: ", false, true},
      {"lr inf", [](qrms_config &c) { c.lr = kInf; }, INV, "Invalid learning rate: ", false, true},
      {"alpha < 0", [](qrms_config &c) { c.alpha = -0.5f; }, INV, "alpha", false, true},
      {"alpha 1", [](qrms_config &c) { c.alpha = 1.0f; }, INV, "alpha", false, true},
      {"alpha NaN", [](qrms_config &c) { c.alpha = kNaN; }, INV, "alpha", false, true},
      {"eps < 0", [](qrms_config &c) { c.eps = -1.0f; }, INV, "eps", false, true},
      {"eps NaN", [](qrms_config &c) { c.eps = kNaN; }, INV, "eps", false, true},
      {"eps inf", [](qrms_config &c) { c.eps = kInf; }, INV, "eps", false, true},
      {"weight_decay < 0", [](qrms_config &c) { c.weight_decay = -1.0f; }, INV, "weight_decay", false, true},
      {"weight_decay NaN", [](qrms_config &c) { c.weight_decay = kNaN; }, INV, "weight_decay", false, true},
      {"momentum 1", [](qrms_config &c) { c.momentum = 1.0f; }, INV, "momentum", false, true},
      {"momentum < 0", [](qrms_config &c) { c.momentum = -0.25f; }, INV, "momentum", false, true},
      {"momentum NaN", [](qrms_config &c) { c.momentum = kNaN; }, INV, "momentum", false, true},
      {"max_unorm < 0", [](qrms_config &c) { c.max_unorm = -1.0f; }, INV, "max_unorm", false, true},
      {"max_unorm NaN", [](qrms_config &c) { c.max_unorm = kNaN; }, INV, "max_unorm", false, true},
      {"max_unorm inf", [](qrms_config &c) { c.max_unorm = kInf; }, INV, "max_unorm", false, true},
      {"min_8bit_size < 0", [](qrms_config &c) { c.min_8bit_size = -5; }, INV, "min_8bit_size", false, false},
      {"percentile_clipping 101", [](qrms_config &c) { c.percentile_clipping = 101; }, INV, "percentile_clipping",
       false, false},
      {"percentile_clipping -1", [](qrms_config &c) { c.percentile_clipping = -1; }, INV, "percentile_clipping",
       false, false},
  };
}

void check_message(const Rule &r) {
  const std::string msg = qrms_last_error();
  INFO("message: \"" << msg << "\"");
  if (r.exact) {
    CHECK_THAT(msg, Catch::EndsWith(r.message));
  } else {
    CHECK_THAT(msg, Catch::Contains(r.message));
  }
}

}  // namespace

TEST_CASE("C ABI: every rule on qrms_optimizer_create and set_param_config", "[capi][rules]") {
  for (const Rule &r : rules()) {
    INFO("rule: " << r.name);
    qrms_config c = qtest::config();
    r.set(c);
    const bool bits_rule = c.optim_bits != 32;
    for (qrms_variant_t v : {QRMS_RMSPROP, QRMS_RMSPROP_8BIT, QRMS_RMSPROP_32BIT, QRMS_RMSPROP_4BIT}) {
      if (bits_rule && v != QRMS_RMSPROP) continue;  // the fixed variants ignore optim_bits
      INFO("variant " << v);
      qrms_optimizer_t opt = nullptr;
      CHECK(qrms_optimizer_create(&opt, v, &c, QRMS_DEVICE_CPU, 0) == r.status);
      check_message(r);
      CHECK(opt == nullptr);
    }
    qtest::COpt opt(QRMS_RMSPROP_8BIT, qtest::config());
    std::vector<float> p(300, 1.0f), g(300, 0.5f);
    QRMS_REQUIRE_OK(qrms_optimizer_add_param(opt.get(), p.data(), g.data(), QRMS_FLOAT32, 300, nullptr));
    const std::vector<uint8_t> before = opt.save();
    CHECK(qrms_optimizer_set_param_config(opt.get(), 0, &c) == r.status);
    check_message(r);
    CHECK_SAME(opt.save(), before);
  }
}

TEST_CASE("C ABI: the fixed variants ignore optim_bits but keep the other rules", "[capi][rules]") {
  qrms_config c = qtest::config();
  c.optim_bits = 16;
  qrms_optimizer_t opt = nullptr;
  QRMS_REQUIRE_OK(qrms_optimizer_create(&opt, QRMS_RMSPROP_8BIT, &c, QRMS_DEVICE_CPU, 0));
  qrms_optimizer_destroy(opt);
  QRMS_REQUIRE_OK(qrms_optimizer_create(&opt, QRMS_RMSPROP_32BIT, &c, QRMS_DEVICE_CPU, 0));
  qrms_optimizer_destroy(opt);
  QRMS_REQUIRE_OK(qrms_optimizer_create(&opt, QRMS_RMSPROP_4BIT, &c, QRMS_DEVICE_CPU, 0));
  qrms_optimizer_destroy(opt);
  opt = nullptr;
  c.centered = 1;
  QRMS_CHECK_FAILS(qrms_optimizer_create(&opt, QRMS_RMSPROP_8BIT, &c, QRMS_DEVICE_CPU, 0),
                   QRMS_ERROR_NOT_IMPLEMENTED, "Centered RMSprop is not supported!");
}

TEST_CASE("C ABI: the core updates apply the same rules and change nothing", "[capi][rules][core]") {
  const std::vector<float> q = qtest::signed_map();
  const int64_t n = 600;
  for (const Rule &r : rules()) {
    if (!r.in_update_params) continue;
    INFO("rule: " << r.name);
    qrms_config c = qtest::config();
    r.set(c);
    const qrms_update_params hp = qtest::update_params_of(c);
    // Buffers consistent with the (invalid) values, so that the rule is what fails.
    const bool mom = hp.momentum != 0.0f, un = hp.max_unorm != 0.0f;
    std::vector<float> p(n, 1.0f), g(n, 0.5f), s(n, 0.25f), b(n, 0.125f), unorm(2, 0.0f);
    std::vector<uint8_t> s8(n, 200), b8(n, 100);
    // Absmax for 600 elements: 3 blocks of 256, 5 of 128 (4-bit).
    std::vector<float> s_abs(5, 1.0f), b_abs(5, 1.0f), s_max{1.0f, 1.0f}, b_max{1.0f, 1.0f};
    const std::vector<float> p0 = p, s0 = s, b0 = b;
    CHECK(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), s.data(), mom ? b.data() : nullptr, n,
                            &hp, nullptr, un ? unorm.data() : nullptr, nullptr) == r.status);
    check_message(r);
    CHECK(qrms_update_8bit_blockwise(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), s8.data(), s_abs.data(),
                                     mom ? b8.data() : nullptr, mom ? b_abs.data() : nullptr, q.data(), n, &hp, nullptr,
                                     un ? unorm.data() : nullptr, nullptr) == r.status);
    check_message(r);
    CHECK(qrms_update_8bit_tensor(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), s8.data(), s_max.data(),
                                  mom ? b8.data() : nullptr, mom ? b_max.data() : nullptr, q.data(), n, &hp, nullptr,
                                  un ? unorm.data() : nullptr, nullptr) == r.status);
    check_message(r);
    CHECK(qrms_update_4bit_blockwise(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), s8.data(), s_abs.data(),
                                     mom ? b8.data() : nullptr, mom ? b_abs.data() : nullptr, n, &hp, nullptr,
                                     un ? unorm.data() : nullptr, nullptr) == r.status);
    check_message(r);
    CHECK_SAME(p, p0);
    CHECK_SAME(s, s0);
    CHECK_SAME(b, b0);
    CHECK(std::all_of(s8.begin(), s8.end(), [](uint8_t x) { return x == 200; }));
    CHECK(std::all_of(b8.begin(), b8.end(), [](uint8_t x) { return x == 100; }));
    CHECK_SAME(s_abs, std::vector<float>(5, 1.0f));
    CHECK_SAME(s_max, std::vector<float>(2, 1.0f));
  }
}

TEST_CASE("C ABI: argument errors of the core entry points", "[capi][core]") {
  const std::vector<float> q = qtest::signed_map();
  const int64_t n = 600;
  std::vector<float> p(n, 1.0f), g(n, 0.5f), s(n), b(n), unorm(2), hist(100), abs8(5), mx(2);
  std::vector<uint8_t> c8(n), m8(n);
  int64_t step = 0;
  float scale = 0.0f;
  qrms_update_params hp;
  qrms_update_params_init(&hp);
  constexpr qrms_status_t INV = QRMS_ERROR_INVALID_ARGUMENT;
  char *raw = reinterpret_cast<char *>(p.data());

  QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), s.data(), nullptr, n, nullptr,
                                     nullptr, nullptr, nullptr),
                   INV, "hp");
  QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, nullptr, g.data(), s.data(), nullptr, n, &hp,
                                     nullptr, nullptr, nullptr),
                   INV, "param");
  QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), nullptr, s.data(), nullptr, n, &hp,
                                     nullptr, nullptr, nullptr),
                   INV, "grad");
  QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), nullptr, nullptr, n, &hp,
                                     nullptr, nullptr, nullptr),
                   INV, "square_avg");
  QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, raw + 1, g.data(), s.data(), nullptr, 8, &hp,
                                     nullptr, nullptr, nullptr),
                   INV, "align");
  QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), s.data(), nullptr, 0, &hp,
                                     nullptr, nullptr, nullptr),
                   INV, "n ");
  QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CPU, 5, p.data(), g.data(), s.data(), nullptr, n, &hp, nullptr,
                                     nullptr, nullptr),
                   INV, "dtype");
  QRMS_CHECK_FAILS(qrms_update_32bit(9, QRMS_FLOAT32, p.data(), g.data(), s.data(), nullptr, n, &hp, nullptr,
                                     nullptr, nullptr),
                   INV, "device");
  // Momentum buffer exactly when momentum > 0; unorm scratch exactly when max_unorm > 0.
  QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), s.data(), b.data(), n, &hp,
                                     nullptr, nullptr, nullptr),
                   INV, "momentum");
  hp.momentum = 0.9f;
  QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), s.data(), nullptr, n, &hp,
                                     nullptr, nullptr, nullptr),
                   INV, "momentum");
  QRMS_CHECK_FAILS(qrms_update_8bit_blockwise(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), c8.data(),
                                              abs8.data(), m8.data(), nullptr, q.data(), n, &hp, nullptr, nullptr,
                                              nullptr),
                   INV, "momentum");
  hp.momentum = 0.0f;
  hp.max_unorm = 1.0f;
  QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), s.data(), nullptr, n, &hp,
                                     nullptr, nullptr, nullptr),
                   INV, "unorm");
  hp.max_unorm = 0.0f;
  QRMS_CHECK_FAILS(qrms_update_8bit_blockwise(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), c8.data(),
                                              abs8.data(), nullptr, nullptr, nullptr, n, &hp, nullptr, nullptr,
                                              nullptr),
                   INV, "qmap");
  QRMS_CHECK_FAILS(qrms_update_8bit_blockwise(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), c8.data(), nullptr,
                                              nullptr, nullptr, q.data(), n, &hp, nullptr, nullptr, nullptr),
                   INV, "absmax");
  QRMS_CHECK_FAILS(qrms_update_8bit_tensor(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), nullptr, mx.data(),
                                           nullptr, nullptr, q.data(), n, &hp, nullptr, nullptr, nullptr),
                   INV, "square_avg");
  // 4-bit: the same checks, and no qmap to give.
  QRMS_CHECK_FAILS(qrms_update_4bit_blockwise(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), c8.data(), nullptr,
                                              nullptr, nullptr, n, &hp, nullptr, nullptr, nullptr),
                   INV, "absmax");
  QRMS_CHECK_FAILS(qrms_update_4bit_blockwise(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), nullptr, abs8.data(),
                                              nullptr, nullptr, n, &hp, nullptr, nullptr, nullptr),
                   INV, "square_avg");
  QRMS_CHECK_FAILS(qrms_update_4bit_blockwise(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), c8.data(),
                                              abs8.data(), m8.data(), abs8.data(), n, &hp, nullptr, nullptr, nullptr),
                   INV, "momentum");
  QRMS_CHECK_FAILS(qrms_update_4bit_blockwise(QRMS_DEVICE_CPU, QRMS_BFLOAT16, raw + 1, g.data(), c8.data(),
                                              abs8.data(), nullptr, nullptr, 8, &hp, nullptr, nullptr, nullptr),
                   INV, "align");
  // Float buffers off their alignment: refused, none written.
  float *abs_off = reinterpret_cast<float *>(reinterpret_cast<char *>(abs8.data()) + 1);
  float *s_off = reinterpret_cast<float *>(reinterpret_cast<char *>(s.data()) + 2);
  const std::vector<float> p_before = p;
  QRMS_CHECK_FAILS(qrms_update_4bit_blockwise(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), c8.data(), abs_off,
                                              nullptr, nullptr, 8, &hp, nullptr, nullptr, nullptr),
                   INV, "square_avg absmax/max holds floats and must be aligned");
  QRMS_CHECK_FAILS(qrms_update_8bit_blockwise(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), c8.data(), abs_off,
                                              nullptr, nullptr, q.data(), 8, &hp, nullptr, nullptr, nullptr),
                   INV, "aligned");
  QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), s_off, nullptr, 8, &hp, nullptr,
                                     nullptr, nullptr),
                   INV, "square_avg holds floats");
  const float one = 1.0f;
  const float *gs_off = reinterpret_cast<const float *>(reinterpret_cast<const char *>(&one) + 1);
  QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), s.data(), nullptr, 8, &hp,
                                     gs_off, nullptr, nullptr),
                   INV, "gnorm_scale holds floats");
  CHECK_SAME(p, p_before);
  QRMS_CHECK_FAILS(qrms_update_8bit_tensor(QRMS_DEVICE_CPU, QRMS_BFLOAT16, raw + 1, g.data(), c8.data(), mx.data(),
                                           nullptr, nullptr, q.data(), 8, &hp, nullptr, nullptr, nullptr),
                   INV, "align");

  QRMS_CHECK_FAILS(qrms_percentile_clipping(QRMS_DEVICE_CPU, QRMS_FLOAT32, g.data(), n, hist.data(), &step, 100,
                                            &scale, nullptr),
                   INV, "percentile");
  QRMS_CHECK_FAILS(qrms_percentile_clipping(QRMS_DEVICE_CPU, QRMS_FLOAT32, g.data(), n, hist.data(), &step, -1,
                                            &scale, nullptr),
                   INV, "percentile");
  QRMS_CHECK_FAILS(qrms_percentile_clipping(QRMS_DEVICE_CPU, QRMS_FLOAT32, nullptr, n, hist.data(), &step, 5,
                                            &scale, nullptr),
                   INV, "NULL");
  QRMS_CHECK_FAILS(qrms_percentile_clipping(QRMS_DEVICE_CPU, QRMS_FLOAT32, g.data(), n, hist.data(), nullptr, 5,
                                            &scale, nullptr),
                   INV, "NULL");
  QRMS_CHECK_FAILS(qrms_percentile_clipping(QRMS_DEVICE_CPU, QRMS_FLOAT32, g.data(), 0, hist.data(), &step, 5,
                                            &scale, nullptr),
                   INV, "n ");
  QRMS_CHECK_FAILS(qrms_percentile_clipping(QRMS_DEVICE_CPU, 3, g.data(), n, hist.data(), &step, 5, &scale, nullptr),
                   INV, "dtype");
  CHECK(step == 0);  // no failing call advanced it
  CHECK_SAME(p, std::vector<float>(n, 1.0f));
}
