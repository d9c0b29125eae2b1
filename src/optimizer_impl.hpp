// Private state of qrms::Optimizer1State, shared by optimizer.cpp and
// state_format.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core.hpp"

namespace qrms {

// Device memory owned by the optimizer, freed through its backend.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(core::Backend *backend, size_t bytes)
      : backend_(backend), ptr_(bytes ? backend->alloc(bytes) : nullptr), bytes_(bytes) {}
  DeviceBuffer(DeviceBuffer &&o) noexcept { *this = std::move(o); }
  DeviceBuffer &operator=(DeviceBuffer &&o) noexcept {
    std::swap(backend_, o.backend_);
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_) backend_->free(ptr_);
  }
  template <typename T = void>
  T *get() const { return static_cast<T *>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  core::Backend *backend_ = nullptr;
  void *ptr_ = nullptr;
  size_t bytes_ = 0;
};

// What state a parameter needs, derived from its config and size.
struct Layout {
  core::StateKind kind = core::StateKind::Float32;
  bool momentum = false;  // momentum buffer
  bool clip = false;      // percentile clipping history
  bool unorm = false;     // max_unorm scratch
  bool unsigned_map = false;  // 8-bit square average on the unsigned map (StateMap::Unsigned)

  static Layout of(const Config &cfg, int64_t n);
  size_t state_bytes(int64_t n) const;  // bytes of one state buffer (s or b)
  size_t scale_bytes(int64_t n) const;  // bytes of its absmax / max1 array
  bool operator==(const Layout &o) const {
    return kind == o.kind && momentum == o.momentum && clip == o.clip && unorm == o.unorm &&
           unsigned_map == o.unsigned_map;
  }
  bool operator!=(const Layout &o) const { return !(*this == o); }
};

// The buffers of one parameter's state.
struct StateBuffers {
  DeviceBuffer state1, scale1, state2, scale2;  // s and b with their scales
  DeviceBuffer step;                              // int64 steps taken, counted on the device
  DeviceBuffer gnorm_vec, gnorm_scale;            // percentile clipping
  DeviceBuffer unorm;                             // max_unorm scratch

  StateBuffers() = default;
  StateBuffers(core::Backend *backend, const Layout &layout, int64_t n);
  int64_t bytes() const;
};

struct ParamEntry {
  void *param = nullptr;
  const void *grad = nullptr;
  Dtype dtype = Dtype::Float32;
  int64_t n = 0;          // elements this rank holds
  int64_t global_n = 0;   // elements of the whole (logical) tensor
  int64_t offset = 0;     // this rank's elements are [offset, offset + n) of it
  Config cfg;
  bool own_config = false;  // set by set_param_config
  bool stepped = false;     // a step has been enqueued (its state layout is fixed from then on)
  Layout layout;
  StateBuffers state;

  bool sharded() const { return n != global_n; }
  // Takes part in a step: has a grad, or is an empty shard (nothing to point at).
  bool steps() const { return grad != nullptr || n == 0; }
};

// Device floats that a sharded step reduces across ranks, per parameter i
// of P: sums [clip(i) at i, unorm(i) at P + 2i], maxima [2i, 2i+1] followed
// by their NaN flags (2P more), and the found-inf flag.
struct ReduceSlots {
  DeviceBuffer buf;
  size_t params = 0;

  void resize(core::Backend *backend, size_t p);  // allocates; not during a step
  float *clip(size_t i) const { return buf.get<float>() + i; }
  float *unorm(size_t i) const { return buf.get<float>() + params + 2 * i; }
  float *sums() const { return buf.get<float>(); }
  float *maxima(size_t i) const { return buf.get<float>() + 3 * params + 2 * i; }
  float *found() const { return buf.get<float>() + 7 * params; }
};

struct Optimizer1State::Impl {
  Config cfg;
  std::unique_ptr<core::Backend> backend;
  // The dynamic maps on the device and the host, by StateMap: [0] signed
  // (momentum buffers, and square averages by default), [1] unsigned.
  DeviceBuffer qmap[2];
  std::vector<float> host_qmap[2];
  std::vector<ParamEntry> params;
  DeviceBuffer found_inf;                  // int32: the last step saw inf/NaN (skip_nonfinite)
  const float *grad_unscale = nullptr;     // device float multiplying every gradient, or nullptr
  // Reused by step() so that stepping allocates nothing after the first call.
  std::vector<core::TensorUpdate> updates;
  std::vector<core::ClipJob> clips;
  std::vector<core::GradRef> grads;
  int device_index = 0;
  // The communicator of a sharded optimizer (set_comm); has_comm false: none.
  qrms_comm comm{};
  bool has_comm = false;
  ReduceSlots slots;  // allocated while a comm is set

  ParamEntry &at(int64_t index);
  // A parameter's config as it takes effect: its own fields, and this
  // optimizer's values of the optimizer-wide ones (which a per-parameter
  // config or a loaded blob does not set), so get_param_config reports them.
  Config param_cfg(Config c) const {
    c.skip_nonfinite = cfg.skip_nonfinite;
    c.stochastic_rounding = cfg.stochastic_rounding;
    c.seed = cfg.seed;
    return c;
  }
  int32_t rank() const { return has_comm ? comm.rank : 0; }
  int32_t world() const { return has_comm ? comm.world_size : 1; }
  const ParamEntry &at(int64_t index) const;
};

// One validation of a shard: its place in the logical tensor and, for
// block-wise 8-bit state, that no quantization block spans two ranks.
void check_shard(int64_t numel, int64_t global_numel, int64_t offset, const Layout &layout, const std::string &what);

// reduce_slots.cpp: the collectives of a sharded step, through impl.comm.
void all_reduce_sum(const Optimizer1State::Impl &impl, float *v, int64_t n, void *stream);
void all_reduce_max(const Optimizer1State::Impl &impl, float *v, int64_t n, void *stream);  // NaN-safe
void all_reduce_flag(const Optimizer1State::Impl &impl, int32_t *flag, void *stream);

// state_format.cpp
size_t save_state(const Optimizer1State::Impl &impl, void *buffer, size_t capacity);
void load_state(Optimizer1State::Impl &impl, const void *buffer, size_t size);

}  // namespace qrms
