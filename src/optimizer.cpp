// The class layer: parameters, their configs and state buffers, and step(),
// which hands every parameter of one (state kind, dtype) group to the
// backend in one call.
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <cstdint>
#include <string>

#include "optimizer_impl.hpp"

namespace qrms {

using core::StateKind;

// ---- layout ------------------------------------------------------------------

Layout Layout::of(const Config &cfg, int64_t n) {
  Layout l;
  if (cfg.optim_bits == 8 && n >= cfg.args.min_8bit_size)
    l.kind = cfg.args.block_wise ? StateKind::Blockwise8 : StateKind::Tensor8;
  if (cfg.optim_bits == 4 && n >= cfg.args.min_8bit_size) l.kind = StateKind::Blockwise4;
  l.momentum = cfg.momentum > 0.0f;
  l.clip = cfg.args.percentile_clipping < 100;
  l.unorm = cfg.args.max_unorm > 0.0f;
  // The 8-bit kinds only: 4-bit state has fixed maps, 32-bit none.
  l.unsigned_map = (l.kind == StateKind::Blockwise8 || l.kind == StateKind::Tensor8) &&
                   cfg.args.state_map == StateMap::Unsigned;
  return l;
}

size_t Layout::state_bytes(int64_t n) const {
  if (kind == StateKind::Blockwise4) return static_cast<size_t>(n / 2 + n % 2);  // two codes per byte
  return static_cast<size_t>(n) * (kind == StateKind::Float32 ? sizeof(float) : sizeof(uint8_t));
}

size_t Layout::scale_bytes(int64_t n) const {
  switch (kind) {
    case StateKind::Blockwise8: return static_cast<size_t>(core::num_blocks(n)) * sizeof(float);
    case StateKind::Tensor8: return 2 * sizeof(float);
    case StateKind::Blockwise4: return static_cast<size_t>(core::num_blocks4(n)) * sizeof(float);
    case StateKind::Float32: break;
  }
  return 0;
}

StateBuffers::StateBuffers(core::Backend *backend, const Layout &l, int64_t n)
    : state1(backend, l.state_bytes(n)), scale1(backend, l.scale_bytes(n)), step(backend, sizeof(int64_t)) {
  if (l.momentum) {
    state2 = DeviceBuffer(backend, l.state_bytes(n));
    scale2 = DeviceBuffer(backend, l.scale_bytes(n));
  }
  if (l.clip) {
    gnorm_vec = DeviceBuffer(backend, math::kGnormHistory * sizeof(float));
    gnorm_scale = DeviceBuffer(backend, sizeof(float));
  }
  if (l.unorm) unorm = DeviceBuffer(backend, 2 * sizeof(float));
}

int64_t StateBuffers::bytes() const {
  size_t b = 0;
  for (const DeviceBuffer *d : {&state1, &scale1, &state2, &scale2, &step, &gnorm_vec, &gnorm_scale, &unorm})
    b += d->bytes();
  return static_cast<int64_t>(b);
}

// ---- impl ----------------------------------------------------------------------

ParamEntry &Optimizer1State::Impl::at(int64_t index) {
  if (index < 0 || index >= static_cast<int64_t>(params.size()))
    throw ValueError("parameter index " + std::to_string(index) + " out of range (the optimizer has " +
                     core::counted(params.size(), "parameter") + ")");
  return params[static_cast<size_t>(index)];
}

const ParamEntry &Optimizer1State::Impl::at(int64_t index) const {
  return const_cast<Impl *>(this)->at(index);
}

namespace {

size_t dtype_size(Dtype d) { return d == Dtype::Float32 ? 4 : 2; }

void check_dtype(Dtype d) {
  if (d != Dtype::Float32 && d != Dtype::Float16 && d != Dtype::BFloat16)
    throw ValueError("invalid dtype " + std::to_string(static_cast<int>(d)) +
                     " (QRMS_FLOAT32 0, QRMS_FLOAT16 1, QRMS_BFLOAT16 2)");
}

void check_aligned(const void *p, Dtype d, const char *what) {
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(d) != 0)
    throw ValueError(std::string(what) + " pointer is not aligned to its element size (" +
                     std::to_string(dtype_size(d)) + " bytes)");
}

math::Hyper hyper_of(const Config &c) {
  return math::Hyper{c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, c.args.max_unorm, uint16_t(c.args.skip_zeros ? 1 : 0), 0};
}

}  // namespace

