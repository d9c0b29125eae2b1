// qrmsprop C++ class layer: qrms::RMSprop, qrms::RMSprop8bit,
// qrms::RMSprop32bit and qrms::RMSprop4bit over one base,
// qrms::Optimizer1State.
//
// Failures throw a qrms::Error subclass carrying the C status code:
// ValueError (QRMS_ERROR_INVALID_ARGUMENT), NotImplementedError,
// DeviceError, OutOfMemoryError, BadStateError. A method that throws leaves
// the optimizer as it was.
//
// The C++ API is linked statically (CMake target qrmsprop::cpp, archive
// libqrmsprop_cpp.a): C++ has no stable ABI, so the shared library
// libqrmsprop.so exports only the C functions of qrmsprop.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "qrmsprop/qrmsprop.h"

namespace qrms {

enum class Device : int32_t { CPU = QRMS_DEVICE_CPU, CUDA = QRMS_DEVICE_CUDA };
enum class Dtype : int32_t { Float32 = QRMS_FLOAT32, Float16 = QRMS_FLOAT16, BFloat16 = QRMS_BFLOAT16 };
// The map of 8-bit square-average state (qrms_config.state_map); 4-bit state
// has fixed maps and ignores it.
enum class StateMap : int32_t { Signed = QRMS_MAP_SIGNED, Unsigned = QRMS_MAP_UNSIGNED };

class Error : public std::runtime_error {
 public:
  Error(qrms_status_t status, const std::string &message) : std::runtime_error(message), status_(status) {}
  qrms_status_t status() const noexcept { return status_; }

 private:
  qrms_status_t status_;
};

#define QRMS_DEFINE_ERROR(Name, code)                                                  \
  class Name : public Error {                                                 \
   public:                                                                             \
    explicit Name(const std::string &message) : Error(code, message) {}                \
  }
QRMS_DEFINE_ERROR(ValueError, QRMS_ERROR_INVALID_ARGUMENT);
QRMS_DEFINE_ERROR(NotImplementedError, QRMS_ERROR_NOT_IMPLEMENTED);
QRMS_DEFINE_ERROR(DeviceError, QRMS_ERROR_DEVICE);
QRMS_DEFINE_ERROR(OutOfMemoryError, QRMS_ERROR_OUT_OF_MEMORY);
QRMS_DEFINE_ERROR(BadStateError, QRMS_ERROR_BAD_STATE);
#undef QRMS_DEFINE_ERROR

// The extra options of bitsandbytes' `args`.
struct Args {
  int64_t min_8bit_size = 4096;
  int32_t percentile_clipping = 100;
  bool block_wise = true;
  float max_unorm = 0.0f;
  bool skip_zeros = false;
  // The map of 8-bit square-average state (the momentum buffer keeps the
  // signed map; 32-bit and 4-bit state ignore it).
  StateMap state_map = StateMap::Signed;
};

// Every hyper-parameter of one parameter (SPEC section 2).
struct Config {
  float lr = 1e-2f;
  float alpha = 0.99f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  float momentum = 0.0f;
  bool centered = false;
  int32_t optim_bits = 32;
  Args args{};
  // Optimizer-wide (read from the optimizer's config, not per parameter):
  // skip the whole step when any gradient holds inf or NaN.
  bool skip_nonfinite = false;
  // Optimizer-wide too: round 16-bit (bfloat16, float16) parameters
  // stochastically (unbiased) instead of to nearest, with random bits from
  // Philox keyed by seed, the parameter's step, its index and the element's
  // index: the same bits on every backend and thread count.
  bool stochastic_rounding = false;
  uint64_t seed = 0;
};

// The one validation path: throws NotImplementedError for alpha == 0, then
// centered, then optim_bits not 4/8/32, then 4-bit without block_wise;
// ValueError for every other rule.
void validate(const Config &cfg);

// Throws ValueError when bytes [known, struct_size) of a caller's struct are
// not all zero: fields of a newer header that this library would ignore.
void check_struct_tail(const void *s, size_t struct_size, size_t known, const char *name);

// Conversions between the C struct and Config (read up to struct_size).
Config config_from_c(const qrms_config *cfg);
qrms_config config_to_c(const Config &cfg);

// bitsandbytes' create_dynamic_map(signed, total_bits - 1, total_bits):
// 2^total_bits ascending values (256 by default; 16 for 4-bit state's
// momentum map). ValueError for total_bits outside [2, 8].
std::vector<float> dynamic_map(bool is_signed, int total_bits = 8);

class Optimizer1State {
 public:
  Optimizer1State(const Config &cfg, Device device = Device::CPU, int device_index = 0);
  virtual ~Optimizer1State();
  Optimizer1State(const Optimizer1State &) = delete;
  Optimizer1State &operator=(const Optimizer1State &) = delete;

