// The C ABI: argument checks, then the C++ layer; every exception becomes a
// status code and a thread-local message.
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "core.hpp"
#include "qrmsprop/qrmsprop.h"
#include "qrmsprop/qrmsprop.hpp"

struct qrms_optimizer_s {
  std::unique_ptr<qrms::Optimizer1State> opt;
};

namespace {

thread_local std::string t_last_error;

template <typename Fn>
qrms_status_t guarded(const char *fn, Fn &&body) noexcept {
  try {
    body();
    return QRMS_SUCCESS;
  } catch (const qrms::Error &e) {
    t_last_error = std::string(fn) + ": " + e.what();
    return e.status();
  } catch (const std::bad_alloc &) {
    t_last_error = std::string(fn) + ": out of host memory";
    return QRMS_ERROR_OUT_OF_MEMORY;
  } catch (const std::exception &e) {
    t_last_error = std::string(fn) + ": internal error: " + e.what();
    return QRMS_ERROR_INTERNAL;
  } catch (...) {
    t_last_error = std::string(fn) + ": internal error";
    return QRMS_ERROR_INTERNAL;
  }
}

void require(bool ok, const std::string &message) {
  if (!ok) throw qrms::ValueError(message);
}

qrms::Optimizer1State &get(qrms_optimizer_t opt) {
  require(opt != nullptr && opt->opt != nullptr, "optimizer handle is NULL");
  return *opt->opt;
}

qrms::Dtype to_dtype(qrms_dtype_t d) {
  require(d == QRMS_FLOAT32 || d == QRMS_FLOAT16 || d == QRMS_BFLOAT16,
          "invalid dtype " + std::to_string(d) + " (QRMS_FLOAT32 0, QRMS_FLOAT16 1, QRMS_BFLOAT16 2)");
  return static_cast<qrms::Dtype>(d);
}

// Most CPU threads qrms_set_num_threads accepts (a larger n is a bug in the
// caller, not a machine).
constexpr int32_t kMaxThreads = 1024;

// ---- structs the library writes into ------------------------------------------
// qrms_config_init writes the first published qrms_config; the _sized form
// writes at most the caller's size. qrms_update_params_init writes
// sizeof(qrms_update_params): should that struct grow, it needs an _init_sized
// and a header macro as qrms_config has, so its size is pinned here.
static_assert(qrms::core::kConfigV1Size == 64, "the first published qrms_config is 64 bytes (LP64)");
static_assert(offsetof(qrms_config, reserved1) == 84 && offsetof(qrms_config, state_map) == 88 &&
                  sizeof(qrms_config) == 96,
              "state_map is appended at 88, after the 88-byte layout (LP64)");
static_assert(sizeof(qrms_update_params) == 40,
              "qrms_update_params_init writes sizeof(qrms_update_params): a larger struct overruns old callers");

// ---- the core entry points ---------------------------------------------------

// The first published qrms_update_params ends with skip_zeros.
constexpr size_t kUpdateParamsV1Size = offsetof(qrms_update_params, skip_zeros) + sizeof(int32_t);

// Reads hp up to its struct_size and validates it through qrms::validate.
qrms::math::Hyper read_hyper(const qrms_update_params *hp) {
  require(hp != nullptr, "hp is NULL");
  require(hp->struct_size >= kUpdateParamsV1Size,
          "qrms_update_params.struct_size " + std::to_string(hp->struct_size) +
              " is smaller than the first published struct (" + std::to_string(kUpdateParamsV1Size) + ")");
  qrms::check_struct_tail(hp, hp->struct_size, sizeof(qrms_update_params), "qrms_update_params");
  qrms_update_params p;
  qrms_update_params_init(&p);
  std::memcpy(&p, hp, hp->struct_size < sizeof(p) ? hp->struct_size : sizeof(p));
  qrms::Config c;
  c.lr = p.lr;
  c.alpha = p.alpha;
  c.eps = p.eps;
  c.weight_decay = p.weight_decay;
  c.momentum = p.momentum;
  c.args.max_unorm = p.max_unorm;
  c.args.skip_zeros = p.skip_zeros != 0;
  qrms::validate(c);
  return qrms::math::Hyper{p.lr, p.alpha, p.eps, p.weight_decay, p.momentum, p.max_unorm, uint16_t(p.skip_zeros ? 1 : 0), 0};
}

std::unique_ptr<qrms::core::Backend> backend_for(qrms_device_t device) {
  if (device == QRMS_DEVICE_CPU) return qrms::core::make_cpu_backend();
  if (device == QRMS_DEVICE_CUDA) return qrms::core::make_cuda_backend(-1);  // the current device
  throw qrms::ValueError("invalid device " + std::to_string(device) + " (QRMS_DEVICE_CPU 0, QRMS_DEVICE_CUDA 1)");
}

// The one tensor of a core entry point.
qrms::core::TensorUpdate tensor_of(void *param, const void *grad, int64_t n, void *s, float *s_scale, void *b,
                                   float *b_scale, const float *gnorm_scale, float *unorm) {
  qrms::core::TensorUpdate t;
  t.param = param;
  t.grad = grad;
  t.n = n;
  t.state1 = s;
  t.scale1 = s_scale;
  t.state2 = b;
  t.scale2 = b_scale;
  t.gnorm_scale = gnorm_scale;
  t.unorm = unorm;
  return t;
}

// Checks the pointers of one core update and runs it.
void run_update(qrms_device_t device, qrms_dtype_t dtype, qrms::core::StateKind kind,
                qrms::core::TensorUpdate t, const qrms_update_params *hp, const float *qmap, qrms_stream_t stream) {
  const qrms::Dtype dt = to_dtype(dtype);
  t.hp = read_hyper(hp);
  require(t.n > 0, "n must be > 0, got " + std::to_string(t.n));
  require(t.param != nullptr, "param is NULL");
  require(t.grad != nullptr, "grad is NULL");
  require(t.state1 != nullptr, "square_avg state is NULL");
  const bool mom = t.hp.momentum > 0.0f;
  require(mom == (t.state2 != nullptr), mom ? "momentum > 0 needs a momentum buffer" : "momentum == 0 needs a NULL momentum buffer");
  if (kind == qrms::core::StateKind::Blockwise8 || kind == qrms::core::StateKind::Tensor8)
    require(qmap != nullptr, "qmap is NULL");
  if (kind != qrms::core::StateKind::Float32) {
    require(t.scale1 != nullptr, "square_avg absmax/max is NULL");
    require(mom == (t.scale2 != nullptr), "the momentum absmax/max must be given exactly when momentum > 0");
  }
  require((t.hp.max_unorm > 0.0f) == (t.unorm != nullptr), "unorm must be a 2-float scratch exactly when max_unorm > 0");
  // Every buffer once: its name and the alignment of its elements (codes: 1).
  struct Buffer {
    const void *p;
    const char *name, *holds;
    size_t align;
  };
  const size_t es = dt == qrms::Dtype::Float32 ? 4 : 2, fa = alignof(float);
  const bool f32 = kind == qrms::core::StateKind::Float32;
  const char *dtype_elems = "elements of its dtype", *floats = "floats", *codes = "codes";
  const Buffer buffers[] = {{t.param, "param", dtype_elems, es},
                            {t.grad, "grad", dtype_elems, es},
                            {t.state1, "square_avg", f32 ? floats : codes, f32 ? fa : 1},
                            {t.state2, "momentum", f32 ? floats : codes, f32 ? fa : 1},
                            {t.scale1, "square_avg absmax/max", floats, fa},
                            {t.scale2, "momentum absmax/max", floats, fa},
                            {t.gnorm_scale, "gnorm_scale", floats, fa},
                            {t.unorm, "unorm", floats, fa},
                            {qmap, "qmap", floats, fa}};
  for (const Buffer &buf : buffers)
    require(reinterpret_cast<uintptr_t>(buf.p) % buf.align == 0, std::string(buf.name) + " holds " + buf.holds +
                                                                      " and must be aligned to " +
                                                                      std::to_string(buf.align) + " bytes");
  auto backend = backend_for(device);
  for (const Buffer &buf : buffers)
    if (buf.p) backend->check_pointer(buf.p, buf.name);
  backend->update(kind, dt, &t, 1, qmap, qrms::core::StepControl{}, stream);
}

}  // namespace