// ---- Optimizer1State ------------------------------------------------------------

Optimizer1State::Optimizer1State(const Config &cfg, Device device, int device_index) : impl_(new Impl) {
  validate(cfg);
  impl_->cfg = cfg;
  impl_->device_index = device_index;
  if (device == Device::CPU) {
    impl_->backend = core::make_cpu_backend();
  } else if (device == Device::CUDA) {
    impl_->backend = core::make_cuda_backend(device_index);
  } else {
    throw ValueError("invalid device " + std::to_string(static_cast<int>(device)) +
                     " (QRMS_DEVICE_CPU 0, QRMS_DEVICE_CUDA 1)");
  }
  for (int u = 0; u < 2; ++u) {
    impl_->host_qmap[u] = dynamic_map(u == 0);
    impl_->qmap[u] = DeviceBuffer(impl_->backend.get(), 256 * sizeof(float));
    impl_->backend->from_host(impl_->qmap[u].get(), impl_->host_qmap[u].data(), 256 * sizeof(float));
    impl_->backend->prepare_map(impl_->qmap[u].get<float>());
  }
  impl_->found_inf = DeviceBuffer(impl_->backend.get(), sizeof(int32_t));
}

Optimizer1State::~Optimizer1State() = default;

int64_t Optimizer1State::add_param(void *param, const void *grad, Dtype dtype, int64_t numel) {
  if (numel <= 0) throw ValueError("numel must be > 0, got " + std::to_string(numel));
  return add_param_shard(param, grad, dtype, numel, numel, 0);
}

void check_shard(int64_t numel, int64_t global_numel, int64_t offset, const Layout &layout, const std::string &what) {
  if (global_numel <= 0) throw ValueError(what + ": global_numel must be > 0, got " + std::to_string(global_numel));
  if (numel < 0 || offset < 0 || offset > global_numel || numel > global_numel - offset)
    throw ValueError(what + ": the shard [offset " + std::to_string(offset) + ", numel " + std::to_string(numel) +
                     "] must lie within the " + core::counted(global_numel, "element") + " of the whole tensor");
  if (layout.kind == StateKind::Blockwise8 && offset % math::kBlockSize != 0)
    throw ValueError(what + ": offset " + std::to_string(offset) + " of a shard with 8-bit block-wise state must be a "
                     "multiple of " + std::to_string(math::kBlockSize) + " (no quantization block may span two ranks)");
  if (layout.kind == StateKind::Blockwise4 && offset % math::kBlockSize4 != 0)
    throw ValueError(what + ": offset " + std::to_string(offset) + " of a shard with 4-bit state must be a multiple of " +
                     std::to_string(math::kBlockSize4) + " (no quantization block may span two ranks)");
}

int64_t Optimizer1State::add_param_shard(void *param, const void *grad, Dtype dtype, int64_t numel,
                                         int64_t global_numel, int64_t offset) {
  check_dtype(dtype);
  const Layout layout = Layout::of(impl_->cfg, global_numel);
  check_shard(numel, global_numel, offset, layout, "shard");
  const bool empty = numel == 0;  // an empty shard may have NULL pointers: it points at nothing
  if (param == nullptr && !empty) throw ValueError("param pointer is NULL");
  if (param) check_aligned(param, dtype, "param");
  if (grad) check_aligned(grad, dtype, "grad");
  for (const ParamEntry &p : impl_->params)
    if (param && p.param == param) throw ValueError("this param pointer was already added");
  if (param) impl_->backend->check_pointer(param, "param");
  if (grad) impl_->backend->check_pointer(grad, "grad");
  if (impl_->has_comm) impl_->slots.resize(impl_->backend.get(), impl_->params.size() + 1);

  ParamEntry e;
  e.param = param;
  e.grad = grad;
  e.dtype = dtype;
  e.n = numel;
  e.global_n = global_numel;
  e.offset = offset;
  e.cfg = impl_->cfg;
  e.layout = layout;
  e.state = StateBuffers(impl_->backend.get(), e.layout, numel);
  impl_->params.push_back(std::move(e));
  return static_cast<int64_t>(impl_->params.size()) - 1;
}