  // Registers a parameter (state allocated now, zeroed); returns its index.
  int64_t add_param(void *param, const void *grad, Dtype dtype, int64_t numel);
  // Registers this rank's elements [offset, offset + numel) of a tensor of
  // global_numel elements (numel may be 0). See qrms_optimizer_add_param_shard.
  int64_t add_param_shard(void *param, const void *grad, Dtype dtype, int64_t numel, int64_t global_numel,
                          int64_t offset);
  // The communicator of a sharded optimizer (copied); nullptr removes it.
  void set_comm(const qrms_comm *comm);
  void set_grad(int64_t index, const void *grad);
  // Per-parameter override (bitsandbytes' GlobalOptimManager.override_config).
  void set_param_config(int64_t index, const Config &cfg);
  const Config &param_config(int64_t index) const;
  const Config &config() const;
  // Learning rate of every parameter, own configs included.
  void set_lr(float lr);
  // One step of every parameter with a grad; stream is a cudaStream_t.
  void step(void *stream = nullptr);
  // Every gradient is multiplied by *unscale (a device float, read at each
  // step) before anything else; nullptr: no factor.
  void set_grad_unscale(const float *unscale);
  // Device int32 that each step with skip_nonfinite sets to 1 when it was
  // skipped for an inf/NaN gradient, else 0.
  const int32_t *found_inf() const;
  bool read_found_inf() const;  // the same, copied to the host (synchronises)

  int64_t param_count() const;
  // Steps parameter `index` has taken (counted on the device; synchronises).
  int64_t get_step(int64_t index) const;
  // Dequantized state (QRMS_STATE_SQUARE_AVG or QRMS_STATE_MOMENTUM).
  std::vector<float> read_state(int64_t index, int which) const;
  // True when the parameter's state is 8-bit.
  bool is_8bit(int64_t index) const;
  // Bits per element of the parameter's state: 32, 8 or 4 (min_8bit_size
  // keeps small tensors 32-bit in the 8- and 4-bit variants).
  int32_t state_bits(int64_t index) const;
  int64_t numel(int64_t index) const;
  int64_t global_numel(int64_t index) const;
  int64_t shard_offset(int64_t index) const;
  Dtype dtype(int64_t index) const;
  int64_t state_bytes() const;
  Device device() const;

  // Save into buffer (capacity bytes); returns the size. buffer == nullptr
  // with capacity 0 only returns the size.
  size_t save(void *buffer, size_t capacity) const;
  std::vector<uint8_t> save() const;
  void load(const void *buffer, size_t size);

  struct Impl;

 protected:
  std::unique_ptr<Impl> impl_;
};

// Merges the blobs of every rank of a sharded optimizer (one per rank, any
// order) into the blob of one unsharded optimizer; returns its size. out ==
// nullptr with capacity 0 only returns the size. Throws BadStateError for a
// missing or doubled rank or shards that do not tile their tensors.
size_t merge_states(const void *const *blobs, const size_t *sizes, size_t count, void *out, size_t capacity);

class RMSprop : public Optimizer1State {
 public:
  explicit RMSprop(float lr = 1e-2f, float alpha = 0.99f, float eps = 1e-8f, float weight_decay = 0.0f,
                   float momentum = 0.0f, bool centered = false, int32_t optim_bits = 32,
                   const Args &args = Args{}, Device device = Device::CPU, int device_index = 0);
};

class RMSprop8bit : public Optimizer1State {
 public:
  explicit RMSprop8bit(float lr = 1e-2f, float alpha = 0.99f, float eps = 1e-8f, float weight_decay = 0.0f,
                       float momentum = 0.0f, bool centered = false, const Args &args = Args{},
                       Device device = Device::CPU, int device_index = 0);
};

class RMSprop32bit : public Optimizer1State {
 public:
  explicit RMSprop32bit(float lr = 1e-2f, float alpha = 0.99f, float eps = 1e-8f, float weight_decay = 0.0f,
                        float momentum = 0.0f, bool centered = false, const Args &args = Args{},
                        Device device = Device::CPU, int device_index = 0);
};

// 4-bit block-wise state (optim_bits 4): blocks of 128, a square-average map
// without a zero code, a signed map for the momentum buffer.
class RMSprop4bit : public Optimizer1State {
 public:
  explicit RMSprop4bit(float lr = 1e-2f, float alpha = 0.99f, float eps = 1e-8f, float weight_decay = 0.0f,
                       float momentum = 0.0f, bool centered = false, const Args &args = Args{},
                       Device device = Device::CPU, int device_index = 0);
};

}  // namespace qrms
