// Helpers for the tests of the C ABI: an owning wrapper of qrms_optimizer_t
// with the interface qtest::run_and_check expects, and status checks that
// print qrms_last_error() when they fail.
#pragma once

#include <string>
#include <vector>

#include "check.hpp"
#include "qrmsprop/qrmsprop.h"

namespace qtest {

inline std::string last_error() { return qrms_last_error(); }

#define QRMS_REQUIRE_OK(call)                                  \
  do {                                                         \
    const qrms_status_t qrms_st_ = (call);                     \
    INFO(#call << " -> " << qrms_status_string(qrms_st_) << ": " \
               << qrms_last_error());                          \
    REQUIRE(qrms_st_ == QRMS_SUCCESS);                         \
  } while (0)

// A failing call must return `status` and leave a message that contains
// `needle` (when given).
#define QRMS_CHECK_FAILS(call, status, needle)                                 \
  do {                                                                         \
    const qrms_status_t qrms_st_ = (call);                                     \
    const std::string qrms_msg_ = qrms_last_error();                           \
    INFO(#call << " -> " << qrms_st_ << " (" << qrms_status_string(qrms_st_)  \
               << "): \"" << qrms_msg_ << "\"");                               \
    CHECK(qrms_st_ == (status));                                               \
    CHECK_FALSE(qrms_msg_.empty());                                            \
    CHECK_THAT(qrms_msg_, Catch::Contains(needle));                            \
  } while (0)

inline qrms_config config(float lr = 1e-2f) {
  qrms_config c;
  qrms_config_init(&c);
  c.lr = lr;
  return c;
}

// The core entry points' hyper-parameters with the values of config c.
inline qrms_update_params update_params_of(const qrms_config &c) {
  qrms_update_params hp;
  qrms_update_params_init(&hp);
  hp.lr = c.lr;
  hp.alpha = c.alpha;
  hp.eps = c.eps;
  hp.weight_decay = c.weight_decay;
  hp.momentum = c.momentum;
  hp.max_unorm = c.max_unorm;
  hp.skip_zeros = c.skip_zeros;
  return hp;
}

// The reference's hyper-parameters for update params hp.
inline qref::Hyper hyper_of(const qrms_update_params &hp) {
  qref::Hyper h;
  h.lr = hp.lr;
  h.alpha = hp.alpha;
  h.eps = hp.eps;
  h.weight_decay = hp.weight_decay;
  h.momentum = hp.momentum;
  h.max_unorm = hp.max_unorm;
  h.skip_zeros = hp.skip_zeros != 0;
  return h;
}

class COpt {
 public:
  COpt(qrms_variant_t variant, const qrms_config &cfg) {
    const qrms_status_t st = qrms_optimizer_create(&h_, variant, &cfg, QRMS_DEVICE_CPU, 0);
    INFO("qrms_optimizer_create: " << qrms_last_error());
    REQUIRE(st == QRMS_SUCCESS);
    REQUIRE(h_ != nullptr);
  }
  ~COpt() { qrms_optimizer_destroy(h_); }
  COpt(const COpt &) = delete;
  COpt &operator=(const COpt &) = delete;

  qrms_optimizer_t get() const { return h_; }

  int64_t add(qref::Tensor &p, qref::Tensor *g) {
    int64_t idx = -1;
    QRMS_REQUIRE_OK(qrms_optimizer_add_param(h_, p.data(), g ? g->data() : nullptr,
                                             static_cast<qrms_dtype_t>(p.dtype()), p.size(), &idx));
    sizes_.push_back(p.size());
    return idx;
  }
  void step() { QRMS_REQUIRE_OK(qrms_optimizer_step(h_, nullptr)); }
  std::vector<float> read_state(int64_t i, int32_t which) const {
    std::vector<float> out(static_cast<size_t>(sizes_.at(static_cast<size_t>(i))));
    QRMS_REQUIRE_OK(qrms_optimizer_read_state(h_, i, which, out.data()));
    return out;
  }
  int64_t get_step(int64_t i) const {
    int64_t s = -1;
    QRMS_REQUIRE_OK(qrms_optimizer_get_step(h_, i, &s));
    return s;
  }
  int64_t state_bytes() const {
    int64_t b = -1;
    QRMS_REQUIRE_OK(qrms_optimizer_state_bytes(h_, &b));
    return b;
  }
  std::vector<uint8_t> save() const {
    size_t size = 0;
    QRMS_REQUIRE_OK(qrms_optimizer_save(h_, nullptr, 0, &size));
    std::vector<uint8_t> blob(size);
    size_t written = 0;
    QRMS_REQUIRE_OK(qrms_optimizer_save(h_, blob.data(), blob.size(), &written));
    REQUIRE(written == size);
    return blob;
  }

 private:
  qrms_optimizer_t h_ = nullptr;
  std::vector<int64_t> sizes_;
};

inline std::vector<float> signed_map() {
  std::vector<float> q(256);
  REQUIRE(qrms_dynamic_map(1, q.data()) == QRMS_SUCCESS);
  return q;
}

}  // namespace qtest
