// The C ABI (libqrmsprop.so): statuses and messages, struct_size, argument
// checks, per-thread errors, devices, thread-count independence, and the
// optimizer driven through it against the reference.
#include <atomic>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "capi_helpers.hpp"

using qref::Dt;
using qtest::COpt;
using qtest::Trainee;

namespace {

qref::Hyper hyper_of(const qrms_config &c) {
  qref::Hyper h = qtest::hyper_of(qtest::update_params_of(c));
  h.percentile = c.percentile_clipping;
  return h;
}

bool have_gpu_device_node() {
  std::error_code ec;
  return std::filesystem::exists("/dev/nvidia0", ec);
}

}  // namespace

TEST_CASE("version and status strings", "[capi]") {
  CHECK(qrms_version() == QRMS_VERSION_NUMBER);
  CHECK(QRMS_VERSION_NUMBER == QRMS_VERSION_MAJOR * 10000 + QRMS_VERSION_MINOR * 100 + QRMS_VERSION_PATCH);
  const qrms_status_t all[] = {QRMS_SUCCESS,         QRMS_ERROR_INVALID_ARGUMENT, QRMS_ERROR_NOT_IMPLEMENTED,
                               QRMS_ERROR_DEVICE,    QRMS_ERROR_OUT_OF_MEMORY,    QRMS_ERROR_BAD_STATE,
                               QRMS_ERROR_INTERNAL};
  // The published values never change.
  CHECK(QRMS_SUCCESS == 0);
  CHECK(QRMS_ERROR_INVALID_ARGUMENT == 1);
  CHECK(QRMS_ERROR_NOT_IMPLEMENTED == 2);
  CHECK(QRMS_ERROR_DEVICE == 3);
  CHECK(QRMS_ERROR_OUT_OF_MEMORY == 4);
  CHECK(QRMS_ERROR_BAD_STATE == 5);
  CHECK(QRMS_ERROR_INTERNAL == 6);
  std::vector<std::string> seen;
  for (qrms_status_t s : all) {
    const char *text = qrms_status_string(s);
    REQUIRE(text != nullptr);
    CHECK(std::string(text) != "");
    CHECK(std::string(text) != "unknown status");
    CHECK(std::find(seen.begin(), seen.end(), std::string(text)) == seen.end());
    seen.emplace_back(text);
    CHECK(qrms_status_string(s) == text);  // static
  }
  for (qrms_status_t s : {-1, 7, 1000, INT32_MIN}) {
    REQUIRE(qrms_status_string(s) != nullptr);
    CHECK(std::string(qrms_status_string(s)) == "unknown status");
  }
}

TEST_CASE("qrms_config_init gives SPEC section 2's defaults", "[capi]") {
  qrms_config c;
  std::memset(&c, 0x7f, sizeof(c));
  qrms_config_init(&c);
  CHECK(c.struct_size == sizeof(qrms_config));
  CHECK(c.lr == 1e-2f);
  CHECK(c.alpha == 0.99f);
  CHECK(c.eps == 1e-8f);
  CHECK(c.weight_decay == 0.0f);
  CHECK(c.momentum == 0.0f);
  CHECK(c.centered == 0);
  CHECK(c.optim_bits == 32);
  CHECK(c.min_8bit_size == 4096);
  CHECK(c.percentile_clipping == 100);
  CHECK(c.block_wise == 1);
  CHECK(c.max_unorm == 0.0f);
  CHECK(c.skip_zeros == 0);
  CHECK(c.skip_nonfinite == 0);
  (qrms_config_init)(nullptr);  // the exported function: harmless

  // The exported function (what old binaries and FFI call) writes exactly
  // the first published struct, 64 bytes, and says so in struct_size.
  unsigned char raw[sizeof(qrms_config) + 64];
  std::memset(raw, 0xCD, sizeof(raw));
  (qrms_config_init)(reinterpret_cast<qrms_config *>(raw));
  qrms_config first;
  std::memcpy(&first, raw, sizeof(first));
  CHECK(first.struct_size == 64);
  CHECK(first.optim_bits == 32);
  CHECK(first.skip_zeros == 0);
  size_t past = 0;
  for (size_t i = 64; i < sizeof(raw); ++i) past += raw[i] != 0xCD ? 1 : 0;
  CHECK(past == 0);

  qrms_update_params hp;
  std::memset(&hp, 0x7f, sizeof(hp));
  qrms_update_params_init(&hp);
  CHECK(hp.struct_size == sizeof(qrms_update_params));
  CHECK(hp.lr == 1e-2f);
  CHECK(hp.alpha == 0.99f);
  CHECK(hp.eps == 1e-8f);
  CHECK(hp.weight_decay == 0.0f);
  CHECK(hp.momentum == 0.0f);
  CHECK(hp.max_unorm == 0.0f);
  CHECK(hp.skip_zeros == 0);
}

