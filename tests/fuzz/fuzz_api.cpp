// libFuzzer target for the C ABI's argument handling: the input is read as a
// program of calls with fuzzed arguments (configs with any float bits,
// struct sizes, NULLs, odd alignments, sizes, dtypes, indices, orders).
// Properties checked: no crash or sanitizer report; every call returns a
// known status; a failure sets a message; a failed call changes nothing
// (the saved state before and after is byte-identical).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "qrmsprop/qrmsprop.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

class Input {
 public:
  Input(const uint8_t *d, size_t n) : d_(d), n_(n) {}
  bool done() const { return pos_ >= n_; }
  uint8_t byte() { return pos_ < n_ ? d_[pos_++] : 0; }
  template <typename T>
  T value() {
    T v{};
    uint8_t raw[sizeof(T)] = {};
    for (size_t i = 0; i < sizeof(T); ++i) raw[i] = byte();
    std::memcpy(&v, raw, sizeof(T));
    return v;
  }
  // A float that is usually sensible and sometimes anything at all.
  float real(float sensible) {
    switch (byte() % 6) {
      case 0: return value<float>();
      case 1: return 0.0f;
      case 2: return -sensible;
      default: return sensible * static_cast<float>(byte() % 200) / 100.0f;
    }
  }

 private:
  const uint8_t *d_;
  size_t n_;
  size_t pos_ = 0;
};

constexpr size_t kPool = 4096;  // elements of each buffer pool

struct World {
  // Buffers of kPool floats (+1 so that a byte offset still fits).
  std::vector<float> params[3], grads[3];
  std::vector<uint8_t> last_blob;
  World() {
    for (auto &v : params) v.assign(kPool + 1, 0.25f);
    for (auto &v : grads) v.assign(kPool + 1, -0.5f);
  }
};

// A config inside a larger zeroed buffer: a fuzzed struct_size up to 255
// bytes is then honest about the memory behind it (a caller whose struct is
// smaller than its struct_size is outside the contract), and the bytes past
// the library's struct are sometimes non-zero, as a newer caller's fields.
struct BigConfig {
  qrms_config c;
  unsigned char tail[256];
};

BigConfig fuzz_config(Input &in) {
  BigConfig big;
  std::memset(&big, 0, sizeof(big));
  qrms_config &c = big.c;
  qrms_config_init(&c);
  const uint8_t mask = in.byte();
  if (mask & 1) c.lr = in.real(0.01f);
  if (mask & 2) c.alpha = in.real(0.99f);
  if (mask & 4) c.eps = in.real(1e-8f);
  if (mask & 8) c.weight_decay = in.real(0.01f);
  if (mask & 16) c.momentum = in.real(0.9f);
  if (mask & 32) {
    c.centered = in.byte() % 2;
    c.optim_bits = (in.byte() % 4 == 0) ? in.value<int32_t>() : (in.byte() % 2 ? 8 : 32);
  }
  if (mask & 64) {
    c.min_8bit_size = in.byte() % 3 == 0 ? in.value<int64_t>() : in.byte() * 16;
    c.percentile_clipping = in.byte() % 3 == 0 ? in.value<int32_t>() : 90 + in.byte() % 11;
    c.block_wise = in.byte() % 2;
  }
  if (mask & 128) {
    c.max_unorm = in.real(1.0f);
    c.skip_zeros = in.byte() % 2;
    if (in.byte() % 8 == 0) c.struct_size = in.byte();
    if (in.byte() % 8 == 0) big.tail[in.byte() % 8] = in.byte();
  }
  return big;
}

std::vector<uint8_t> save(qrms_optimizer_t opt) {
  size_t size = 0;
  check(qrms_optimizer_save(opt, nullptr, 0, &size) == QRMS_SUCCESS);
  std::vector<uint8_t> blob(size);
  check(qrms_optimizer_save(opt, blob.data(), size, &size) == QRMS_SUCCESS);
  return blob;
}

