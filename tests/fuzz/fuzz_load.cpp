// libFuzzer target for the state blob parser (qrms_optimizer_load).
//
// The optimizer has a fixed set of parameters covering every state layout.
// Each input is loaded twice: as given, and with its checksum trailer
// recomputed so that the fuzzer reaches the checks behind the checksum.
// Properties checked: load never crashes; a refused load changes nothing
// (the saved blob is byte-identical before and after); an accepted load
// leaves an optimizer that steps and saves.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../reference.hpp"
#include "qrmsprop/qrmsprop.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

struct Fixture {
  qrms_optimizer_t opt = nullptr;
  std::vector<float> p32, g32, p8, g8, pt, gt;
  std::vector<uint16_t> pb, gb;

  Fixture() : p32(300, 0.5f), g32(300, 0.1f), p8(700, 0.5f), g8(700, -0.2f), pt(600, 1.0f), gt(600, 0.3f),
              pb(500, 0x3f80), gb(500, 0x3dcd) {
    qrms_config cfg;
    qrms_config_init(&cfg);
    cfg.min_8bit_size = 512;
    check(qrms_optimizer_create(&opt, QRMS_RMSPROP_8BIT, &cfg, QRMS_DEVICE_CPU, 0) == QRMS_SUCCESS);
    int64_t idx;
    // 32-bit (below min_8bit_size), 8-bit block-wise, per-tensor with
    // momentum, bf16 with clipping and max_unorm.
    check(qrms_optimizer_add_param(opt, p32.data(), g32.data(), QRMS_FLOAT32, 300, &idx) == QRMS_SUCCESS);
    check(qrms_optimizer_add_param(opt, p8.data(), g8.data(), QRMS_FLOAT32, 700, &idx) == QRMS_SUCCESS);
    check(qrms_optimizer_add_param(opt, pt.data(), gt.data(), QRMS_FLOAT32, 600, &idx) == QRMS_SUCCESS);
    cfg.block_wise = 0;
    cfg.momentum = 0.9f;
    check(qrms_optimizer_set_param_config(opt, idx, &cfg) == QRMS_SUCCESS);
    check(qrms_optimizer_add_param(opt, pb.data(), gb.data(), QRMS_BFLOAT16, 500, &idx) == QRMS_SUCCESS);
    qrms_config_init(&cfg);
    cfg.optim_bits = 8;
    cfg.min_8bit_size = 0;
    cfg.percentile_clipping = 90;
    cfg.max_unorm = 1.0f;
    check(qrms_optimizer_set_param_config(opt, idx, &cfg) == QRMS_SUCCESS);
    check(qrms_optimizer_step(opt, nullptr) == QRMS_SUCCESS);
    check(qrms_optimizer_step(opt, nullptr) == QRMS_SUCCESS);
  }

  ~Fixture() { qrms_optimizer_destroy(opt); }
  Fixture(const Fixture &) = delete;
  Fixture &operator=(const Fixture &) = delete;

  std::vector<uint8_t> save() const {
    size_t size = 0;
    check(qrms_optimizer_save(opt, nullptr, 0, &size) == QRMS_SUCCESS);
    std::vector<uint8_t> blob(size);
    check(qrms_optimizer_save(opt, blob.data(), blob.size(), &size) == QRMS_SUCCESS);
    return blob;
  }
};

void try_load(Fixture &f, const uint8_t *data, size_t size) {
  const std::vector<uint8_t> before = f.save();
  const qrms_status_t st = qrms_optimizer_load(f.opt, data, size);
  if (st == QRMS_SUCCESS) {
    check(qrms_optimizer_step(f.opt, nullptr) == QRMS_SUCCESS);
    (void)f.save();
    return;
  }
  check(st == QRMS_ERROR_BAD_STATE || st == QRMS_ERROR_INVALID_ARGUMENT);
  check(qrms_last_error()[0] != '\0');
  check(f.save() == before);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  Fixture f;  // fresh per input, so that every finding reproduces alone
  try_load(f, data, size);
  if (size >= 8) {
    std::vector<uint8_t> fixed(data, data + size);
    const uint64_t sum = qref::fnv1a(fixed.data(), size - 8);
    std::memcpy(fixed.data() + size - 8, &sum, 8);
    try_load(f, fixed.data(), fixed.size());
  }
  return 0;
}

// With -DQRMS_FUZZ_WRITE_SEED the file is a plain program that writes the
// fixture's valid blob to argv[1] (the seed corpus).
#ifdef QRMS_FUZZ_WRITE_SEED
#include <cstdio>
int main(int argc, char **argv) {
  if (argc < 2) return 2;
  Fixture f;
  const std::vector<uint8_t> blob = f.save();
  FILE *out = std::fopen(argv[1], "wb");
  if (!out) return 1;
  std::fwrite(blob.data(), 1, blob.size(), out);
  std::fclose(out);
  return 0;
}
#endif
