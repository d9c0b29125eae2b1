// The CUDA backend (core::Backend on one device): memory, pointer checks and
// the host side of the multi-tensor launches. Kernels live in the other files
// of cuda/; this file only fills launch tables and enqueues them.
//
// Every entry point selects the backend's device for its duration and puts
// the caller's device back. update/clip/quantize only enqueue work on the
// caller's stream: no synchronisation, no allocation, no host read of device
// data, so a whole optimizer step can be captured in a CUDA graph.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "launch.hpp"

namespace qrms {
namespace core {

namespace {

[[noreturn]] void throw_cuda(cudaError_t err, const std::string &what) {
  (void)cudaGetLastError();  // clear a non-sticky error so later calls start clean
  throw DeviceError(what + ": " + cudaGetErrorString(err));
}

void check(cudaError_t err, const char *what) {
  if (err != cudaSuccess) throw_cuda(err, what);
}

// Makes `device` current for a scope and restores the caller's device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) {
      check(cudaSetDevice(device), "cudaSetDevice");
      restore_ = true;
    }
  }
  ~DeviceGuard() {
    if (restore_) (void)cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard &) = delete;
  DeviceGuard &operator=(const DeviceGuard &) = delete;

 private:
  int prev_ = 0;
  bool restore_ = false;
};