TEST_CASE("struct_size: smaller than the first struct is refused, exact and larger work", "[capi]") {
  // The first published qrms_config ends with skip_zeros.
  const size_t v1 = offsetof(qrms_config, skip_zeros) + sizeof(int32_t);
  REQUIRE(sizeof(qrms_config) >= v1);
  qrms_config c = qtest::config();
  qrms_optimizer_t opt = nullptr;
  for (size_t bad : {size_t(0), size_t(1), sizeof(size_t), offsetof(qrms_config, lr) + 4,
                     offsetof(qrms_config, skip_zeros), v1 - 1}) {
    c.struct_size = bad;
    INFO("struct_size " << bad);
    QRMS_CHECK_FAILS(qrms_optimizer_create(&opt, QRMS_RMSPROP, &c, QRMS_DEVICE_CPU, 0), QRMS_ERROR_INVALID_ARGUMENT,
                     "struct_size");
    CHECK(opt == nullptr);
  }
  // Exactly the first published size (an old caller) and exactly this
  // header's size both work.
  for (size_t good : {v1, sizeof(qrms_config)}) {
    c.struct_size = good;
    INFO("struct_size " << good);
    QRMS_REQUIRE_OK(qrms_optimizer_create(&opt, QRMS_RMSPROP_8BIT, &c, QRMS_DEVICE_CPU, 0));
    qrms_optimizer_destroy(opt);
    opt = nullptr;
  }
  c.struct_size = sizeof(qrms_config);
  QRMS_REQUIRE_OK(qrms_optimizer_create(&opt, QRMS_RMSPROP, &c, QRMS_DEVICE_CPU, 0));
  std::vector<float> p(8, 1.0f), g(8, 1.0f);
  QRMS_REQUIRE_OK(qrms_optimizer_add_param(opt, p.data(), g.data(), QRMS_FLOAT32, 8, nullptr));
  c.struct_size = offsetof(qrms_config, skip_zeros);
  QRMS_CHECK_FAILS(qrms_optimizer_set_param_config(opt, 0, &c), QRMS_ERROR_INVALID_ARGUMENT, "struct_size");

  // A caller built against a later header passes a larger struct: the
  // fields this library knows are read; unknown trailing fields must be zero.
  struct Bigger {
    qrms_config base;
    float future[4];
  } big;
  std::memset(&big, 0, sizeof(big));
  qrms_config_init(&big.base);
  big.base.struct_size = sizeof(Bigger);
  big.base.lr = 0.5f;
  QRMS_REQUIRE_OK(qrms_optimizer_set_param_config(opt, 0, &big.base));
  big.future[2] = -1.0f;
  QRMS_CHECK_FAILS(qrms_optimizer_set_param_config(opt, 0, &big.base), QRMS_ERROR_INVALID_ARGUMENT, "qrms_config");
  // The accepted override took effect: one step with g = 1 from s = 0
  // moves the param by lr / (sqrt(1 - alpha) + eps).
  QRMS_REQUIRE_OK(qrms_optimizer_step(opt, nullptr));
  const float expect = 1.0f - 0.5f * (1.0f / (std::sqrt((1.0f - 0.99f) * 1.0f * 1.0f) + 1e-8f));
  CHECK(qtest::param_close(Dt::F32, p[0], expect));
  qrms_optimizer_destroy(opt);

  // A struct of exactly the first published size gets the defaults of the
  // fields appended later: it behaves as the same values in a full struct.
  {
    std::vector<float> pa(300, 1.0f), pb(300, 1.0f), ga(300, 0.5f);
    qrms_config full = qtest::config(3e-2f);
    full.momentum = 0.5f;
    full.min_8bit_size = 0;
    qrms_config old = full;
    old.struct_size = v1;
    COpt a(QRMS_RMSPROP_8BIT, full), b(QRMS_RMSPROP_8BIT, old);
    qref::Tensor ta(Dt::F32, 300), tb(Dt::F32, 300), tg(Dt::F32, 300);
    std::mt19937 rng(1);
    qtest::fill_normal(ta, rng, 1.0f);
    tb = ta;
    qtest::fill_grad(tg, rng, 1.0f);
    a.add(ta, &tg);
    b.add(tb, &tg);
    a.step();
    b.step();
    CHECK(ta.same_bits(tb));
  }

  qrms_update_params hp;
  qrms_update_params_init(&hp);
  hp.struct_size = offsetof(qrms_update_params, skip_zeros);
  std::vector<float> s(8, 0.0f);
  p.assign(8, 1.0f);
  QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), s.data(), nullptr, 8, &hp,
                                     nullptr, nullptr, nullptr),
                   QRMS_ERROR_INVALID_ARGUMENT, "struct_size");
  CHECK(p[0] == 1.0f);
  hp.struct_size = sizeof(hp);
  QRMS_REQUIRE_OK(qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, p.data(), g.data(), s.data(), nullptr, 8, &hp,
                                    nullptr, nullptr, nullptr));
  CHECK(p[0] < 1.0f);
}

TEST_CASE("cfg NULL means the defaults, and the variants fix optim_bits", "[capi]") {
  const int64_t n = 5000, nb = (n + 255) / 256;
  std::vector<float> p(n), g(n);
  auto bytes_of = [&](qrms_variant_t v, const qrms_config *c) {
    qrms_optimizer_t o = nullptr;
    const qrms_status_t st = qrms_optimizer_create(&o, v, c, QRMS_DEVICE_CPU, 0);
    INFO(qrms_last_error());
    REQUIRE(st == QRMS_SUCCESS);
    REQUIRE(qrms_optimizer_add_param(o, p.data(), g.data(), QRMS_FLOAT32, n, nullptr) == QRMS_SUCCESS);
    int64_t b = -1;
    REQUIRE(qrms_optimizer_state_bytes(o, &b) == QRMS_SUCCESS);
    int64_t count = -1;
    REQUIRE(qrms_optimizer_param_count(o, &count) == QRMS_SUCCESS);
    CHECK(count == 1);
    qrms_optimizer_destroy(o);
    return b;
  };
  // The state buffers dominate; a parameter may add a few bytes of
  // bookkeeping (its step counter) but never more than 64.
  const int64_t f32 = 4 * n, block8 = n + 4 * nb, tensor8 = n + 8;
  const int64_t base32 = bytes_of(QRMS_RMSPROP, nullptr);
  const int64_t overhead = base32 - f32;
  CHECK(overhead >= 0);
  CHECK(overhead <= 64);
  CHECK(bytes_of(QRMS_RMSPROP_8BIT, nullptr) == block8 + overhead);
  CHECK(bytes_of(QRMS_RMSPROP_32BIT, nullptr) == f32 + overhead);
  qrms_config c = qtest::config();
  c.optim_bits = 8;
  CHECK(bytes_of(QRMS_RMSPROP, &c) == block8 + overhead);
  CHECK(bytes_of(QRMS_RMSPROP_32BIT, &c) == f32 + overhead);
  c.optim_bits = 32;
  CHECK(bytes_of(QRMS_RMSPROP_8BIT, &c) == block8 + overhead);
  c.block_wise = 0;
  CHECK(bytes_of(QRMS_RMSPROP_8BIT, &c) == tensor8 + overhead);
  c.momentum = 0.9f;
  CHECK(bytes_of(QRMS_RMSPROP_8BIT, &c) == 2 * tensor8 + overhead);
  c.min_8bit_size = n + 1;
  CHECK(bytes_of(QRMS_RMSPROP_8BIT, &c) == 2 * f32 + overhead);
  qrms_optimizer_destroy(nullptr);  // fine
}

TEST_CASE("the optimizer through the C ABI matches the reference", "[capi][update]") {
  struct Case {
    const char *name;
    qrms_variant_t variant;
    int32_t bits;
    int32_t block_wise;
  };
  const Case cases[] = {{"RMSPROP 32", QRMS_RMSPROP, 32, 1},
                        {"RMSPROP 8", QRMS_RMSPROP, 8, 1},
                        {"RMSPROP_8BIT block-wise", QRMS_RMSPROP_8BIT, 32, 1},
                        {"RMSPROP_8BIT per tensor", QRMS_RMSPROP_8BIT, 32, 0},
                        {"RMSPROP_32BIT", QRMS_RMSPROP_32BIT, 8, 1}};
  const size_t ci = GENERATE(range<size_t>(0, 5));
  const Dt dt = GENERATE(Dt::F32, Dt::F16, Dt::BF16);
  const bool all_options = GENERATE(false, true);
  const Case &k = cases[ci];
  INFO(k.name << ", " << qref::dt_name(dt) << (all_options ? ", all options" : ", plain"));

  qrms_config c = qtest::config(2e-2f);
  c.alpha = 0.9f;
  c.optim_bits = k.bits;
  c.block_wise = k.block_wise;
  c.min_8bit_size = 1000;
  if (all_options) {
    c.momentum = 0.9f;
    c.weight_decay = 0.02f;
    c.skip_zeros = 1;
    c.percentile_clipping = 5;
    c.max_unorm = 0.5f;
  }
  const bool eight = k.variant == QRMS_RMSPROP_8BIT || (k.variant == QRMS_RMSPROP && k.bits == 8);
  COpt opt(k.variant, c);
  std::mt19937 rng(static_cast<uint32_t>(ci * 7 + static_cast<size_t>(dt)));
  std::vector<Trainee> ts;
  for (int64_t n : {4000, 999}) {
    Trainee t(dt, n, rng);
    t.h = hyper_of(c);
    t.bits8 = eight && n >= 1000;
    t.blocksize = k.block_wise ? 256 : n;
    ts.push_back(std::move(t));
  }
  for (size_t i = 0; i < ts.size(); ++i) CHECK(opt.add(ts[i].p, &ts[i].g) == static_cast<int64_t>(i));
  const std::vector<float> q = qtest::signed_map();
  const qtest::RunStats st = qtest::run_and_check(opt, ts, q.data(), 6, rng);
  if (all_options) {
    CHECK(st.clipped > 0);
    CHECK(st.scaled > 0);
    CHECK(st.skipped > 0);
  }
}