void Optimizer1State::set_comm(const qrms_comm *comm) {
  Impl &m = *impl_;
  if (comm == nullptr) {
    m.has_comm = false;
    m.comm = qrms_comm{};
    return;
  }
  const size_t first = offsetof(qrms_comm, all_reduce) + sizeof(comm->all_reduce);
  if (comm->struct_size < first)
    throw ValueError("comm->struct_size " + std::to_string(comm->struct_size) +
                     " is smaller than the first published qrms_comm (" + std::to_string(first) + ")");
  check_struct_tail(comm, comm->struct_size, sizeof(qrms_comm), "qrms_comm");
  if (comm->world_size < 1 || comm->rank < 0 || comm->rank >= comm->world_size)
    throw ValueError("comm: rank " + std::to_string(comm->rank) + " is not in [0, world_size " +
                     std::to_string(comm->world_size) + ")");
  if (comm->all_reduce == nullptr) throw ValueError("comm->all_reduce is NULL");
  const qrms_device_t mine = static_cast<qrms_device_t>(m.backend->device());
  if (comm->device != mine ||
      (mine == QRMS_DEVICE_CUDA && m.device_index >= 0 && comm->device_index != m.device_index))
    throw DeviceError("comm works on device " + std::to_string(comm->device) + " index " +
                      std::to_string(comm->device_index) + ", but the optimizer runs on device " +
                      std::to_string(mine) + " index " + std::to_string(m.device_index) +
                      " (QRMS_DEVICE_CPU 0, QRMS_DEVICE_CUDA 1)");
  m.slots.resize(m.backend.get(), m.params.size());  // may throw: nothing changed yet
  m.comm = qrms_comm{};  // a caller's older, smaller struct: read only its bytes
  std::memcpy(&m.comm, comm, std::min(comm->struct_size, sizeof(qrms_comm)));
  m.comm.struct_size = sizeof(qrms_comm);
  m.has_comm = true;
}

void Optimizer1State::set_grad(int64_t index, const void *grad) {
  ParamEntry &e = impl_->at(index);
  if (grad) {
    check_aligned(grad, e.dtype, "grad");
    impl_->backend->check_pointer(grad, "grad");
  }
  e.grad = grad;
}

void Optimizer1State::set_param_config(int64_t index, const Config &cfg) {
  ParamEntry &e = impl_->at(index);
  validate(cfg);
  const Layout layout = Layout::of(cfg, e.global_n);
  check_shard(e.n, e.global_n, e.offset, layout, "parameter " + std::to_string(index));
  if (layout != e.layout) {
    if (e.stepped)
      throw ValueError("parameter " + std::to_string(index) +
                       " has taken steps; its state layout (precision, state map, momentum buffer, clipping, "
                       "max_unorm) can only change before its first step");
    StateBuffers fresh(impl_->backend.get(), layout, e.n);  // may throw: nothing changed yet
    e.state = std::move(fresh);
    e.layout = layout;
  }
  e.cfg = impl_->param_cfg(cfg);
  e.own_config = true;
}

const Config &Optimizer1State::param_config(int64_t index) const { return impl_->at(index).cfg; }
const Config &Optimizer1State::config() const { return impl_->cfg; }

void Optimizer1State::set_lr(float lr) {
  Config c = impl_->cfg;
  c.lr = lr;
  validate(c);
  impl_->cfg.lr = lr;
  for (ParamEntry &e : impl_->params) e.cfg.lr = lr;
}

