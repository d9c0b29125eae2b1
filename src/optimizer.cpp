// The class layer: parameters, their configs and state buffers, and step(),
// which hands every parameter of one (state kind, dtype) group to the
// backend in one call.
#include <algorithm>
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
  l.momentum = cfg.momentum > 0.0f;
  l.clip = cfg.args.percentile_clipping < 100;
  l.unorm = cfg.args.max_unorm > 0.0f;
  return l;
}

size_t Layout::state_bytes(int64_t n) const {
  return static_cast<size_t>(n) * (kind == StateKind::Float32 ? sizeof(float) : sizeof(uint8_t));
}

size_t Layout::scale_bytes(int64_t n) const {
  switch (kind) {
    case StateKind::Blockwise8: return static_cast<size_t>(core::num_blocks(n)) * sizeof(float);
    case StateKind::Tensor8: return 2 * sizeof(float);
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
  return math::Hyper{c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, c.args.max_unorm, c.args.skip_zeros ? 1 : 0};
}

}  // namespace

// ---- Optimizer1State ------------------------------------------------------------

Optimizer1State::Optimizer1State(const Config &cfg, Device device, int device_index) : impl_(new Impl) {
  validate(cfg);
  impl_->cfg = cfg;
  if (device == Device::CPU) {
    impl_->backend = core::make_cpu_backend();
  } else if (device == Device::CUDA) {
    impl_->backend = core::make_cuda_backend(device_index);
  } else {
    throw ValueError("invalid device " + std::to_string(static_cast<int>(device)) +
                     " (QRMS_DEVICE_CPU 0, QRMS_DEVICE_CUDA 1)");
  }
  impl_->host_qmap = dynamic_map(true);
  impl_->qmap = DeviceBuffer(impl_->backend.get(), 256 * sizeof(float));
  impl_->backend->from_host(impl_->qmap.get(), impl_->host_qmap.data(), 256 * sizeof(float));
  impl_->found_inf = DeviceBuffer(impl_->backend.get(), sizeof(int32_t));
}

Optimizer1State::~Optimizer1State() = default;

int64_t Optimizer1State::add_param(void *param, const void *grad, Dtype dtype, int64_t numel) {
  check_dtype(dtype);
  if (param == nullptr) throw ValueError("param pointer is NULL");
  if (numel <= 0) throw ValueError("numel must be > 0, got " + std::to_string(numel));
  check_aligned(param, dtype, "param");
  if (grad) check_aligned(grad, dtype, "grad");
  for (const ParamEntry &p : impl_->params)
    if (p.param == param) throw ValueError("this param pointer was already added");
  impl_->backend->check_pointer(param, "param");
  if (grad) impl_->backend->check_pointer(grad, "grad");

  ParamEntry e;
  e.param = param;
  e.grad = grad;
  e.dtype = dtype;
  e.n = numel;
  e.cfg = impl_->cfg;
  e.layout = Layout::of(e.cfg, numel);
  e.state = StateBuffers(impl_->backend.get(), e.layout, numel);
  impl_->params.push_back(std::move(e));
  return static_cast<int64_t>(impl_->params.size()) - 1;
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
  const Layout layout = Layout::of(cfg, e.n);
  if (layout != e.layout) {
    if (e.stepped)
      throw ValueError("parameter " + std::to_string(index) +
                       " has taken steps; its state layout (precision, momentum buffer, clipping, max_unorm) "
                       "can only change before its first step");
    StateBuffers fresh(impl_->backend.get(), layout, e.n);  // may throw: nothing changed yet
    e.state = std::move(fresh);
    e.layout = layout;
  }
  e.cfg = cfg;
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

void Optimizer1State::step(void *stream) {
  Impl &m = *impl_;
  const Dtype dtypes[] = {Dtype::Float32, Dtype::Float16, Dtype::BFloat16};
  core::StepControl ctl;
  ctl.grad_unscale = m.grad_unscale;
  // skip_nonfinite: one pass over every gradient first; the passes below
  // read the flag on the device and change nothing when it is set.
  if (m.cfg.skip_nonfinite) {
    int32_t *found = m.found_inf.get<int32_t>();
    m.backend->zero(found, sizeof(int32_t), stream);
    for (Dtype dtype : dtypes) {
      m.grads.clear();
      for (const ParamEntry &e : m.params)
        if (e.grad && e.dtype == dtype) m.grads.push_back({e.grad, e.n});
      if (!m.grads.empty()) m.backend->check_finite(dtype, m.grads.data(), m.grads.size(), m.grad_unscale, found, stream);
    }
    ctl.skip = found;
  }
  // Percentile clipping first: it writes the gnorm_scale the updates read.
  for (Dtype dtype : dtypes) {
    m.clips.clear();
    for (ParamEntry &e : m.params) {
      if (!e.grad || e.dtype != dtype || !e.layout.clip) continue;
      core::ClipJob j;
      j.grad = e.grad;
      j.n = e.n;
      j.gnorm_vec = e.state.gnorm_vec.get<float>();
      j.step = e.state.step.get<int64_t>();  // the update pass advances it
      j.percentile = e.cfg.args.percentile_clipping;
      j.gnorm_scale = e.state.gnorm_scale.get<float>();
      m.clips.push_back(j);
    }
    if (!m.clips.empty()) m.backend->clip(dtype, m.clips.data(), m.clips.size(), ctl, stream);
  }
  for (StateKind kind : {StateKind::Float32, StateKind::Blockwise8, StateKind::Tensor8}) {
    for (Dtype dtype : dtypes) {
      m.updates.clear();
      for (ParamEntry &e : m.params) {
        if (!e.grad || e.dtype != dtype || e.layout.kind != kind) continue;
        core::TensorUpdate t;
        t.param = e.param;
        t.grad = e.grad;
        t.n = e.n;
        t.state1 = e.state.state1.get();
        t.state2 = e.state.state2.get();
        t.scale1 = e.state.scale1.get<float>();
        t.scale2 = e.state.scale2.get<float>();
        t.gnorm_scale = e.state.gnorm_scale.get<float>();
        t.unorm = e.state.unorm.get<float>();
        t.step = e.state.step.get<int64_t>();
        t.hp = hyper_of(e.cfg);
        m.updates.push_back(t);
      }
      if (!m.updates.empty())
        m.backend->update(kind, dtype, m.updates.data(), m.updates.size(), m.qmap.get<float>(), ctl, stream);
    }
  }
  for (ParamEntry &e : m.params)
    if (e.grad) e.stepped = true;
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
bool Optimizer1State::is_8bit(int64_t index) const { return impl_->at(index).layout.kind != StateKind::Float32; }
int64_t Optimizer1State::numel(int64_t index) const { return impl_->at(index).n; }
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
  if (e.layout.kind == StateKind::Float32) {
    impl_->backend->to_host(out.data(), state.get(), state.bytes());
    return out;
  }
  std::vector<uint8_t> codes(state.bytes());
  std::vector<float> scales(scale.bytes() / sizeof(float));
  impl_->backend->to_host(codes.data(), state.get(), codes.size());
  impl_->backend->to_host(scales.data(), scale.get(), scale.bytes());
  const float *q = impl_->host_qmap.data();
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

// ---- the three variants ------------------------------------------------------

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

}  // namespace qrms