TEST_CASE("C ABI: NULL grad skips the parameter, set_lr reaches own configs", "[capi][update]") {
  qrms_config c = qtest::config(1e-2f);
  c.min_8bit_size = 0;
  COpt opt(QRMS_RMSPROP_8BIT, c);
  std::mt19937 rng(3);
  std::vector<Trainee> ts;
  ts.emplace_back(Dt::F32, 600, rng);
  ts.emplace_back(Dt::BF16, 600, rng);
  opt.add(ts[0].p, &ts[0].g);
  opt.add(ts[1].p, nullptr);
  for (Trainee &t : ts) {
    t.h = hyper_of(c);
    t.bits8 = true;
  }
  qrms_config own = c;
  own.optim_bits = 32;
  own.lr = 5e-3f;
  QRMS_REQUIRE_OK(qrms_optimizer_set_param_config(opt.get(), 1, &own));
  ts[1].h.lr = 5e-3f;
  ts[1].bits8 = false;
  ts[1].has_grad = false;
  const std::vector<float> q = qtest::signed_map();
  qtest::run_and_check(opt, ts, q.data(), 2, rng);
  CHECK(opt.get_step(0) == 2);
  CHECK(opt.get_step(1) == 0);

  QRMS_REQUIRE_OK(qrms_optimizer_set_grad(opt.get(), 1, ts[1].g.data()));
  ts[1].has_grad = true;
  QRMS_REQUIRE_OK(qrms_optimizer_set_lr(opt.get(), 1e-3f));
  for (Trainee &t : ts) t.h.lr = 1e-3f;
  qtest::run_and_check(opt, ts, q.data(), 2, rng, 2);
  CHECK(opt.get_step(0) == 4);
  CHECK(opt.get_step(1) == 2);

  // Layout changes after the first step are refused; nothing changes.
  const std::vector<uint8_t> before = opt.save();
  own.optim_bits = 8;
  QRMS_CHECK_FAILS(qrms_optimizer_set_param_config(opt.get(), 1, &own), QRMS_ERROR_INVALID_ARGUMENT, "step");
  CHECK_SAME(opt.save(), before);
  QRMS_CHECK_FAILS(qrms_optimizer_set_lr(opt.get(), -0.5f), QRMS_ERROR_INVALID_ARGUMENT,
                   "Invalid learning rate: -0.5");
  CHECK_SAME(opt.save(), before);
}

TEST_CASE("argument errors are INVALID_ARGUMENT with a message naming the argument", "[capi]") {
  COpt opt(QRMS_RMSPROP, qtest::config());
  qrms_optimizer_t h = opt.get();
  std::vector<float> p(64, 1.0f), g(64, 1.0f), out(64);
  std::vector<uint16_t> p16(64), g16(64);
  char *raw = reinterpret_cast<char *>(p.data());
  int64_t idx = -1, v = 0;
  constexpr qrms_status_t INV = QRMS_ERROR_INVALID_ARGUMENT;

  qrms_optimizer_t none = nullptr;
  QRMS_CHECK_FAILS(qrms_optimizer_create(nullptr, QRMS_RMSPROP, nullptr, QRMS_DEVICE_CPU, 0), INV, "out");
  QRMS_CHECK_FAILS(qrms_optimizer_create(&none, 4, nullptr, QRMS_DEVICE_CPU, 0), INV, "variant");
  QRMS_CHECK_FAILS(qrms_optimizer_create(&none, -1, nullptr, QRMS_DEVICE_CPU, 0), INV, "variant");
  QRMS_CHECK_FAILS(qrms_optimizer_create(&none, QRMS_RMSPROP, nullptr, 2, 0), INV, "device");
  CHECK(none == nullptr);

  QRMS_CHECK_FAILS(qrms_optimizer_add_param(nullptr, p.data(), g.data(), QRMS_FLOAT32, 64, &idx), INV, "NULL");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param(h, nullptr, g.data(), QRMS_FLOAT32, 64, &idx), INV, "param");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param(h, raw + 1, g.data(), QRMS_FLOAT32, 8, &idx), INV, "align");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param(h, raw + 2, g.data(), QRMS_FLOAT32, 8, &idx), INV, "align");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param(h, reinterpret_cast<char *>(p16.data()) + 1, g16.data(), QRMS_FLOAT16, 8,
                                            &idx),
                   INV, "align");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param(h, reinterpret_cast<char *>(p16.data()) + 1, g16.data(), QRMS_BFLOAT16,
                                            8, &idx),
                   INV, "align");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param(h, p.data(), reinterpret_cast<char *>(g.data()) + 1, QRMS_FLOAT32, 8,
                                            &idx),
                   INV, "align");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param(h, p.data(), g.data(), QRMS_FLOAT32, 0, &idx), INV, "numel");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param(h, p.data(), g.data(), QRMS_FLOAT32, -64, &idx), INV, "numel");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param(h, p.data(), g.data(), 3, 64, &idx), INV, "dtype");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param(h, p.data(), g.data(), -1, 64, &idx), INV, "dtype");
  QRMS_REQUIRE_OK(qrms_optimizer_param_count(h, &v));
  CHECK(v == 0);
  CHECK(idx == -1);

  QRMS_REQUIRE_OK(qrms_optimizer_add_param(h, p.data(), g.data(), QRMS_FLOAT32, 64, nullptr));
  QRMS_REQUIRE_OK(qrms_optimizer_add_param(h, p16.data(), nullptr, QRMS_FLOAT16, 64, &idx));
  CHECK(idx == 1);
  QRMS_CHECK_FAILS(qrms_optimizer_add_param(h, p.data(), g.data(), QRMS_FLOAT32, 64, &idx), INV, "already");

  for (int64_t bad : {int64_t(-1), int64_t(2), int64_t(1) << 40}) {
    INFO("index " << bad);
    QRMS_CHECK_FAILS(qrms_optimizer_set_grad(h, bad, g.data()), INV, "index");
    QRMS_CHECK_FAILS(qrms_optimizer_get_step(h, bad, &v), INV, "index");
    QRMS_CHECK_FAILS(qrms_optimizer_read_state(h, bad, 0, out.data()), INV, "index");
    qrms_config c = qtest::config();
    QRMS_CHECK_FAILS(qrms_optimizer_set_param_config(h, bad, &c), INV, "index");
  }
  QRMS_CHECK_FAILS(qrms_optimizer_set_grad(h, 1, reinterpret_cast<char *>(g16.data()) + 1), INV, "align");
  QRMS_CHECK_FAILS(qrms_optimizer_set_param_config(h, 0, nullptr), INV, "cfg");
  QRMS_CHECK_FAILS(qrms_optimizer_get_step(h, 0, nullptr), INV, "step_out");
  QRMS_CHECK_FAILS(qrms_optimizer_read_state(h, 0, 0, nullptr), INV, "out");
  QRMS_CHECK_FAILS(qrms_optimizer_read_state(h, 0, 2, out.data()), INV, "which");
  QRMS_CHECK_FAILS(qrms_optimizer_read_state(h, 0, -1, out.data()), INV, "which");
  QRMS_CHECK_FAILS(qrms_optimizer_read_state(h, 0, QRMS_STATE_MOMENTUM, out.data()), INV, "momentum");
  QRMS_CHECK_FAILS(qrms_optimizer_state_bytes(h, nullptr), INV, "bytes_out");
  QRMS_CHECK_FAILS(qrms_optimizer_param_count(h, nullptr), INV, "count_out");
  size_t size = 0;
  QRMS_CHECK_FAILS(qrms_optimizer_save(h, nullptr, 0, nullptr), INV, "size_out");
  QRMS_CHECK_FAILS(qrms_optimizer_save(h, nullptr, 100, &size), INV, "NULL");
  QRMS_CHECK_FAILS(qrms_optimizer_load(h, nullptr, 10), INV, "NULL");

  // Every entry point refuses a NULL handle.
  QRMS_CHECK_FAILS(qrms_optimizer_set_grad(nullptr, 0, g.data()), INV, "NULL");
  qrms_config c = qtest::config();
  QRMS_CHECK_FAILS(qrms_optimizer_set_param_config(nullptr, 0, &c), INV, "NULL");
  QRMS_CHECK_FAILS(qrms_optimizer_set_lr(nullptr, 0.1f), INV, "NULL");
  QRMS_CHECK_FAILS(qrms_optimizer_step(nullptr, nullptr), INV, "NULL");
  QRMS_CHECK_FAILS(qrms_optimizer_get_step(nullptr, 0, &v), INV, "NULL");
  QRMS_CHECK_FAILS(qrms_optimizer_read_state(nullptr, 0, 0, out.data()), INV, "NULL");
  QRMS_CHECK_FAILS(qrms_optimizer_state_bytes(nullptr, &v), INV, "NULL");
  QRMS_CHECK_FAILS(qrms_optimizer_save(nullptr, nullptr, 0, &size), INV, "NULL");
  QRMS_CHECK_FAILS(qrms_optimizer_load(nullptr, out.data(), 10), INV, "NULL");
  QRMS_CHECK_FAILS(qrms_optimizer_param_count(nullptr, &v), INV, "NULL");
  QRMS_CHECK_FAILS(qrms_dynamic_map(1, nullptr), INV, "out");

  // The failures changed nothing: the optimizer still has its two params.
  QRMS_REQUIRE_OK(qrms_optimizer_param_count(h, &v));
  CHECK(v == 2);
  QRMS_REQUIRE_OK(qrms_optimizer_step(h, nullptr));
  CHECK(opt.get_step(0) == 1);
  CHECK(opt.get_step(1) == 0);
}