// With a comm set (a sharded optimizer), a step reduces across ranks the
// figures that need the whole tensor: the found-inf flag, clipping norms,
// max_unorm norms and per-tensor 8-bit maxima. Each is one collective per
// step at most, called on every rank or on none (the decision depends only on
// the parameters' layouts, the same on every rank), and all of them come
// before the first write to a parameter or its state.
void Optimizer1State::step(void *stream) {
  Impl &m = *impl_;
  const Dtype dtypes[] = {Dtype::Float32, Dtype::Float16, Dtype::BFloat16};
  const StateKind kinds[] = {StateKind::Float32, StateKind::Blockwise8, StateKind::Tensor8, StateKind::Blockwise4};
  bool any_clip = false, any_unorm = false, any_tensor8 = false;
  for (size_t i = 0; i < m.params.size(); ++i) {
    const ParamEntry &e = m.params[i];
    any_clip = any_clip || e.layout.clip;
    any_unorm = any_unorm || e.layout.unorm;
    any_tensor8 = any_tensor8 || e.layout.kind == StateKind::Tensor8;
    if (e.sharded() && !m.has_comm && (e.layout.clip || e.layout.unorm || e.layout.kind == StateKind::Tensor8 ||
                                       m.cfg.skip_nonfinite))
      throw ValueError("parameter " + std::to_string(i) + " is a shard and needs figures of the whole tensor "
                       "(clipping, max_unorm, per-tensor 8-bit or skip_nonfinite): set a communicator first "
                       "(qrms_optimizer_set_comm)");
  }
  const bool comm = m.has_comm;
  core::StepControl ctl;
  ctl.grad_unscale = m.grad_unscale;
  ctl.stochastic_round = m.cfg.stochastic_rounding;
  ctl.seed = m.cfg.seed;
  // skip_nonfinite: one pass over every gradient first; the passes below
  // read the flag on the device and change nothing when it is set.
  if (m.cfg.skip_nonfinite) {
    int32_t *found = m.found_inf.get<int32_t>();
    m.backend->zero(found, sizeof(int32_t), stream);
    for (Dtype dtype : dtypes) {
      m.grads.clear();
      for (const ParamEntry &e : m.params)
        if (e.grad && e.n > 0 && e.dtype == dtype) m.grads.push_back({e.grad, e.n});
      if (!m.grads.empty()) m.backend->check_finite(dtype, m.grads.data(), m.grads.size(), m.grad_unscale, found, stream);
    }
    if (comm) all_reduce_flag(m, found, stream);
    ctl.skip = found;
  }
  // Percentile clipping first: it writes the gnorm_scale the updates read.
  auto clip_pass = [&](core::Pass pass) {
    ctl.pass = pass;
    for (Dtype dtype : dtypes) {
      m.clips.clear();
      for (size_t i = 0; i < m.params.size(); ++i) {
        ParamEntry &e = m.params[i];
        if (!e.steps() || e.dtype != dtype || !e.layout.clip) continue;
        core::ClipJob j;
        j.grad = e.grad;
        j.n = e.n;
        j.gnorm_vec = e.state.gnorm_vec.get<float>();
        j.step = e.state.step.get<int64_t>();  // the update pass advances it
        j.percentile = e.cfg.args.percentile_clipping;
        j.gnorm_scale = e.state.gnorm_scale.get<float>();
        j.sumsq = comm ? m.slots.clip(i) : nullptr;
        m.clips.push_back(j);
      }
      if (!m.clips.empty()) m.backend->clip(dtype, m.clips.data(), m.clips.size(), ctl, stream);
    }
  };
  // One group per (kind, dtype, square-average map); momentum buffers keep the signed map.
  ctl.momentum_qmap = m.qmap[0].get<float>();
  auto update_pass = [&](core::Pass pass) {
    ctl.pass = pass;
    for (StateKind kind : kinds) {
      for (Dtype dtype : dtypes) {
        for (const bool unsigned_map : {false, true}) {
          m.updates.clear();
          for (size_t i = 0; i < m.params.size(); ++i) {
            ParamEntry &e = m.params[i];
            if (!e.steps() || e.dtype != dtype || e.layout.kind != kind || e.layout.unsigned_map != unsigned_map)
              continue;
            core::TensorUpdate t;
            t.param = e.param;
            t.grad = e.grad;
            t.n = e.n;
            t.state1 = e.state.state1.get();
            t.state2 = e.state.state2.get();
            t.scale1 = e.state.scale1.get<float>();
            t.scale2 = e.state.scale2.get<float>();
            t.gnorm_scale = e.state.gnorm_scale.get<float>();
            t.unorm = comm && e.layout.unorm ? m.slots.unorm(i) : e.state.unorm.get<float>();
            t.new_max = comm && kind == StateKind::Tensor8 ? m.slots.maxima(i) : nullptr;
            t.step = e.state.step.get<int64_t>();
            t.hp = hyper_of(e.cfg);
            m.updates.push_back(t);
          }
          if (!m.updates.empty())
            m.backend->update(kind, dtype, m.updates.data(), m.updates.size(), m.qmap[unsigned_map].get<float>(), ctl,
                              stream);
        }
      }
    }
  };
  const int64_t np = static_cast<int64_t>(m.params.size());
  if (comm && any_clip) {
    m.backend->zero(m.slots.clip(0), static_cast<size_t>(np) * sizeof(float), stream);
    clip_pass(core::Pass::Read);
    all_reduce_sum(m, m.slots.clip(0), np, stream);
    clip_pass(core::Pass::Write);
  } else {
    clip_pass(core::Pass::All);
  }
  if (comm && (any_unorm || any_tensor8)) {
    m.backend->zero(m.slots.unorm(0), static_cast<size_t>(6 * np) * sizeof(float), stream);
    update_pass(core::Pass::Read);
    if (any_unorm) all_reduce_sum(m, m.slots.unorm(0), 2 * np, stream);
    if (any_tensor8) all_reduce_max(m, m.slots.maxima(0), 2 * np, stream);
    update_pass(core::Pass::Write);
  } else {
    update_pass(core::Pass::All);
  }
  for (ParamEntry &e : m.params)
    if (e.steps()) e.stepped = true;
}