bool aligned(const void *p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

size_t dtype_size(Dtype d) {
  return d == Dtype::Float32 ? 4 : 2;
}

template <typename Fn>
void dispatch_dtype(Dtype dtype, const Fn &fn) {
  switch (dtype) {
    case Dtype::Float32:
      fn(float{});
      return;
    case Dtype::Float16:
      fn(math::half_t{});
      return;
    case Dtype::BFloat16:
      fn(math::bf16_t{});
      return;
  }
  throw Error(QRMS_ERROR_INTERNAL, "CUDA backend: unknown dtype " + std::to_string(int(dtype)));
}

template <StateKind K>
struct KindTag {
  static constexpr StateKind value = K;
};

template <typename Fn>
void dispatch_kind(StateKind kind, const Fn &fn) {
  switch (kind) {
    case StateKind::Float32:
      fn(KindTag<StateKind::Float32>{});
      return;
    case StateKind::Blockwise8:
      fn(KindTag<StateKind::Blockwise8>{});
      return;
    case StateKind::Tensor8:
      fn(KindTag<StateKind::Tensor8>{});
      return;
    case StateKind::Blockwise4:
      fn(KindTag<StateKind::Blockwise4>{});
      return;
  }
  throw Error(QRMS_ERROR_INTERNAL, "CUDA backend: unknown state kind " + std::to_string(int(kind)));
}

int64_t chunks_of(int64_t n) {
  return (n + gpu::kChunk - 1) / gpu::kChunk;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device)
      : device_(device), update_(new gpu::UpdateBatch()), sub_(new gpu::UpdateBatch()), clip_(new gpu::ClipBatch()) {
    DeviceGuard guard(device_);
    check(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device_), "cudaDeviceGetAttribute");
    // A device this build has no kernels for fails here, not at the first step.
    cudaFuncAttributes attr;
    const cudaError_t err = cudaFuncGetAttributes(&attr, gpu::update_kernel<float, StateKind::Float32>());
    if (err != cudaSuccess) {
      int major = 0, minor = 0;
      (void)cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_);
      (void)cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device_);
      throw_cuda(err, "CUDA device " + std::to_string(device_) + " (compute capability " + std::to_string(major) + "." +
                          std::to_string(minor) + ") cannot run the qrmsprop kernels of this build");
    }
    // Grid-stride kernels get one full wave: resident blocks per SM x SMs.
    for (Dtype d : {Dtype::Float32, Dtype::Float16, Dtype::BFloat16}) {
      dispatch_dtype(d, [&](auto dtag) {
        using T = decltype(dtag);
        for (StateKind k : {StateKind::Float32, StateKind::Blockwise8, StateKind::Tensor8, StateKind::Blockwise4}) {
          dispatch_kind(k, [&](auto ktag) {
            constexpr StateKind K = decltype(ktag)::value;
            measure_occupancy(gpu::update_kernel<T, K>());
            measure_occupancy(gpu::reduce_kernel<T, K>());
          });
        }
        measure_occupancy(gpu::clip_norm_kernel<T>());
        measure_occupancy(gpu::finite_kernel<T>());
      });
    }
    measure_occupancy(gpu::quantize_blockwise_kernel());
    measure_occupancy(gpu::dequantize_blockwise_kernel());
  }

  ~CudaBackend() override {
    for (int i = 0; i < prepared_count_; ++i) free(prepared_[i].quant);
  }

  Device device() const override { return Device::CUDA; }

  // Builds qmap's quantizer once into device memory and waits for it, so
  // that updates on any stream (also non-blocking ones) can copy it.
  void prepare_map(const float *qmap) override {
    DeviceGuard guard(device_);
    std::lock_guard<std::mutex> lock(mutex_);  // update() reads the cache under it
    if (!qmap || prepared(qmap) || prepared_count_ == kMaxPrepared) return;  // blocks build it themselves
    gpu::Quantizer *q = static_cast<gpu::Quantizer *>(alloc(gpu::quantizer_bytes()));
    try {
      launch(gpu::build_quantizer_kernel(), 1, gpu::kThreads, nullptr, "build quantizer", &qmap, &q);
      check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after building a quantizer");
    } catch (...) {
      free(q);
      throw;
    }
    prepared_[prepared_count_++] = Prepared{qmap, q};
  }

  void *alloc(size_t bytes) override {
    DeviceGuard guard(device_);
    void *p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      throw OutOfMemoryError("out of memory on CUDA device " + std::to_string(device_) + " allocating " +
                             core::counted(bytes, "byte") + " of state");
    }
    check(err, "cudaMalloc");
    // Zero it and wait, so that work on any stream (also non-blocking ones)
    // sees zeros.
    cudaError_t zerr = cudaMemset(p, 0, bytes);
    if (zerr == cudaSuccess) zerr = cudaDeviceSynchronize();
    if (zerr != cudaSuccess) {
      (void)cudaFree(p);
      throw_cuda(zerr, "cudaMemset of new state");
    }
    return p;
  }

  void free(void *p) noexcept override {
    if (!p) return;
    int prev = 0;
    if (cudaGetDevice(&prev) != cudaSuccess) prev = device_;
    if (prev != device_) (void)cudaSetDevice(device_);
    (void)cudaFree(p);
    if (prev != device_) (void)cudaSetDevice(prev);
    (void)cudaGetLastError();
  }

  // Synchronous and device-wide: pending steps on any stream finish first.
  void to_host(void *dst, const void *src, size_t bytes) override {
    DeviceGuard guard(device_);
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize before a device-to-host copy");
    check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy device to host");
  }

  void from_host(void *dst, const void *src, size_t bytes) override {
    DeviceGuard guard(device_);
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize before a host-to-device copy");
    check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy host to device");
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after a host-to-device copy");
  }

  void check_pointer(const void *p, const char *what) override {
    const std::string dev = "CUDA device " + std::to_string(device_);
    cudaPointerAttributes attr;
    const cudaError_t err = cudaPointerGetAttributes(&attr, p);
    if (err != cudaSuccess) throw_cuda(err, std::string(what) + " is not memory of " + dev);
    switch (attr.type) {
      case cudaMemoryTypeManaged:
        return;  // reachable from every device
      case cudaMemoryTypeDevice:
        if (attr.device == device_) return;
        throw DeviceError(std::string(what) + " is memory of CUDA device " + std::to_string(attr.device) +
                          ", but the optimizer runs on " + dev);
      case cudaMemoryTypeHost:
        throw DeviceError(std::string(what) + " is page-locked host memory, not memory of " + dev);
      case cudaMemoryTypeUnregistered:
      default:
        throw DeviceError(std::string(what) + " is host memory, not memory of " + dev);
    }
  }

  void zero(void *p, size_t bytes, void *stream) override {
    DeviceGuard guard(device_);
    check(cudaMemsetAsync(p, 0, bytes, static_cast<cudaStream_t>(stream)), "cudaMemsetAsync");
  }

  void update(StateKind kind, Dtype dtype, const TensorUpdate *tensors, size_t count, const float *qmap,
              const StepControl &ctl, void *stream) override {
    if (count == 0) return;
    if ((kind == StateKind::Blockwise8 || kind == StateKind::Tensor8) && !qmap)
      throw Error(QRMS_ERROR_INTERNAL, "CUDA update: 8-bit state without qmap");
    for (size_t i = 0; i < count; ++i) check_tensor(kind, tensors[i]);
    DeviceGuard guard(device_);
    std::lock_guard<std::mutex> lock(mutex_);
    dispatch_dtype(dtype, [&](auto dtag) {
      dispatch_kind(kind, [&](auto ktag) {
        using T = decltype(dtag);
        constexpr StateKind K = decltype(ktag)::value;
        gpu::UpdateBatch &b = *update_;
        size_t i = 0;
        while (i < count) {
          b.qmap = qmap;
          b.momentum_qmap = ctl.momentum_qmap ? ctl.momentum_qmap : qmap;
          b.quant[0] = prepared(b.qmap);
          b.quant[1] = prepared(b.momentum_qmap);
          b.grad_unscale = ctl.grad_unscale;
          b.skip = ctl.skip;
          b.stochastic_round = ctl.stochastic_round && dtype != Dtype::Float32 ? 1 : 0;
          b.seed = ctl.seed;
          b.count = 0;
          b.chunk_start[0] = 0;
          for (; i < count && b.count < gpu::kMaxTensors; ++i) add_tensor(b, tensors[i], kind, dtype);
          run_update<T, K>(b, ctl.pass, static_cast<cudaStream_t>(stream));
        }
      });
    });
  }

  void clip(Dtype dtype, const ClipJob *jobs, size_t count, const StepControl &ctl, void *stream) override {
    if (count == 0) return;
    for (size_t i = 0; i < count; ++i) {
      const ClipJob &j = jobs[i];
      if ((!j.grad && j.n > 0) || !j.gnorm_vec || !j.step || !j.gnorm_scale || j.n < 0 || j.percentile < 0 ||
          j.percentile >= math::kGnormHistory || (ctl.pass != Pass::All && !j.sumsq))
        throw Error(QRMS_ERROR_INTERNAL, "CUDA clip: incomplete clip job " + std::to_string(i));
    }
    DeviceGuard guard(device_);
    std::lock_guard<std::mutex> lock(mutex_);
    const cudaStream_t st = static_cast<cudaStream_t>(stream);
    dispatch_dtype(dtype, [&](auto dtag) {
      using T = decltype(dtag);
      gpu::ClipBatch &b = *clip_;
      size_t i = 0;
      while (i < count) {
        b.grad_unscale = ctl.grad_unscale;
        b.skip = ctl.skip;
        b.count = 0;
        b.chunk_start[0] = 0;
        for (; i < count && b.count < gpu::kMaxClipJobs; ++i) {
          const ClipJob &j = jobs[i];
          gpu::ClipMeta &m = b.j[b.count];
          m.grad = j.grad;
          m.gnorm_vec = j.gnorm_vec;
          m.step = j.step;
          m.gnorm_scale = j.gnorm_scale;
          m.acc = j.sumsq ? j.sumsq : j.gnorm_scale;
          m.n = j.n;
          m.percentile = j.percentile;
          m.vec = aligned(j.grad, 16) ? 1 : 0;
          m.advance = j.advance ? 1 : 0;
          b.chunk_start[b.count + 1] = b.chunk_start[b.count] + chunks_of(j.n);
          ++b.count;
        }
        b.total_chunks = b.chunk_start[b.count];
        if (ctl.pass != Pass::Write) {
          launch(gpu::clip_prep_kernel(), 1, gpu::kThreads, st, "percentile clipping (zero)", &b);
          if (b.total_chunks > 0)
            launch_walk(gpu::clip_norm_kernel<T>(), b.total_chunks, st, "percentile clipping (norms)", &b);
        }
        if (ctl.pass != Pass::Read)
          launch(gpu::clip_finalize_kernel(), static_cast<unsigned>(b.count), gpu::kClipThreads, st,
                 "percentile clipping (scale)", &b);
      }
    });
  }

  void check_finite(Dtype dtype, const GradRef *grads, size_t count, const float *grad_unscale, int32_t *found,
                    void *stream) override {
    if (count == 0) return;
    DeviceGuard guard(device_);
    std::lock_guard<std::mutex> lock(mutex_);
    const cudaStream_t st = static_cast<cudaStream_t>(stream);
    dispatch_dtype(dtype, [&](auto dtag) {
      using T = decltype(dtag);
      gpu::ClipBatch &b = *clip_;  // only grad, n and vec of each entry are read
      size_t i = 0;
      while (i < count) {
        std::memset(&b, 0, sizeof(b));
        b.grad_unscale = grad_unscale;
        for (; i < count && b.count < gpu::kMaxClipJobs; ++i) {
          gpu::ClipMeta &m = b.j[b.count];
          m.grad = grads[i].grad;
          m.n = grads[i].n;
          m.vec = aligned(grads[i].grad, 16) ? 1 : 0;
          b.chunk_start[b.count + 1] = b.chunk_start[b.count] + chunks_of(grads[i].n);
          ++b.count;
        }
        b.total_chunks = b.chunk_start[b.count];
        if (b.total_chunks > 0)
          launch_walk(gpu::finite_kernel<T>(), b.total_chunks, st, "non-finite gradient check", &b, &found);
      }
    });
  }

  void slots(SlotOp op, float *v, int64_t n, int32_t *flag, void *stream) override {
    DeviceGuard guard(device_);
    int o = static_cast<int>(op);
    launch(gpu::slots_kernel(), 1, gpu::kThreads, static_cast<cudaStream_t>(stream), "reduction slots", &o, &v, &n,
           &flag);
  }

  void quantize_blockwise(const float *qmap, const float *in, uint8_t *codes, float *absmax, int64_t n,
                          int64_t blocksize, void *stream) override {
    if (blocksize <= 0) throw ValueError("blocksize must be > 0, got " + std::to_string(blocksize));
    if (n <= 0) return;
    DeviceGuard guard(device_);
    const int64_t nblocks = (n + blocksize - 1) / blocksize;
    launch_walk(gpu::quantize_blockwise_kernel(), nblocks, static_cast<cudaStream_t>(stream), "quantize_blockwise",
                &qmap, &in, &codes, &absmax, &n, &blocksize);
  }

  void dequantize_blockwise(const float *qmap, const uint8_t *codes, const float *absmax, float *out, int64_t n,
                            int64_t blocksize, void *stream) override {
    if (blocksize <= 0) throw ValueError("blocksize must be > 0, got " + std::to_string(blocksize));
    if (n <= 0) return;
    DeviceGuard guard(device_);
    launch_walk(gpu::dequantize_blockwise_kernel(), (n + gpu::kThreads - 1) / gpu::kThreads,
                static_cast<cudaStream_t>(stream), "dequantize_blockwise", &qmap, &codes, &absmax, &out, &n,
                &blocksize);
  }

 private:
  void measure_occupancy(const void *kernel) {
    int blocks = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, gpu::kThreads, 0),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    occupancy_[occupancy_count_++] = Occupancy{kernel, std::max(1, blocks)};
  }

  // Grid of a grid-stride walk of `kernel` over `work` units: one wave that
  // fills the device, never more blocks than there is work.
  unsigned grid_for(const void *kernel, int64_t work) const {
    int per_sm = gpu::kBlocksPerSm;
    for (int i = 0; i < occupancy_count_; ++i)
      if (occupancy_[i].kernel == kernel) per_sm = occupancy_[i].blocks_per_sm;
    const int64_t cap = int64_t(sms_) * per_sm;
    return static_cast<unsigned>(std::max<int64_t>(1, std::min(work, cap)));
  }

  // A grid-stride kernel over `work` units (chunks, blocks, elements).
  template <typename... Args>
  void launch_walk(const void *kernel, int64_t work, cudaStream_t stream, const char *what, Args *...args) {
    launch(kernel, grid_for(kernel, work), gpu::kThreads, stream, what, args...);
  }

  template <typename... Args>
  void launch(const void *kernel, unsigned grid, unsigned block, cudaStream_t stream, const char *what, Args *...args) {
    void *argv[] = {static_cast<void *>(const_cast<std::remove_const_t<Args> *>(args))...};
    cudaError_t err = cudaLaunchKernel(kernel, dim3(grid), dim3(block), argv, 0, stream);
    if (err == cudaSuccess) err = cudaGetLastError();
    if (err != cudaSuccess) throw_cuda(err, std::string("CUDA launch of ") + what);
  }

  static void check_tensor(StateKind kind, const TensorUpdate &t) {
    const bool ok =
        t.n >= 0 && (t.n == 0 || (t.param && t.grad && t.state1)) && (t.hp.momentum > 0.0f) == (t.state2 != nullptr) &&
        (kind == StateKind::Float32 || (t.scale1 && (!t.state2 || t.scale2))) && (t.hp.max_unorm <= 0.0f || t.unorm);
    if (!ok) throw Error(QRMS_ERROR_INTERNAL, "CUDA update: inconsistent tensor description");
  }

  static void add_tensor(gpu::UpdateBatch &b, const TensorUpdate &t, StateKind kind, Dtype dtype) {
    gpu::TensorMeta &m = b.t[b.count];
    m.param = t.param;
    m.grad = t.grad;
    m.state1 = t.state1;
    m.state2 = t.state2;
    m.scale1 = t.scale1;
    m.scale2 = t.scale2;
    m.gnorm_scale = t.gnorm_scale;
    m.unorm = t.unorm;
    m.step = t.step;
    m.new_max = t.new_max;
    m.n = t.n;
    m.hp = t.hp;
    // 8 elements per thread: 16-byte accesses of params/grads/float state,
    // 8-byte accesses of codes (4 bytes of 4-bit codes); chunk offsets keep
    // the base alignment.
    const uintptr_t state_align = kind == StateKind::Float32 ? 16 : 8;
    m.vec = (dtype_size(dtype) * gpu::kVec % 16 == 0 && aligned(t.param, 16) && aligned(t.grad, 16) &&
             aligned(t.state1, state_align) && (!t.state2 || aligned(t.state2, state_align)))
                ? 1
                : 0;
    // An empty tensor (an empty shard) still gets one chunk: its block counts the step.
    b.chunk_start[b.count + 1] = b.chunk_start[b.count] + std::max<int64_t>(1, chunks_of(t.n));
    ++b.count;
  }

  // The launches of one table, in stream order:
  //   [prep]   zero unorm sums (and Tensor8's new_max1),  if max_unorm, Tensor8     (pass All, Read)
  //            step += 1 with stochastic rounding          or stochastic rounding
  //   [reduce] pre-pass: sums of squares, new_max1        if max_unorm or Tensor8   (pass All, Read)
  //   [take]   Tensor8: new_max1 := the reduced maxima                              (pass Write)
  //   update   the element math, params and state                                   (pass All, Write)
  //   [final]  Tensor8: max1 := new_max1                                            (pass All, Write)
  template <typename T, StateKind K>
  void run_update(gpu::UpdateBatch &b, Pass pass, cudaStream_t st) {
    b.total_chunks = b.chunk_start[b.count];
    constexpr bool tensor8 = K == StateKind::Tensor8;
    int mode = tensor8 ? gpu::kPrepZeroMax : gpu::kPrepZero;
    const bool any_unorm =
        std::any_of(b.t, b.t + b.count, [](const gpu::TensorMeta &m) { return m.hp.max_unorm > 0.0f; });
    if (pass != Pass::Read) {
      if (pass == Pass::Write) {
        if (tensor8) {
          int take = gpu::kPrepTakeMax;
          launch(gpu::update_prep_kernel(), 1, gpu::kThreads, st, "update (take maxima)", &b, &take);
        }
      } else {
        run_pre_pass<T, K>(b, any_unorm, mode, st);
      }
      if (b.total_chunks > 0) launch_walk(gpu::update_kernel<T, K>(), b.total_chunks, st, "update", &b);
      if (tensor8) launch(gpu::tensor8_finalize_kernel(), 1, gpu::kThreads, st, "update (max1 swap)", &b, &mode);
      return;
    }
    run_pre_pass<T, K>(b, any_unorm, mode, st);
  }

  template <typename T, StateKind K>
  void run_pre_pass(gpu::UpdateBatch &b, bool any_unorm, int &mode, cudaStream_t st) {
    constexpr bool tensor8 = K == StateKind::Tensor8;
    if (tensor8 || any_unorm || b.stochastic_round)
      launch(gpu::update_prep_kernel(), 1, gpu::kThreads, st, "update (zero)", &b, &mode);
    if (tensor8) {
      if (b.total_chunks > 0) launch_walk(gpu::reduce_kernel<T, K>(), b.total_chunks, st, "update (pre-pass)", &b);
    } else if (any_unorm) {
      // Only the max_unorm tensors need the pre-pass.
      gpu::UpdateBatch &s = *sub_;
      s.qmap = b.qmap;
      s.momentum_qmap = b.momentum_qmap;
      s.quant[0] = b.quant[0];
      s.quant[1] = b.quant[1];
      s.grad_unscale = b.grad_unscale;
      s.skip = b.skip;
      s.count = 0;
      s.chunk_start[0] = 0;
      for (int i = 0; i < b.count; ++i) {
        if (!(b.t[i].hp.max_unorm > 0.0f)) continue;
        s.t[s.count] = b.t[i];
        s.chunk_start[s.count + 1] = s.chunk_start[s.count] + chunks_of(b.t[i].n);
        ++s.count;
      }
      s.total_chunks = s.chunk_start[s.count];
      if (s.total_chunks > 0) launch_walk(gpu::reduce_kernel<T, K>(), s.total_chunks, st, "update (pre-pass)", &s);
    }
  }

  // The quantizer prepare_map built for qmap, or nullptr.
  const gpu::Quantizer *prepared(const float *qmap) const {
    for (int i = 0; i < prepared_count_; ++i)
      if (prepared_[i].qmap == qmap) return prepared_[i].quant;
    return nullptr;
  }

  int device_;
  int sms_ = 1;
  struct Prepared {
    const float *qmap;
    gpu::Quantizer *quant;
  };
  static constexpr int kMaxPrepared = 4;  // an optimizer prepares its two maps
  Prepared prepared_[kMaxPrepared] = {};
  int prepared_count_ = 0;
  struct Occupancy {
    const void *kernel;
    int blocks_per_sm;
  };
  Occupancy occupancy_[48] = {};
  int occupancy_count_ = 0;
  // Launch tables (~32 KB each) are filled here rather than on the stack;
  // cudaLaunchKernel copies them, so the mutex only covers the filling.
  std::mutex mutex_;
  std::unique_ptr<gpu::UpdateBatch> update_, sub_;
  std::unique_ptr<gpu::ClipBatch> clip_;
};

}  // namespace