TEST_CASE("qrms_last_error is per thread", "[capi]") {
  std::atomic<int> failed{0};
  std::string msg_a, msg_b, msg_fresh;
  qrms_status_t st_a = 0, st_b = 0;
  auto wait_both = [&] {
    failed.fetch_add(1);
    while (failed.load() < 2) std::this_thread::yield();
  };
  std::thread a([&] {
    qrms_config c = qtest::config();
    c.alpha = 0.0f;
    qrms_optimizer_t o = nullptr;
    st_a = qrms_optimizer_create(&o, QRMS_RMSPROP, &c, QRMS_DEVICE_CPU, 0);
    wait_both();  // the other thread has failed too before we read
    msg_a = qrms_last_error();
  });
  std::thread b([&] {
    qrms_config c = qtest::config(-0.5f);
    qrms_optimizer_t o = nullptr;
    st_b = qrms_optimizer_create(&o, QRMS_RMSPROP_8BIT, &c, QRMS_DEVICE_CPU, 0);
    wait_both();
    msg_b = qrms_last_error();
  });
  a.join();
  b.join();
  std::thread fresh([&] { msg_fresh = qrms_last_error(); });
  fresh.join();
  CHECK(st_a == QRMS_ERROR_NOT_IMPLEMENTED);
  CHECK(st_b == QRMS_ERROR_INVALID_ARGUMENT);
  CHECK_THAT(msg_a, Catch::EndsWith("RMSprop with alpha==0.0 is not supported!"));
  CHECK_THAT(msg_b, Catch::EndsWith("Invalid learning rate: -0.5"));
  CHECK(msg_fresh.empty());

  // This thread's own message is untouched by the others.
  qrms_config c = qtest::config();
  c.centered = 1;
  qrms_optimizer_t o = nullptr;
  CHECK(qrms_optimizer_create(&o, QRMS_RMSPROP, &c, QRMS_DEVICE_CPU, 0) == QRMS_ERROR_NOT_IMPLEMENTED);
  std::thread other([&] {
    qrms_config d = qtest::config();
    d.momentum = 2.0f;
    qrms_optimizer_t x = nullptr;
    CHECK(qrms_optimizer_create(&x, QRMS_RMSPROP, &d, QRMS_DEVICE_CPU, 0) == QRMS_ERROR_INVALID_ARGUMENT);
  });
  other.join();
  CHECK_THAT(qrms_last_error(), Catch::EndsWith("Centered RMSprop is not supported!"));
}

TEST_CASE("CUDA without a usable device is a device error", "[capi]") {
  const int32_t count = qrms_cuda_device_count();
  CHECK(count >= 0);
  if (!have_gpu_device_node()) CHECK(count == 0);
  qrms_optimizer_t o = nullptr;
  QRMS_CHECK_FAILS(qrms_optimizer_create(&o, QRMS_RMSPROP, nullptr, QRMS_DEVICE_CUDA, count), QRMS_ERROR_DEVICE, "");
  CHECK(o == nullptr);
  if (count == 0) {
    QRMS_CHECK_FAILS(qrms_optimizer_create(&o, QRMS_RMSPROP_8BIT, nullptr, QRMS_DEVICE_CUDA, 0), QRMS_ERROR_DEVICE,
                     "");
    std::vector<float> q = qtest::signed_map(), in(10, 1.0f), absmax(1);
    std::vector<uint8_t> codes(10);
    QRMS_CHECK_FAILS(qrms_quantize_blockwise(QRMS_DEVICE_CUDA, q.data(), in.data(), codes.data(), absmax.data(), 10,
                                             256, nullptr),
                     QRMS_ERROR_DEVICE, "");
    std::vector<float> p(10), g(10), s(10);
    qrms_update_params hp;
    qrms_update_params_init(&hp);
    QRMS_CHECK_FAILS(qrms_update_32bit(QRMS_DEVICE_CUDA, QRMS_FLOAT32, p.data(), g.data(), s.data(), nullptr, 10, &hp,
                                       nullptr, nullptr, nullptr),
                     QRMS_ERROR_DEVICE, "");
  }
}