extern "C" {

uint32_t qrms_version(void) { return QRMS_VERSION_NUMBER; }

const char *qrms_status_string(qrms_status_t status) {
  switch (status) {
    case QRMS_SUCCESS: return "success";
    case QRMS_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case QRMS_ERROR_NOT_IMPLEMENTED: return "not implemented";
    case QRMS_ERROR_DEVICE: return "device error";
    case QRMS_ERROR_OUT_OF_MEMORY: return "out of memory";
    case QRMS_ERROR_BAD_STATE: return "bad state blob";
    case QRMS_ERROR_INTERNAL: return "internal error";
    default: return "unknown status";
  }
}

const char *qrms_last_error(void) { return t_last_error.c_str(); }

int32_t qrms_cuda_device_count(void) { return qrms::core::cuda_device_count(); }

qrms_status_t qrms_set_num_threads(int32_t n) {
  return guarded("qrms_set_num_threads", [&] {
    require(n <= kMaxThreads, "n " + std::to_string(n) + " is more than " + std::to_string(kMaxThreads) +
                                  " threads (n <= 0 restores the default)");
    qrms::core::set_cpu_threads(n);
  });
}

int32_t qrms_get_num_threads(void) { return qrms::core::cpu_threads(); }

// Parenthesised: the header's qrms_config_init macro must not expand here.
// Old binaries and FFI callers reach this function; their struct may be the
// first published one, so it writes exactly that.
void(qrms_config_init)(qrms_config *cfg) {
  if (cfg) (void)qrms_config_init_sized(cfg, qrms::core::kConfigV1Size);
}

qrms_status_t qrms_config_init_sized(qrms_config *cfg, size_t size) {
  return guarded("qrms_config_init_sized", [&] {
    require(cfg != nullptr, "cfg is NULL");
    require(size >= qrms::core::kConfigV1Size,
            "size " + std::to_string(size) + " is smaller than the first published qrms_config");
    qrms_config c = qrms::config_to_c(qrms::Config{});
    c.struct_size = size < sizeof(c) ? size : sizeof(c);
    std::memcpy(cfg, &c, c.struct_size);
  });
}

qrms_status_t qrms_optimizer_create(qrms_optimizer_t *out, qrms_variant_t variant, const qrms_config *cfg,
                                    qrms_device_t device, int32_t device_index) {
  return guarded("qrms_optimizer_create", [&] {
    require(out != nullptr, "out is NULL");
    *out = nullptr;
    qrms::Config c = qrms::config_from_c(cfg);
    if (variant == QRMS_RMSPROP_8BIT) c.optim_bits = 8;
    else if (variant == QRMS_RMSPROP_32BIT) c.optim_bits = 32;
    else if (variant == QRMS_RMSPROP_4BIT) c.optim_bits = 4;
    else require(variant == QRMS_RMSPROP, "invalid variant " + std::to_string(variant) +
                                              " (QRMS_RMSPROP 0, QRMS_RMSPROP_8BIT 1, QRMS_RMSPROP_32BIT 2, "
                                              "QRMS_RMSPROP_4BIT 3)");
    require(device == QRMS_DEVICE_CPU || device == QRMS_DEVICE_CUDA,
            "invalid device " + std::to_string(device) + " (QRMS_DEVICE_CPU 0, QRMS_DEVICE_CUDA 1)");
    auto handle = std::make_unique<qrms_optimizer_s>();
    handle->opt = std::make_unique<qrms::Optimizer1State>(c, static_cast<qrms::Device>(device), device_index);
    *out = handle.release();
  });
}

void qrms_optimizer_destroy(qrms_optimizer_t opt) { delete opt; }

qrms_status_t qrms_optimizer_add_param(qrms_optimizer_t opt, void *param, const void *grad, qrms_dtype_t dtype,
                                       int64_t numel, int64_t *index_out) {
  return guarded("qrms_optimizer_add_param", [&] {
    const int64_t index = get(opt).add_param(param, grad, to_dtype(dtype), numel);
    if (index_out) *index_out = index;
  });
}

qrms_status_t qrms_optimizer_set_grad(qrms_optimizer_t opt, int64_t index, const void *grad) {
  return guarded("qrms_optimizer_set_grad", [&] { get(opt).set_grad(index, grad); });
}

qrms_status_t qrms_optimizer_set_param_config(qrms_optimizer_t opt, int64_t index, const qrms_config *cfg) {
  return guarded("qrms_optimizer_set_param_config", [&] {
    qrms::Optimizer1State &o = get(opt);
    require(cfg != nullptr, "cfg is NULL");
    // The override's optim_bits is honoured as given (e.g. keep an embedding
    // 32-bit inside an RMSprop8bit optimizer).
    const qrms::Config c = qrms::config_from_c(cfg);
    o.set_param_config(index, c);
  });
}

qrms_status_t qrms_optimizer_get_param_config(qrms_optimizer_t opt, int64_t index, qrms_config *cfg) {
  return guarded("qrms_optimizer_get_param_config", [&] {
    const qrms::Optimizer1State &o = get(opt);
    require(cfg != nullptr, "cfg is NULL");
    require(cfg->struct_size >= qrms::core::kConfigV1Size,
            "cfg->struct_size " + std::to_string(cfg->struct_size) + " is smaller than the first published qrms_config");
    const qrms_config c = qrms::config_to_c(o.param_config(index));
    const size_t size = cfg->struct_size < sizeof(c) ? cfg->struct_size : sizeof(c);
    std::memcpy(reinterpret_cast<char *>(cfg) + sizeof(size_t), reinterpret_cast<const char *>(&c) + sizeof(size_t),
                size - sizeof(size_t));
  });
}

qrms_status_t qrms_optimizer_set_lr(qrms_optimizer_t opt, float lr) {
  return guarded("qrms_optimizer_set_lr", [&] { get(opt).set_lr(lr); });
}

qrms_status_t qrms_optimizer_set_grad_unscale(qrms_optimizer_t opt, const float *unscale) {
  return guarded("qrms_optimizer_set_grad_unscale", [&] { get(opt).set_grad_unscale(unscale); });
}

qrms_status_t qrms_optimizer_found_inf(qrms_optimizer_t opt, const int32_t **flag_out) {
  return guarded("qrms_optimizer_found_inf", [&] {
    require(flag_out != nullptr, "flag_out is NULL");
    *flag_out = get(opt).found_inf();
  });
}

qrms_status_t qrms_optimizer_read_found_inf(qrms_optimizer_t opt, int32_t *found_out) {
  return guarded("qrms_optimizer_read_found_inf", [&] {
    require(found_out != nullptr, "found_out is NULL");
    *found_out = get(opt).read_found_inf() ? 1 : 0;
  });
}

qrms_status_t qrms_optimizer_step(qrms_optimizer_t opt, qrms_stream_t stream) {
  return guarded("qrms_optimizer_step", [&] { get(opt).step(stream); });
}

qrms_status_t qrms_optimizer_get_step(qrms_optimizer_t opt, int64_t index, int64_t *step_out) {
  return guarded("qrms_optimizer_get_step", [&] {
    require(step_out != nullptr, "step_out is NULL");
    *step_out = get(opt).get_step(index);
  });
}

qrms_status_t qrms_optimizer_read_state(qrms_optimizer_t opt, int64_t index, int32_t which, float *out) {
  return guarded("qrms_optimizer_read_state", [&] {
    const std::vector<float> v = get(opt).read_state(index, which);
    if (v.empty()) return;  // an empty shard: out may be NULL
    require(out != nullptr, "out is NULL");
    std::memcpy(out, v.data(), v.size() * sizeof(float));
  });
}

qrms_status_t qrms_optimizer_state_bytes(qrms_optimizer_t opt, int64_t *bytes_out) {
  return guarded("qrms_optimizer_state_bytes", [&] {
    require(bytes_out != nullptr, "bytes_out is NULL");
    *bytes_out = get(opt).state_bytes();
  });
}

qrms_status_t qrms_optimizer_save(qrms_optimizer_t opt, void *buffer, size_t capacity, size_t *size_out) {
  return guarded("qrms_optimizer_save", [&] {
    require(size_out != nullptr, "size_out is NULL");
    *size_out = get(opt).save(buffer, capacity);
  });
}

qrms_status_t qrms_optimizer_load(qrms_optimizer_t opt, const void *buffer, size_t size) {
  return guarded("qrms_optimizer_load", [&] { get(opt).load(buffer, size); });
}

qrms_status_t qrms_optimizer_param_count(qrms_optimizer_t opt, int64_t *count_out) {
  return guarded("qrms_optimizer_param_count", [&] {
    require(count_out != nullptr, "count_out is NULL");
    *count_out = get(opt).param_count();
  });
}

qrms_status_t qrms_optimizer_param_info(qrms_optimizer_t opt, int64_t index, int64_t *numel_out,
                                        qrms_dtype_t *dtype_out, int32_t *state_bits_out) {
  return guarded("qrms_optimizer_param_info", [&] {
    const qrms::Optimizer1State &o = get(opt);
    const int64_t n = o.numel(index);  // checks the index first
    if (numel_out) *numel_out = n;
    if (dtype_out) *dtype_out = static_cast<qrms_dtype_t>(o.dtype(index));
    if (state_bits_out) *state_bits_out = o.state_bits(index);
  });
}

qrms_status_t qrms_optimizer_add_param_shard(qrms_optimizer_t opt, void *param, const void *grad, qrms_dtype_t dtype,
                                             int64_t numel, int64_t global_numel, int64_t offset, int64_t *index_out) {
  return guarded("qrms_optimizer_add_param_shard", [&] {
    const int64_t index = get(opt).add_param_shard(param, grad, to_dtype(dtype), numel, global_numel, offset);
    if (index_out) *index_out = index;
  });
}

qrms_status_t qrms_optimizer_shard_info(qrms_optimizer_t opt, int64_t index, int64_t *global_numel_out,
                                        int64_t *offset_out) {
  return guarded("qrms_optimizer_shard_info", [&] {
    const qrms::Optimizer1State &o = get(opt);
    const int64_t global = o.global_numel(index);  // checks the index first
    if (global_numel_out) *global_numel_out = global;
    if (offset_out) *offset_out = o.shard_offset(index);
  });
}

qrms_status_t qrms_optimizer_set_comm(qrms_optimizer_t opt, const qrms_comm *comm) {
  return guarded("qrms_optimizer_set_comm", [&] { get(opt).set_comm(comm); });
}

qrms_status_t qrms_state_merge(const void *const *blobs, const size_t *sizes, int32_t count, void *out,
                               size_t capacity, size_t *size_out) {
  return guarded("qrms_state_merge", [&] {
    require(size_out != nullptr, "size_out is NULL");
    require(count >= 1, "count must be >= 1, got " + std::to_string(count));
    require(blobs != nullptr && sizes != nullptr, "blobs or sizes is NULL");
    *size_out = qrms::merge_states(blobs, sizes, static_cast<size_t>(count), out, capacity);
  });
}

qrms_status_t qrms_dynamic_map(int32_t is_signed, float out[256]) {
  return guarded("qrms_dynamic_map", [&] {
    require(out != nullptr, "out is NULL");
    const std::vector<float> m = qrms::dynamic_map(is_signed != 0);
    std::memcpy(out, m.data(), 256 * sizeof(float));
  });
}

qrms_status_t qrms_quantize_blockwise(qrms_device_t device, const float *qmap, const float *in, uint8_t *codes,
                                      float *absmax, int64_t n, int64_t blocksize, qrms_stream_t stream) {
  return guarded("qrms_quantize_blockwise", [&] {
    require(qmap && in && codes && absmax, "qmap, in, codes and absmax must not be NULL");
    require(n > 0, "n must be > 0, got " + std::to_string(n));
    require(blocksize > 0, "blocksize must be > 0, got " + std::to_string(blocksize));
    auto b = backend_for(device);
    b->check_pointer(qmap, "qmap");
    b->check_pointer(in, "in");
    b->check_pointer(codes, "codes");
    b->check_pointer(absmax, "absmax");
    b->quantize_blockwise(qmap, in, codes, absmax, n, blocksize, stream);
  });
}

qrms_status_t qrms_dequantize_blockwise(qrms_device_t device, const float *qmap, const uint8_t *codes,
                                        const float *absmax, float *out, int64_t n, int64_t blocksize,
                                        qrms_stream_t stream) {
  return guarded("qrms_dequantize_blockwise", [&] {
    require(qmap && codes && absmax && out, "qmap, codes, absmax and out must not be NULL");
    require(n > 0, "n must be > 0, got " + std::to_string(n));
    require(blocksize > 0, "blocksize must be > 0, got " + std::to_string(blocksize));
    auto b = backend_for(device);
    b->check_pointer(qmap, "qmap");
    b->check_pointer(codes, "codes");
    b->check_pointer(absmax, "absmax");
    b->check_pointer(out, "out");
    b->dequantize_blockwise(qmap, codes, absmax, out, n, blocksize, stream);
  });
}

void qrms_update_params_init(qrms_update_params *hp) {
  if (!hp) return;
  std::memset(hp, 0, sizeof(*hp));
  hp->struct_size = sizeof(*hp);
  const qrms::Config d;
  hp->lr = d.lr;
  hp->alpha = d.alpha;
  hp->eps = d.eps;
}

qrms_status_t qrms_update_32bit(qrms_device_t device, qrms_dtype_t dtype, void *param, const void *grad,
                                float *square_avg, float *momentum_buf, int64_t n, const qrms_update_params *hp,
                                const float *gnorm_scale, float *unorm, qrms_stream_t stream) {
  return guarded("qrms_update_32bit", [&] {
    run_update(device, dtype, qrms::core::StateKind::Float32,
               tensor_of(param, grad, n, square_avg, nullptr, momentum_buf, nullptr, gnorm_scale, unorm), hp, nullptr,
               stream);
  });
}

qrms_status_t qrms_update_8bit_blockwise(qrms_device_t device, qrms_dtype_t dtype, void *param, const void *grad,
                                         uint8_t *square_avg_codes, float *square_avg_absmax,
                                         uint8_t *momentum_codes, float *momentum_absmax, const float *qmap,
                                         int64_t n, const qrms_update_params *hp, const float *gnorm_scale,
                                         float *unorm, qrms_stream_t stream) {
  return guarded("qrms_update_8bit_blockwise", [&] {
    run_update(device, dtype, qrms::core::StateKind::Blockwise8,
               tensor_of(param, grad, n, square_avg_codes, square_avg_absmax, momentum_codes, momentum_absmax,
                         gnorm_scale, unorm),
               hp, qmap, stream);
  });
}

qrms_status_t qrms_update_8bit_tensor(qrms_device_t device, qrms_dtype_t dtype, void *param, const void *grad,
                                      uint8_t *square_avg_codes, float *square_avg_max, uint8_t *momentum_codes,
                                      float *momentum_max, const float *qmap, int64_t n,
                                      const qrms_update_params *hp, const float *gnorm_scale, float *unorm,
                                      qrms_stream_t stream) {
  return guarded("qrms_update_8bit_tensor", [&] {
    run_update(device, dtype, qrms::core::StateKind::Tensor8,
               tensor_of(param, grad, n, square_avg_codes, square_avg_max, momentum_codes, momentum_max, gnorm_scale,
                         unorm),
               hp, qmap, stream);
  });
}

qrms_status_t qrms_update_4bit_blockwise(qrms_device_t device, qrms_dtype_t dtype, void *param, const void *grad,
                                         uint8_t *square_avg_codes, float *square_avg_absmax,
                                         uint8_t *momentum_codes, float *momentum_absmax, int64_t n,
                                         const qrms_update_params *hp, const float *gnorm_scale, float *unorm,
                                         qrms_stream_t stream) {
  return guarded("qrms_update_4bit_blockwise", [&] {
    run_update(device, dtype, qrms::core::StateKind::Blockwise4,
               tensor_of(param, grad, n, square_avg_codes, square_avg_absmax, momentum_codes, momentum_absmax,
                         gnorm_scale, unorm),
               hp, nullptr, stream);
  });
}

qrms_status_t qrms_percentile_clipping(qrms_device_t device, qrms_dtype_t dtype, const void *grad, int64_t n,
                                       float *gnorm_vec, int64_t *step, int32_t percentile, float *gnorm_scale,
                                       qrms_stream_t stream) {
  return guarded("qrms_percentile_clipping", [&] {
    const qrms::Dtype dt = to_dtype(dtype);
    require(grad && gnorm_vec && step && gnorm_scale, "grad, gnorm_vec, step and gnorm_scale must not be NULL");
    require(n > 0, "n must be > 0, got " + std::to_string(n));
    require(percentile >= 0 && percentile < 100,
            "percentile must be in 0..99 for clipping, got " + std::to_string(percentile));
    auto b = backend_for(device);
    b->check_pointer(grad, "grad");
    b->check_pointer(gnorm_vec, "gnorm_vec");
    b->check_pointer(step, "step");
    b->check_pointer(gnorm_scale, "gnorm_scale");
    qrms::core::ClipJob j;
    j.grad = grad;
    j.n = n;
    j.gnorm_vec = gnorm_vec;
    j.step = step;
    j.percentile = percentile;
    j.gnorm_scale = gnorm_scale;
    j.advance = true;  // no update pass counts the step here
    b->clip(dt, &j, 1, qrms::core::StepControl{}, stream);
  });
}

}  // extern "C"