void Optimizer1State::set_grad_unscale(const float *unscale) {
  if (unscale) impl_->backend->check_pointer(unscale, "grad unscale factor");
  impl_->grad_unscale = unscale;
}

const int32_t *Optimizer1State::found_inf() const { return impl_->found_inf.get<int32_t>(); }

bool Optimizer1State::read_found_inf() const {
  int32_t v = 0;
  impl_->backend->to_host(&v, impl_->found_inf.get(), sizeof(v));
  return v != 0;
}

int64_t Optimizer1State::param_count() const { return static_cast<int64_t>(impl_->params.size()); }
int64_t Optimizer1State::get_step(int64_t index) const {
  int64_t v = 0;
  impl_->backend->to_host(&v, impl_->at(index).state.step.get(), sizeof(v));
  return v;
}
bool Optimizer1State::is_8bit(int64_t index) const { return state_bits(index) == 8; }
int32_t Optimizer1State::state_bits(int64_t index) const {
  switch (impl_->at(index).layout.kind) {
    case StateKind::Float32: return 32;
    case StateKind::Blockwise4: return 4;
    case StateKind::Blockwise8:
    case StateKind::Tensor8: break;
  }
  return 8;
}
int64_t Optimizer1State::numel(int64_t index) const { return impl_->at(index).n; }
int64_t Optimizer1State::global_numel(int64_t index) const { return impl_->at(index).global_n; }
int64_t Optimizer1State::shard_offset(int64_t index) const { return impl_->at(index).offset; }
Dtype Optimizer1State::dtype(int64_t index) const { return impl_->at(index).dtype; }
Device Optimizer1State::device() const { return impl_->backend->device(); }