TEST_CASE("the CPU backend gives the same bits for any thread count", "[capi][threads]") {
  struct Setup {
    const char *name;
    qrms_variant_t variant;
    int32_t block_wise;
  };
  const Setup setups[] = {{"32-bit", QRMS_RMSPROP_32BIT, 1},
                          {"8-bit block-wise", QRMS_RMSPROP_8BIT, 1},
                          {"8-bit per tensor", QRMS_RMSPROP_8BIT, 0}};
  const int32_t before = qrms_get_num_threads();
  CHECK(before >= 1);
  for (const Setup &s : setups) {
    for (Dt dt : {Dt::F32, Dt::BF16}) {
      INFO(s.name << ", " << qref::dt_name(dt));
      std::vector<std::vector<qref::Tensor>> results;
      std::vector<std::vector<uint8_t>> blobs;
      for (int32_t threads : {1, 2, 3}) {
        QRMS_REQUIRE_OK(qrms_set_num_threads(threads));
        CHECK(qrms_get_num_threads() == threads);
        qrms_config c = qtest::config();
        c.block_wise = s.block_wise;
        c.momentum = 0.9f;
        c.weight_decay = 0.01f;
        c.percentile_clipping = 10;
        c.max_unorm = 0.3f;
        c.skip_zeros = 1;
        COpt opt(s.variant, c);
        // 140000 elements: several 64 Ki-element chunks and a partial block.
        std::mt19937 init(5);
        std::vector<qref::Tensor> ps, gs;
        for (int64_t n : {int64_t(140000), int64_t(70001)}) {
          ps.emplace_back(dt, n);
          gs.emplace_back(dt, n);
          qtest::fill_normal(ps.back(), init, 1.0f);
        }
        for (size_t i = 0; i < ps.size(); ++i) opt.add(ps[i], &gs[i]);
        for (int k = 0; k < 3; ++k) {
          std::mt19937 rng(static_cast<uint32_t>(100 + k));
          for (qref::Tensor &g : gs) qtest::fill_grad(g, rng, qtest::grad_scale_for(k + 3));
          opt.step();
        }
        results.push_back(ps);
        blobs.push_back(opt.save());
      }
      for (size_t r = 1; r < results.size(); ++r) {
        for (size_t i = 0; i < results[0].size(); ++i) CHECK(results[r][i].same_bits(results[0][i]));
        CHECK_SAME(blobs[r], blobs[0]);
      }
      // Something did change.
      CHECK_FALSE(results[0][0].same_bits([&] {
        std::mt19937 init(5);
        qref::Tensor t(dt, 140000);
        qtest::fill_normal(t, init, 1.0f);
        return t;
      }()));
    }
  }
  QRMS_REQUIRE_OK(qrms_set_num_threads(0));  // the default again
  CHECK(qrms_get_num_threads() >= 1);
  QRMS_REQUIRE_OK(qrms_set_num_threads(-3));
  CHECK(qrms_get_num_threads() >= 1);
  // Too many threads is refused and changes nothing.
  QRMS_REQUIRE_OK(qrms_set_num_threads(3));
  QRMS_CHECK_FAILS(qrms_set_num_threads(1025), QRMS_ERROR_INVALID_ARGUMENT,
                   "qrms_set_num_threads: n 1025 is more than 1024 threads");
  QRMS_CHECK_FAILS(qrms_set_num_threads(INT32_MAX), QRMS_ERROR_INVALID_ARGUMENT, "more than 1024");
  CHECK(qrms_get_num_threads() == 3);
  QRMS_REQUIRE_OK(qrms_set_num_threads(1024));
  CHECK(qrms_get_num_threads() == 1024);
  QRMS_REQUIRE_OK(qrms_set_num_threads(0));
}

TEST_CASE("C ABI messages: the function's name once, counts in the right number", "[capi]") {
  const auto message_of = [](qrms_status_t st) {
    CHECK(st != QRMS_SUCCESS);
    return std::string(qrms_last_error());
  };
  qrms_config c = qtest::config();
  COpt one(QRMS_RMSPROP, c), two(QRMS_RMSPROP, c);
  std::vector<float> p(4, 1.0f), q(4, 1.0f), r(4, 1.0f);
  QRMS_REQUIRE_OK(qrms_optimizer_add_param(one.get(), p.data(), nullptr, QRMS_FLOAT32, 4, nullptr));
  QRMS_REQUIRE_OK(qrms_optimizer_add_param(two.get(), q.data(), nullptr, QRMS_FLOAT32, 4, nullptr));
  QRMS_REQUIRE_OK(qrms_optimizer_add_param(two.get(), r.data(), nullptr, QRMS_FLOAT32, 4, nullptr));
  CHECK(message_of(qrms_optimizer_load(one.get(), nullptr, 8)) == "qrms_optimizer_load: buffer is NULL");
  uint8_t small[4];
  size_t size = 0;
  CHECK_THAT(message_of(qrms_optimizer_save(one.get(), small, sizeof(small), &size)),
             Catch::StartsWith("qrms_optimizer_save: capacity 4 is smaller than the "));
  CHECK(message_of(qrms_optimizer_save(one.get(), nullptr, 4, &size)) ==
        "qrms_optimizer_save: buffer is NULL but capacity is not 0");
  CHECK(message_of(qrms_optimizer_get_step(one.get(), 5, nullptr)) == "qrms_optimizer_get_step: step_out is NULL");
  int64_t step = 0;
  CHECK(message_of(qrms_optimizer_get_step(one.get(), 5, &step)) ==
        "qrms_optimizer_get_step: parameter index 5 out of range (the optimizer has 1 parameter)");
  CHECK(message_of(qrms_optimizer_get_step(two.get(), 5, &step)) ==
        "qrms_optimizer_get_step: parameter index 5 out of range (the optimizer has 2 parameters)");
  // A blob of one parameter given to an optimizer of two.
  const std::vector<uint8_t> blob = one.save();
  CHECK(message_of(qrms_optimizer_load(two.get(), blob.data(), blob.size())) ==
        "qrms_optimizer_load: state blob has 1 parameter; the optimizer has 2");
  CHECK(message_of(qrms_optimizer_load(two.get(), blob.data(), 1)) ==
        "qrms_optimizer_load: state blob is truncated (1 byte)");
}