int cuda_device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

int cuda_pointer_device(const void *p) noexcept {
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver, or not a pointer CUDA knows
    return -1;
  }
  return attr.type == cudaMemoryTypeDevice ? attr.device : -1;
}

// The driver must be at least as new as the runtime's major version (CUDA's
// minor version compatibility covers the rest); an older one would fail at
// the first call with a less helpful error.
void check_driver() {
  int driver = 0, runtime = 0;
  check(cudaDriverGetVersion(&driver), "cudaDriverGetVersion");
  check(cudaRuntimeGetVersion(&runtime), "cudaRuntimeGetVersion");
  auto version = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
  if (driver == 0) throw DeviceError("no CUDA driver is installed (qrmsprop was built with CUDA " + version(runtime) + ")");
  if (driver / 1000 < runtime / 1000)
    throw DeviceError("the CUDA driver supports CUDA " + version(driver) + ", older than the CUDA " + version(runtime) +
                      " runtime qrmsprop was built with: update the NVIDIA driver");
}

std::unique_ptr<Backend> make_cuda_backend(int device_index) {
  check_driver();
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) throw_cuda(err, "no usable CUDA device");
  if (n == 0) throw DeviceError("no CUDA device found");
  if (device_index == -1) {  // the calling thread's current device
    const cudaError_t e = cudaGetDevice(&device_index);
    if (e != cudaSuccess) throw_cuda(e, "cannot get the current CUDA device");
  }
  if (device_index < 0 || device_index >= n)
    throw DeviceError("CUDA device index " + std::to_string(device_index) + " is out of range: " + core::counted(n, "device") +
                      " present");
  return std::make_unique<CudaBackend>(device_index);
}

}  // namespace core
}  // namespace qrms