void expect_status(qrms_status_t st) {
  check(st >= QRMS_SUCCESS && st <= QRMS_ERROR_INTERNAL && st != QRMS_ERROR_INTERNAL);
  if (st != QRMS_SUCCESS) check(qrms_last_error()[0] != '\0');
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Input in(data, size);
  World w;
  qrms_optimizer_t opt = nullptr;
  const BigConfig cfg = fuzz_config(in);
  const bool cfg_null = in.byte() % 8 == 0;
  qrms_status_t st = qrms_optimizer_create(&opt, in.byte() % 4, cfg_null ? nullptr : &cfg.c, QRMS_DEVICE_CPU, 0);
  expect_status(st);
  if (st != QRMS_SUCCESS) {
    check(opt == nullptr);
    return 0;
  }
  int64_t count = 0;
  for (int calls = 0; calls < 64 && !in.done(); ++calls) {
    const std::vector<uint8_t> before = save(opt);
    const uint8_t op = in.byte() % 10;
    const int64_t index = static_cast<int64_t>(in.byte() % 6) - 1;  // -1 .. 4
    const int pool = in.byte() % 3;
    switch (op) {
      case 0: {  // add_param with a fuzzed dtype, size, offset and NULLs
        const qrms_dtype_t dtype = static_cast<qrms_dtype_t>(in.byte() % 5) - 1;
        const size_t offset = in.byte() % 3;  // bytes: 1 and 2 misalign
        int64_t numel = in.value<uint16_t>() % (kPool + 2);
        if (in.byte() % 16 == 0) numel = in.value<int64_t>();
        const bool in_range = numel >= 0 && static_cast<size_t>(numel) <= kPool;
        char *p = reinterpret_cast<char *>(w.params[pool].data()) + offset;
        char *g = reinterpret_cast<char *>(w.grads[pool].data()) + offset;
        const uint8_t nulls = in.byte();
        int64_t idx = -1;
        // Sizes beyond the buffer would be a caller bug the library cannot
        // see; only in-range sizes, or invalid ones it must refuse, are used.
        if (!in_range && numel > 0) break;
        st = qrms_optimizer_add_param(opt, (nulls & 1) ? nullptr : p, (nulls & 2) ? nullptr : g, dtype, numel, &idx);
        expect_status(st);
        if (st == QRMS_SUCCESS) {
          check(idx == count);
          ++count;
        }
        break;
      }
      case 1:
        st = qrms_optimizer_set_grad(opt, index, in.byte() % 4 == 0 ? nullptr : w.grads[pool].data());
        expect_status(st);
        break;
      case 2: {
        const BigConfig c = fuzz_config(in);
        st = qrms_optimizer_set_param_config(opt, index, &c.c);
        expect_status(st);
        break;
      }
      case 3:
        st = qrms_optimizer_set_lr(opt, in.real(0.01f));
        expect_status(st);
        break;
      case 4:
        st = qrms_optimizer_step(opt, nullptr);
        expect_status(st);
        check(st == QRMS_SUCCESS);
        continue;  // a step changes the state by design
      case 5: {
        int64_t step = -1;
        st = qrms_optimizer_get_step(opt, index, in.byte() % 8 ? &step : nullptr);
        expect_status(st);
        break;
      }
      case 6: {
        std::vector<float> out(kPool + 1);
        st = qrms_optimizer_read_state(opt, index, static_cast<int32_t>(in.byte() % 3), in.byte() % 8 ? out.data() : nullptr);
        expect_status(st);
        break;
      }
      case 7: {
        int64_t bytes = 0;
        expect_status(qrms_optimizer_state_bytes(opt, &bytes));
        check(bytes >= 0);
        break;
      }
      case 8: {
        const size_t cap = before.size() - (in.byte() % 3 == 0 ? 1 : 0);
        std::vector<uint8_t> buf(before.size(), 0xab);
        size_t got = 0;
        st = qrms_optimizer_save(opt, buf.data(), cap, &got);
        expect_status(st);
        if (st == QRMS_SUCCESS) {
          check(buf == before);
          w.last_blob = buf;
        } else {
          check(std::all_of(buf.begin(), buf.end(), [](uint8_t b) { return b == 0xab; }));
        }
        break;
      }
      case 9: {
        std::vector<uint8_t> blob = w.last_blob;
        if (!blob.empty() && in.byte() % 2) blob[in.value<uint16_t>() % blob.size()] ^= in.byte();
        st = qrms_optimizer_load(opt, blob.empty() ? nullptr : blob.data(), blob.size());
        expect_status(st);
        if (st == QRMS_SUCCESS) continue;  // accepted blobs replace the state
        break;
      }
    }
    // Everything above except step and accepted loads must leave the state
    // as it was when it fails; reading calls leave it as it was anyway.
    if (st != QRMS_SUCCESS || op >= 5) check(save(opt) == before);
  }
  qrms_optimizer_destroy(opt);
  return 0;
}