TEST_CASE("C ABI save / load: sizes, capacity, bad blobs", "[capi][state]") {
  qrms_config c = qtest::config();
  c.min_8bit_size = 0;
  c.momentum = 0.5f;
  std::mt19937 rng(8);
  qref::Tensor p(Dt::F32, 700), g(Dt::F32, 700), p2(Dt::F32, 700), g2(Dt::F32, 700);
  qtest::fill_normal(p, rng, 1.0f);
  COpt a(QRMS_RMSPROP_8BIT, c), b(QRMS_RMSPROP_8BIT, c);
  a.add(p, &g);
  b.add(p2, &g2);
  qtest::fill_grad(g, rng, 1.0f);
  a.step();
  a.step();

  size_t size = 0;
  QRMS_REQUIRE_OK(qrms_optimizer_save(a.get(), nullptr, 0, &size));
  REQUIRE(size > 0);
  std::vector<uint8_t> buf(size + 8, 0x5A);
  size_t got = 12345;
  QRMS_CHECK_FAILS(qrms_optimizer_save(a.get(), buf.data(), size - 1, &got), QRMS_ERROR_INVALID_ARGUMENT,
                   "capacity");
  CHECK(std::all_of(buf.begin(), buf.end(), [](uint8_t x) { return x == 0x5A; }));
  QRMS_REQUIRE_OK(qrms_optimizer_save(a.get(), buf.data(), buf.size(), &got));
  CHECK(got == size);
  CHECK(buf[size] == 0x5A);

  const std::vector<uint8_t> b_before = b.save();
  std::vector<uint8_t> bad(buf.begin(), buf.begin() + static_cast<long>(size));
  bad[size / 2] ^= 0x10;
  QRMS_CHECK_FAILS(qrms_optimizer_load(b.get(), bad.data(), bad.size()), QRMS_ERROR_BAD_STATE, "");
  QRMS_CHECK_FAILS(qrms_optimizer_load(b.get(), buf.data(), size - 1), QRMS_ERROR_BAD_STATE, "");
  QRMS_CHECK_FAILS(qrms_optimizer_load(b.get(), buf.data(), 3), QRMS_ERROR_BAD_STATE, "");
  CHECK_SAME(b.save(), b_before);
  QRMS_REQUIRE_OK(qrms_optimizer_load(b.get(), buf.data(), size));
  CHECK(b.get_step(0) == 2);
  CHECK_SAME(b.read_state(0, QRMS_STATE_MOMENTUM), a.read_state(0, QRMS_STATE_MOMENTUM));
  CHECK_SAME(b.save(), a.save());
}

// Optimizer-wide fields are ignored in a per-parameter config and not in the
// blob; get_param_config reports the optimizer's values in effect, after
// set_param_config and after load alike.
TEST_CASE("C ABI: get_param_config reports the optimizer-wide fields in effect", "[capi]") {
  qrms_config c = qtest::config();
  c.skip_nonfinite = 1;
  c.stochastic_rounding = 1;
  c.seed = 42;
  COpt opt(QRMS_RMSPROP_32BIT, c);
  qref::Tensor a(Dt::BF16, 300), b(Dt::F32, 200);
  opt.add(a, nullptr);
  opt.add(b, nullptr);
  qrms_config own = qtest::config();
  own.lr = 3e-3f;  // skip_nonfinite, stochastic_rounding, seed left 0
  QRMS_REQUIRE_OK(qrms_optimizer_set_param_config(opt.get(), 1, &own));
  auto check_wide = [](qrms_optimizer_t o, int64_t i) {
    qrms_config got = qtest::config(99.0f);
    QRMS_REQUIRE_OK(qrms_optimizer_get_param_config(o, i, &got));
    CHECK(got.skip_nonfinite == 1);
    CHECK(got.stochastic_rounding == 1);
    CHECK(got.seed == 42u);
    return got.lr;
  };
  CHECK(check_wide(opt.get(), 0) == 1e-2f);
  CHECK(check_wide(opt.get(), 1) == 3e-3f);
  size_t size = 0;
  QRMS_REQUIRE_OK(qrms_optimizer_save(opt.get(), nullptr, 0, &size));
  std::vector<unsigned char> blob(size);
  QRMS_REQUIRE_OK(qrms_optimizer_save(opt.get(), blob.data(), blob.size(), &size));
  COpt back(QRMS_RMSPROP_32BIT, c);
  back.add(a, nullptr);
  back.add(b, nullptr);
  QRMS_REQUIRE_OK(qrms_optimizer_load(back.get(), blob.data(), blob.size()));
  CHECK(check_wide(back.get(), 0) == 1e-2f);
  CHECK(check_wide(back.get(), 1) == 3e-3f);
}

TEST_CASE("C ABI: config_init_sized, get_param_config and param_info", "[capi]") {
  const size_t v1 = offsetof(qrms_config, skip_zeros) + sizeof(int32_t);
  struct Padded {
    qrms_config c;
    unsigned char tail[32];
  } buf;
  std::memset(&buf, 0xCD, sizeof(buf));
  QRMS_REQUIRE_OK(qrms_config_init_sized(&buf.c, v1));
  CHECK(buf.c.struct_size == v1);
  CHECK(buf.c.lr == 1e-2f);
  CHECK(buf.c.alpha == 0.99f);
  CHECK(buf.c.min_8bit_size == 4096);
  CHECK(buf.c.block_wise == 1);
  CHECK(buf.c.skip_zeros == 0);
  const unsigned char *raw = reinterpret_cast<const unsigned char *>(&buf);
  size_t touched = 0;
  for (size_t i = v1; i < sizeof(buf); ++i) touched += raw[i] != 0xCD ? 1 : 0;
  CHECK(touched == 0);  // wrote no byte past the caller's struct
  QRMS_REQUIRE_OK(qrms_config_init_sized(&buf.c, sizeof(buf)));
  CHECK(buf.c.struct_size == sizeof(qrms_config));
  QRMS_CHECK_FAILS(qrms_config_init_sized(&buf.c, v1 - 4), QRMS_ERROR_INVALID_ARGUMENT, "size");
  QRMS_CHECK_FAILS(qrms_config_init_sized(nullptr, sizeof(qrms_config)), QRMS_ERROR_INVALID_ARGUMENT, "cfg");

  qrms_config c = qtest::config();
  c.min_8bit_size = 1000;
  COpt opt(QRMS_RMSPROP_8BIT, c);
  qref::Tensor big(Dt::BF16, 3000), small(Dt::F32, 999), own(Dt::F16, 2000);
  opt.add(big, nullptr);
  opt.add(small, nullptr);
  opt.add(own, nullptr);
  qrms_config o = c;
  o.optim_bits = 32;
  o.lr = 5e-3f;
  o.momentum = 0.25f;
  QRMS_REQUIRE_OK(qrms_optimizer_set_param_config(opt.get(), 2, &o));

  int64_t numel = 0;
  qrms_dtype_t dtype = -1;
  int32_t bits = 0;
  QRMS_REQUIRE_OK(qrms_optimizer_param_info(opt.get(), 0, &numel, &dtype, &bits));
  CHECK(numel == 3000);
  CHECK(dtype == QRMS_BFLOAT16);
  CHECK(bits == 8);
  QRMS_REQUIRE_OK(qrms_optimizer_param_info(opt.get(), 1, &numel, &dtype, &bits));
  CHECK(numel == 999);
  CHECK(dtype == QRMS_FLOAT32);
  CHECK(bits == 32);  // below min_8bit_size
  QRMS_REQUIRE_OK(qrms_optimizer_param_info(opt.get(), 2, &numel, &dtype, &bits));
  CHECK(numel == 2000);
  CHECK(dtype == QRMS_FLOAT16);
  CHECK(bits == 32);  // its own config
  QRMS_REQUIRE_OK(qrms_optimizer_param_info(opt.get(), 2, nullptr, nullptr, nullptr));
  QRMS_CHECK_FAILS(qrms_optimizer_param_info(opt.get(), 3, &numel, &dtype, &bits), QRMS_ERROR_INVALID_ARGUMENT,
                   "index");
  QRMS_CHECK_FAILS(qrms_optimizer_param_info(nullptr, 0, &numel, &dtype, &bits), QRMS_ERROR_INVALID_ARGUMENT, "NULL");

  qrms_config got = qtest::config(99.0f);
  QRMS_REQUIRE_OK(qrms_optimizer_get_param_config(opt.get(), 0, &got));
  CHECK(got.lr == 1e-2f);
  CHECK(got.optim_bits == 8);
  CHECK(got.min_8bit_size == 1000);
  CHECK(got.momentum == 0.0f);
  QRMS_REQUIRE_OK(qrms_optimizer_get_param_config(opt.get(), 2, &got));
  CHECK(got.lr == 5e-3f);
  CHECK(got.optim_bits == 32);
  CHECK(got.momentum == 0.25f);
  QRMS_REQUIRE_OK(qrms_optimizer_set_lr(opt.get(), 1e-4f));
  for (int64_t i = 0; i < 3; ++i) {
    QRMS_REQUIRE_OK(qrms_optimizer_get_param_config(opt.get(), i, &got));
    CHECK(got.lr == 1e-4f);
  }
  // Written up to the caller's struct_size only.
  std::memset(&buf, 0xCD, sizeof(buf));
  buf.c.struct_size = v1;
  QRMS_REQUIRE_OK(qrms_optimizer_get_param_config(opt.get(), 2, &buf.c));
  CHECK(buf.c.momentum == 0.25f);
  touched = 0;
  for (size_t i = v1; i < sizeof(buf); ++i) touched += raw[i] != 0xCD ? 1 : 0;
  CHECK(touched == 0);
  got.struct_size = v1 - 1;
  QRMS_CHECK_FAILS(qrms_optimizer_get_param_config(opt.get(), 0, &got), QRMS_ERROR_INVALID_ARGUMENT, "struct_size");
  got.struct_size = sizeof(got);
  QRMS_CHECK_FAILS(qrms_optimizer_get_param_config(opt.get(), 7, &got), QRMS_ERROR_INVALID_ARGUMENT, "index");
  QRMS_CHECK_FAILS(qrms_optimizer_get_param_config(opt.get(), 0, nullptr), QRMS_ERROR_INVALID_ARGUMENT, "cfg");
}