std::vector<float> Optimizer1State::read_state(int64_t index, int which) const {
  const ParamEntry &e = impl_->at(index);
  if (which != QRMS_STATE_SQUARE_AVG && which != QRMS_STATE_MOMENTUM)
    throw ValueError("which must be QRMS_STATE_SQUARE_AVG (0) or QRMS_STATE_MOMENTUM (1), got " +
                     std::to_string(which));
  if (which == QRMS_STATE_MOMENTUM && !e.layout.momentum)
    throw ValueError("parameter " + std::to_string(index) + " has no momentum buffer (momentum == 0)");
  const DeviceBuffer &state = which == QRMS_STATE_SQUARE_AVG ? e.state.state1 : e.state.state2;
  const DeviceBuffer &scale = which == QRMS_STATE_SQUARE_AVG ? e.state.scale1 : e.state.scale2;
  std::vector<float> out(static_cast<size_t>(e.n));
  if (e.n == 0) return out;  // an empty shard: no buffers to copy from
  if (e.layout.kind == StateKind::Float32) {
    impl_->backend->to_host(out.data(), state.get(), state.bytes());
    return out;
  }
  std::vector<uint8_t> codes(state.bytes());
  std::vector<float> scales(scale.bytes() / sizeof(float));
  impl_->backend->to_host(codes.data(), state.get(), codes.size());
  impl_->backend->to_host(scales.data(), scale.get(), scale.bytes());
  if (e.layout.kind == StateKind::Blockwise4) {
    const math::Map4 map = which == QRMS_STATE_SQUARE_AVG ? math::square_map4() : math::momentum_map4();
    for (int64_t i = 0; i < e.n; ++i)
      out[static_cast<size_t>(i)] =
          math::dequantize(map.v, math::code4(codes.data(), i), scales[static_cast<size_t>(i / math::kBlockSize4)]);
    return out;
  }
  const float *q = impl_->host_qmap[which == QRMS_STATE_SQUARE_AVG && e.layout.unsigned_map].data();
  for (int64_t i = 0; i < e.n; ++i) {
    const float a = e.layout.kind == StateKind::Blockwise8 ? scales[static_cast<size_t>(i / math::kBlockSize)]
                                                            : scales[0];
    out[static_cast<size_t>(i)] = math::dequantize(q, codes[static_cast<size_t>(i)], a);
  }
  return out;
}

int64_t Optimizer1State::state_bytes() const {
  int64_t b = 0;
  for (const ParamEntry &e : impl_->params) b += e.state.bytes();
  return b;
}

size_t Optimizer1State::save(void *buffer, size_t capacity) const { return save_state(*impl_, buffer, capacity); }

std::vector<uint8_t> Optimizer1State::save() const {
  std::vector<uint8_t> blob(save_state(*impl_, nullptr, 0));
  save_state(*impl_, blob.data(), blob.size());
  return blob;
}

void Optimizer1State::load(const void *buffer, size_t size) { load_state(*impl_, buffer, size); }

// ---- the variants ------------------------------------------------------

namespace {

Config make_config(float lr, float alpha, float eps, float weight_decay, float momentum, bool centered,
                   int32_t optim_bits, const Args &args) {
  Config c;
  c.lr = lr;
  c.alpha = alpha;
  c.eps = eps;
  c.weight_decay = weight_decay;
  c.momentum = momentum;
  c.centered = centered;
  c.optim_bits = optim_bits;
  c.args = args;
  return c;
}

}  // namespace

RMSprop::RMSprop(float lr, float alpha, float eps, float weight_decay, float momentum, bool centered,
                 int32_t optim_bits, const Args &args, Device device, int device_index)
    : Optimizer1State(make_config(lr, alpha, eps, weight_decay, momentum, centered, optim_bits, args), device,
                      device_index) {}

RMSprop8bit::RMSprop8bit(float lr, float alpha, float eps, float weight_decay, float momentum, bool centered,
                         const Args &args, Device device, int device_index)
    : Optimizer1State(make_config(lr, alpha, eps, weight_decay, momentum, centered, 8, args), device,
                      device_index) {}

RMSprop32bit::RMSprop32bit(float lr, float alpha, float eps, float weight_decay, float momentum, bool centered,
                           const Args &args, Device device, int device_index)
    : Optimizer1State(make_config(lr, alpha, eps, weight_decay, momentum, centered, 32, args), device,
                      device_index) {}

RMSprop4bit::RMSprop4bit(float lr, float alpha, float eps, float weight_decay, float momentum, bool centered,
                         const Args &args, Device device, int device_index)
    : Optimizer1State(make_config(lr, alpha, eps, weight_decay, momentum, centered, 4, args), device,
                      device_index) {}

}  // namespace qrms