TEST_CASE("C ABI: grad_unscale multiplies every gradient before clipping and the update", "[capi][update]") {
  const bool eight = GENERATE(false, true);
  qrms_config c = qtest::config();
  c.alpha = 0.9f;
  c.min_8bit_size = 0;
  c.percentile_clipping = 5;
  c.weight_decay = 0.01f;
  COpt opt(eight ? QRMS_RMSPROP_8BIT : QRMS_RMSPROP_32BIT, c);
  std::mt19937 rng(12);
  std::vector<Trainee> ts;
  ts.emplace_back(Dt::F32, 1500, rng);
  ts.emplace_back(Dt::BF16, 700, rng);
  float unscale = 1.0f / 1024.0f;
  for (Trainee &t : ts) {
    opt.add(t.p, &t.g);
    t.h = hyper_of(c);
    t.bits8 = eight;
    t.unscale = unscale;
  }
  QRMS_REQUIRE_OK(qrms_optimizer_set_grad_unscale(opt.get(), &unscale));
  const std::vector<float> q = qtest::signed_map();
  qtest::run_and_check(opt, ts, q.data(), 3, rng);
  // The factor is read at each step: changing it needs no call.
  unscale = 0.5f;
  for (Trainee &t : ts) t.unscale = unscale;
  qtest::run_and_check(opt, ts, q.data(), 2, rng, 3);
  // NULL removes it.
  QRMS_REQUIRE_OK(qrms_optimizer_set_grad_unscale(opt.get(), nullptr));
  for (Trainee &t : ts) t.unscale = 1.0f;
  const qtest::RunStats st = qtest::run_and_check(opt, ts, q.data(), 2, rng, 5);
  (void)st;
}

TEST_CASE("C ABI: skip_nonfinite skips a whole step with an inf or NaN gradient", "[capi][update]") {
  const bool eight = GENERATE(false, true);
  qrms_config c = qtest::config();
  c.min_8bit_size = 0;
  c.momentum = 0.9f;
  c.percentile_clipping = 10;
  c.skip_nonfinite = 1;
  COpt opt(eight ? QRMS_RMSPROP_8BIT : QRMS_RMSPROP_32BIT, c);
  std::mt19937 rng(13);
  std::vector<Trainee> ts;
  ts.emplace_back(Dt::F32, 900, rng);
  ts.emplace_back(Dt::F16, 600, rng);
  for (Trainee &t : ts) {
    opt.add(t.p, &t.g);
    t.h = hyper_of(c);
    t.bits8 = eight;
  }
  const std::vector<float> q = qtest::signed_map();
  const int32_t *flag = nullptr;
  QRMS_REQUIRE_OK(qrms_optimizer_found_inf(opt.get(), &flag));
  REQUIRE(flag != nullptr);
  qtest::run_and_check(opt, ts, q.data(), 2, rng);
  int32_t found = -1;
  QRMS_REQUIRE_OK(qrms_optimizer_read_found_inf(opt.get(), &found));
  CHECK(found == 0);
  CHECK(*flag == 0);  // a CPU optimizer's flag is host memory

  float unscale = 1.0f;
  QRMS_REQUIRE_OK(qrms_optimizer_set_grad_unscale(opt.get(), &unscale));
  for (int bad = 0; bad < 3; ++bad) {
    INFO("bad gradient kind " << bad);
    for (Trainee &t : ts) qtest::fill_grad(t.g, rng, 1.0f);
    if (bad == 0) ts[1].g.set(599, std::numeric_limits<float>::infinity());  // only the last element of one tensor
    if (bad == 1) ts[0].g.set(17, std::numeric_limits<float>::quiet_NaN());
    if (bad == 2) unscale = 3e38f;  // finite grads, most of them inf after unscaling
    const std::vector<uint8_t> before = opt.save();
    const qref::Tensor p0 = ts[0].p, p1 = ts[1].p;
    opt.step();
    CHECK(ts[0].p.same_bits(p0));
    CHECK(ts[1].p.same_bits(p1));
    CHECK_SAME(opt.save(), before);
    CHECK(opt.get_step(0) == 2);
    QRMS_REQUIRE_OK(qrms_optimizer_read_found_inf(opt.get(), &found));
    CHECK(found == 1);
    CHECK(*flag == 1);
    unscale = 1.0f;
  }
  // The next finite step runs, continuing where the last good one left off.
  qtest::run_and_check(opt, ts, q.data(), 2, rng, 2);
  QRMS_REQUIRE_OK(qrms_optimizer_read_found_inf(opt.get(), &found));
  CHECK(found == 0);
  CHECK(opt.get_step(1) == 4);
}

TEST_CASE("C ABI: stochastic_rounding and seed are appended; an older struct_size gets them off", "[capi][rounding]") {
  qrms_config c;
  QRMS_REQUIRE_OK(qrms_config_init_sized(&c, sizeof(c)));
  CHECK(c.stochastic_rounding == 0);
  CHECK(c.seed == 0);
  // One bfloat16 step whose updates (lr 1e-4, |u| <= 10) are below half an
  // ulp of the parameter: round-to-nearest keeps every value.
  auto step_with = [](const qrms_config &cfg) {
    qref::Tensor p(Dt::BF16, 4096), g(Dt::BF16, 4096);
    for (int64_t i = 0; i < p.size(); ++i) {
      p.set(i, 0.75f);
      g.set(i, 1e-3f);
    }
    COpt opt(QRMS_RMSPROP, cfg);
    opt.add(p, &g);
    opt.step();
    return p;
  };
  c.lr = 1e-4f;
  const qref::Tensor nearest = step_with(c);
  CHECK(nearest.get(0) == 0.75f);
  // The layout before these fields (ending with skip_nonfinite; 72 bytes, the
  // last 4 its tail padding, which such a caller may leave as garbage),
  // followed by bytes a newer caller would have set: none of them is read.
  qrms_config old;
  std::memcpy(&old, &c, sizeof(c));
  const size_t previous = offsetof(qrms_config, skip_nonfinite) + sizeof(int32_t) + 4;
  REQUIRE(previous == offsetof(qrms_config, seed));
  std::memset(reinterpret_cast<unsigned char *>(&old) + offsetof(qrms_config, skip_nonfinite) + sizeof(int32_t), 0xCD,
              sizeof(old) - offsetof(qrms_config, skip_nonfinite) - sizeof(int32_t));
  old.struct_size = previous;
  CHECK(step_with(old).same_bits(nearest));
  // The full struct with the option on: some values move, reproducibly.
  c.stochastic_rounding = 1;
  c.seed = 99;
  const qref::Tensor sr = step_with(c);
  CHECK_FALSE(sr.same_bits(nearest));
  CHECK(step_with(c).same_bits(sr));
}

TEST_CASE("C ABI: state_map is appended; an older struct_size gets the signed map; bad values are refused",
          "[capi][state_map]") {
  qrms_config c;
  QRMS_REQUIRE_OK(qrms_config_init_sized(&c, sizeof(c)));
  CHECK(c.state_map == QRMS_MAP_SIGNED);
  c.min_8bit_size = 0;
  c.momentum = 0.9f;
  std::vector<float> umap(256);
  QRMS_REQUIRE_OK(qrms_dynamic_map(0, umap.data()));
  const std::vector<float> smap = qtest::signed_map();

  // Steps of an 8-bit optimizer; the square average as read back, and the
  // parameter's config.
  auto run = [](const qrms_config &cfg, std::vector<float> &s, std::vector<float> &b, qrms_config &got) {
    std::mt19937 rng(5);
    Trainee t(Dt::F32, 1000, rng);
    COpt opt(QRMS_RMSPROP_8BIT, cfg);
    opt.add(t.p, &t.g);
    for (int k = 0; k < 3; ++k) {
      qtest::fill_grad(t.g, rng, 1.0f);
      opt.step();
    }
    s = opt.read_state(0, QRMS_STATE_SQUARE_AVG);
    b = opt.read_state(0, QRMS_STATE_MOMENTUM);
    std::memset(&got, 0, sizeof(got));
    got.struct_size = sizeof(got);
    QRMS_REQUIRE_OK(qrms_optimizer_get_param_config(opt.get(), 0, &got));
    return t.p;
  };
  // Whether every value of each block of 256 is a map entry times the
  // block's absmax, which is its largest |value| over the map's first or
  // last entry (the largest value quantizes to one of the map's ends).
  auto on_map = [](const std::vector<float> &v, const std::vector<float> &q) {
    for (size_t i0 = 0; i0 < v.size(); i0 += 256) {
      const size_t e = std::min(v.size(), i0 + 256);
      float top = 0.0f;
      for (size_t i = i0; i < e; ++i) top = std::max(top, std::fabs(v[i]));
      bool block_ok = top == 0.0f;
      for (float end : {q[0], q[255]}) {
        if (end == 0.0f || block_ok) continue;
        const float a = top / std::fabs(end);
        bool all = true;
        for (size_t i = i0; i < e && all; ++i) {
          bool found = false;
          for (float m : q) found = found || std::fabs(m * a - v[i]) <= 1e-6f * a;
          all = found;
        }
        block_ok = all;
      }
      if (!block_ok) return false;
    }
    return true;
  };
  std::vector<float> s_signed, b_signed, s_unsigned, b_unsigned;
  qrms_config got;
  const qref::Tensor p_signed = run(c, s_signed, b_signed, got);
  CHECK(got.state_map == QRMS_MAP_SIGNED);
  CHECK(on_map(s_signed, smap));
  c.state_map = QRMS_MAP_UNSIGNED;
  const qref::Tensor p_unsigned = run(c, s_unsigned, b_unsigned, got);
  CHECK(got.state_map == QRMS_MAP_UNSIGNED);
  CHECK(on_map(s_unsigned, umap));
  CHECK_FALSE(on_map(s_unsigned, smap));
  CHECK(on_map(b_unsigned, smap));  // the momentum buffer stays signed
  CHECK_FALSE(p_unsigned.same_bits(p_signed));

  // The layout before it (88 bytes, ending with stochastic_rounding and its
  // tail padding), followed by bytes a newer caller would have set: not read.
  qrms_config old = c;
  std::memset(&old.reserved1, 0xCD, sizeof(old) - offsetof(qrms_config, reserved1));
  old.struct_size = offsetof(qrms_config, state_map);
  REQUIRE(old.struct_size == 88);
  std::vector<float> s_old, b_old;
  CHECK(run(old, s_old, b_old, got).same_bits(p_signed));
  CHECK(got.state_map == QRMS_MAP_SIGNED);
  // Garbage in reserved1 of a full struct is not read either.
  c.state_map = QRMS_MAP_SIGNED;
  c.reserved1 = -7;
  CHECK(run(c, s_old, b_old, got).same_bits(p_signed));

  // Values other than QRMS_MAP_SIGNED and QRMS_MAP_UNSIGNED: create and
  // set_param_config refuse them, naming the field.
  for (int32_t bad : {2, -1, 0x7fffffff}) {
    INFO("state_map " << bad);
    c.state_map = bad;
    qrms_optimizer_t h = nullptr;
    QRMS_CHECK_FAILS(qrms_optimizer_create(&h, QRMS_RMSPROP_8BIT, &c, QRMS_DEVICE_CPU, 0),
                     QRMS_ERROR_INVALID_ARGUMENT, "Invalid state_map value: " + std::to_string(bad));
    CHECK(h == nullptr);
    qrms_config good = c;
    good.state_map = QRMS_MAP_SIGNED;
    COpt opt(QRMS_RMSPROP_8BIT, good);
    qref::Tensor p(Dt::F32, 10);
    opt.add(p, nullptr);
    QRMS_CHECK_FAILS(qrms_optimizer_set_param_config(opt.get(), 0, &c), QRMS_ERROR_INVALID_ARGUMENT, "state_map");
  }
}
