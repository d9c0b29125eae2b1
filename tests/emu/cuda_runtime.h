// The emulated CUDA device: a stand-in for <cuda_runtime.h> with which the
// host C++ compiler builds the unmodified cuda/*.cu files and runs them on the
// CPU (cmake -DQRMS_CUDA=EMULATE). Test infrastructure only: never installed,
// never part of the library's own sources.
//
// The runtime API covers what cuda/cuda_backend.cu, the GPU tests and the
// benchmarks call. Device memory is host memory with a table of device
// ranges, so pointer attributes tell device memory from host memory and
// copies, memsets and frees outside a device allocation are errors. Work on a
// stream runs at once, in the calling thread, under one device lock; a stream
// being captured records it into a graph instead, and cudaGraphLaunch
// replays it. Synchronising a stream under capture, or using the legacy
// stream while a global-mode capture is open, is an error as on a GPU.
// Kernel parameters are limited to 32,764 bytes.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <utility>

#include "emu_device.hpp"

#define CUDART_VERSION 13000

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureUnmatched = 903,
  cudaErrorStreamCaptureImplicit = 906,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorUnknown = 999,
};
using cudaError = cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaMemoryType {
  cudaMemoryTypeUnregistered = 0,
  cudaMemoryTypeHost = 1,
  cudaMemoryTypeDevice = 2,
  cudaMemoryTypeManaged = 3
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2
};
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2
};
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMemoryClockRate = 36,
  cudaDevAttrGlobalMemoryBusWidth = 37,
  cudaDevAttrL2CacheSize = 38,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
};

constexpr unsigned cudaStreamDefault = 0x0;
constexpr unsigned cudaStreamNonBlocking = 0x1;
constexpr unsigned cudaMemAttachGlobal = 0x1;
constexpr unsigned cudaEventDefault = 0x0;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  int regsPerBlock;
  int warpSize;
  int maxThreadsPerBlock;
  int major;
  int minor;
  int multiProcessorCount;
  int memoryBusWidth;
  int l2CacheSize;
  int maxThreadsPerMultiProcessor;
};

struct cudaPointerAttributes {
  cudaMemoryType type;
  int device;
  void *devicePointer;
  void *hostPointer;
};

struct cudaFuncAttributes {
  size_t sharedSizeBytes;
  size_t constSizeBytes;
  size_t localSizeBytes;
  int maxThreadsPerBlock;
  int numRegs;
  int ptxVersion;
  int binaryVersion;
};

namespace emu {

// ---- kernels ---------------------------------------------------------------

constexpr size_t kParamLimit = 32764;

// What QRMS_KERNEL_HANDLE(f) points at: f's name, its parameter bytes and a
// way to copy the arguments of a launch into a runnable closure.
struct KernelInfo {
  std::string name;
  size_t param_bytes;
  std::function<void()> (*bind)(void **args);
};

inline std::set<const void *> &kernel_registry() {
  static std::set<const void *> r;
  return r;
}
inline std::mutex &registry_mutex() {
  static std::mutex m;
  return m;
}

template <auto F>
std::string kernel_name() {
  const std::string pretty = __PRETTY_FUNCTION__;
  const size_t at = pretty.find("F = ");
  if (at == std::string::npos) return pretty;
  std::string n = pretty.substr(at + 4);
  const size_t end = n.find_first_of(";]");
  if (end != std::string::npos) n.resize(end);
  if (!n.empty() && n[0] == '&') n.erase(0, 1);
  return n;
}

template <auto F>
struct KernelOf;

template <typename... A, void (*F)(A...)>
struct KernelOf<F> {
  static size_t param_bytes() {
    size_t off = 0;
    ((off = (off + alignof(A) - 1) / alignof(A) * alignof(A) + sizeof(A)), ...);
    return off;
  }
  static std::function<void()> bind(void **args) {
    return bind_impl(args, std::index_sequence_for<A...>{});
  }
  template <size_t... I>
  static std::function<void()> bind_impl(void **args, std::index_sequence<I...>) {
    auto copy = std::make_shared<std::tuple<std::decay_t<A>...>>(*static_cast<std::decay_t<A> *>(args[I])...);
    (void)args;
    return [copy] { std::apply(F, *copy); };
  }
};

template <auto F>
const void *kernel_handle() {
  static const KernelInfo info{kernel_name<F>(), KernelOf<F>::param_bytes(), &KernelOf<F>::bind};
  std::lock_guard<std::mutex> lock(registry_mutex());
  kernel_registry().insert(&info);
  return &info;
}

inline const KernelInfo *find_kernel(const void *handle) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  return kernel_registry().count(handle) ? static_cast<const KernelInfo *>(handle) : nullptr;
}

// ---- the device ---------------------------------------------------------------

struct Alloc {
  size_t bytes;
  cudaMemoryType type;
};

struct Graph {
  std::vector<std::function<void()>> ops;
};

struct Stream {
  unsigned flags = 0;
  bool capturing = false;
  bool invalidated = false;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  Graph *graph = nullptr;
};

struct Event {
  std::chrono::steady_clock::time_point t{};
  bool recorded = false;
};

struct Device {
  std::mutex mu;  // one launch or copy at a time
  std::map<uintptr_t, Alloc> allocs;
  size_t used = 0;
  size_t total = size_t(env_int("QRMS_EMU_MEMORY_MIB", 2048)) << 20;
  int global_captures = 0;
  std::set<Stream *> streams;
  std::set<Graph *> graphs;
  std::set<Event *> events;
  Stream legacy;
};

inline Device &device() {
  static Device d;
  return d;
}

inline thread_local cudaError_t last_error = cudaSuccess;

inline cudaError_t fail(cudaError_t e) {
  last_error = e;
  return e;
}

// The allocation holding [p, p + bytes), or nullptr.
inline const Alloc *find_alloc(const void *p, size_t bytes = 1) {
  Device &d = device();
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = d.allocs.upper_bound(a);
  if (it == d.allocs.begin()) return nullptr;
  --it;
  if (a < it->first || a - it->first + (bytes ? bytes : 1) > it->second.bytes) return nullptr;
  return &it->second;
}

inline bool on_device(const void *p, size_t bytes) {
  const Alloc *a = find_alloc(p, bytes);
  return a && (a->type == cudaMemoryTypeDevice || a->type == cudaMemoryTypeManaged);
}

inline Stream *stream_of(void *s) {
  if (s == nullptr || s == reinterpret_cast<void *>(1) || s == reinterpret_cast<void *>(2)) return &device().legacy;
  return static_cast<Stream *>(s);
}

// Runs op on stream s, or records it when s is being captured.
inline cudaError_t enqueue(void *s, std::function<void()> op) {
  Device &d = device();
  Stream *st = stream_of(s);
  if (st != &d.legacy && !d.streams.count(st)) return fail(cudaErrorInvalidResourceHandle);
  if (st == &d.legacy && d.global_captures > 0) {
    for (Stream *o : d.streams)
      if (o->capturing) o->invalidated = true;
    return fail(cudaErrorStreamCaptureImplicit);
  }
  if (st->capturing) {
    if (!st->invalidated) st->graph->ops.push_back(std::move(op));
    return cudaSuccess;
  }
  op();
  return cudaSuccess;
}

// A synchronous call during a global-mode capture.
inline cudaError_t capture_forbids() {
  Device &d = device();
  if (d.global_captures == 0) return cudaSuccess;
  for (Stream *o : d.streams)
    if (o->capturing) o->invalidated = true;
  return fail(cudaErrorStreamCaptureUnsupported);
}

inline cudaError_t check_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return cudaSuccess;
  if (!dst || !src) return fail(cudaErrorInvalidValue);
  const bool dd = on_device(dst, bytes), sd = on_device(src, bytes);
  // A pointer into a device allocation whose range does not fit is an overrun.
  if ((!dd && find_alloc(dst)) || (!sd && find_alloc(src))) return fail(cudaErrorInvalidValue);
  switch (kind) {
    case cudaMemcpyHostToDevice: return dd && !sd ? cudaSuccess : fail(cudaErrorInvalidValue);
    case cudaMemcpyDeviceToHost: return sd && !dd ? cudaSuccess : fail(cudaErrorInvalidValue);
    case cudaMemcpyDeviceToDevice: return sd && dd ? cudaSuccess : fail(cudaErrorInvalidValue);
    case cudaMemcpyHostToHost: return !sd && !dd ? cudaSuccess : fail(cudaErrorInvalidValue);
    case cudaMemcpyDefault: return cudaSuccess;
  }
  return fail(cudaErrorInvalidMemcpyDirection);
}

}  // namespace emu

using cudaStream_t = emu::Stream *;
using cudaEvent_t = emu::Event *;
using cudaGraph_t = emu::Graph *;
using cudaGraphExec_t = emu::Graph *;
#define cudaStreamLegacy (reinterpret_cast<cudaStream_t>(1))
#define cudaStreamPerThread (reinterpret_cast<cudaStream_t>(2))

// ---- errors -------------------------------------------------------------------

inline const char *cudaGetErrorName(cudaError_t e) {
  switch (e) {
#define QRMS_EMU_ERR(x) \
  case x:               \
    return #x;
    QRMS_EMU_ERR(cudaSuccess)
    QRMS_EMU_ERR(cudaErrorInvalidValue)
    QRMS_EMU_ERR(cudaErrorMemoryAllocation)
    QRMS_EMU_ERR(cudaErrorInitializationError)
    QRMS_EMU_ERR(cudaErrorInvalidConfiguration)
    QRMS_EMU_ERR(cudaErrorInvalidDevicePointer)
    QRMS_EMU_ERR(cudaErrorInvalidMemcpyDirection)
    QRMS_EMU_ERR(cudaErrorInsufficientDriver)
    QRMS_EMU_ERR(cudaErrorNoDevice)
    QRMS_EMU_ERR(cudaErrorInvalidDevice)
    QRMS_EMU_ERR(cudaErrorInvalidResourceHandle)
    QRMS_EMU_ERR(cudaErrorNotReady)
    QRMS_EMU_ERR(cudaErrorStreamCaptureUnsupported)
    QRMS_EMU_ERR(cudaErrorStreamCaptureInvalidated)
    QRMS_EMU_ERR(cudaErrorStreamCaptureUnmatched)
    QRMS_EMU_ERR(cudaErrorStreamCaptureImplicit)
    QRMS_EMU_ERR(cudaErrorInvalidDeviceFunction)
    QRMS_EMU_ERR(cudaErrorUnknown)
#undef QRMS_EMU_ERR
  }
  return "cudaErrorUnknown";
}

inline const char *cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched: return "capture was not initiated in this stream";
    case cudaErrorStreamCaptureImplicit: return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorUnknown: return "unknown error";
  }
  return "unrecognized error code";
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return emu::last_error; }

// ---- device -------------------------------------------------------------------

// QRMS_EMU_DRIVER_VERSION: the driver version the emulated device reports
// (default: the runtime's), to exercise "driver older than the runtime".
inline cudaError_t cudaDriverGetVersion(int *v) {
  if (!v) return emu::fail(cudaErrorInvalidValue);
  *v = emu::env_int("QRMS_EMU_DRIVER_VERSION", CUDART_VERSION);
  return cudaSuccess;
}
inline cudaError_t cudaRuntimeGetVersion(int *v) {
  if (!v) return emu::fail(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceCount(int *n) {
  if (!n) return emu::fail(cudaErrorInvalidValue);
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int *d) {
  if (!d) return emu::fail(cudaErrorInvalidValue);
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : emu::fail(cudaErrorInvalidDevice); }

inline cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr attr, int dev) {
  if (!v) return emu::fail(cudaErrorInvalidValue);
  if (dev != 0) return emu::fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = 48 << 10; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrMultiProcessorCount: *v = emu::settings().sms; break;
    case cudaDevAttrMemoryClockRate: *v = 1000000; break;
    case cudaDevAttrGlobalMemoryBusWidth: *v = 64; break;
    case cudaDevAttrL2CacheSize: *v = 1 << 20; break;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    default: return emu::fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int dev) {
  if (!p) return emu::fail(cudaErrorInvalidValue);
  if (dev != 0) return emu::fail(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "qrmsprop emulated device (%d SMs, %s)", emu::settings().sms,
                emu::settings().os_threads ? "OS threads" : "fibers");
  p->totalGlobalMem = emu::device().total;
  p->sharedMemPerBlock = 48 << 10;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = emu::settings().sms;
  p->memoryBusWidth = 64;
  p->l2CacheSize = 1 << 20;
  p->maxThreadsPerMultiProcessor = 2048;
  return cudaSuccess;
}

inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, const void *f) {
  if (!a) return emu::fail(cudaErrorInvalidValue);
  if (!emu::find_kernel(f)) return emu::fail(cudaErrorInvalidDeviceFunction);
  std::memset(a, 0, sizeof *a);
  a->maxThreadsPerBlock = 1024;
  a->ptxVersion = a->binaryVersion = 90;
  return cudaSuccess;
}

inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, const void *f, int block, size_t /*smem*/) {
  if (!n || block <= 0 || block > 1024) return emu::fail(cudaErrorInvalidValue);
  if (!emu::find_kernel(f)) return emu::fail(cudaErrorInvalidDeviceFunction);
  *n = emu::settings().blocks_per_sm;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceSynchronize() {
  std::lock_guard<std::mutex> lock(emu::device().mu);
  return emu::capture_forbids();
}

// ---- memory --------------------------------------------------------------------

namespace emu {
inline cudaError_t allocate(void **p, size_t bytes, cudaMemoryType type) {
  if (!p) return fail(cudaErrorInvalidValue);
  Device &d = device();
  std::lock_guard<std::mutex> lock(d.mu);
  if (const cudaError_t e = capture_forbids()) return e;
  *p = nullptr;
  if (type != cudaMemoryTypeHost && (bytes > d.total || d.used + bytes > d.total))
    return fail(cudaErrorMemoryAllocation);
  void *q = nullptr;
  if (posix_memalign(&q, 256, bytes ? bytes : 1) != 0) return fail(cudaErrorMemoryAllocation);
  // Fresh device memory holds NaN bytes (QRMS_EMU_POISON: another byte), not
  // the zeros a new host page happens to have: a kernel reading memory
  // nobody wrote sees garbage here as it would on a GPU.
  if (type != cudaMemoryTypeHost) std::memset(q, env_int("QRMS_EMU_POISON", 0xff), bytes);
  d.allocs[reinterpret_cast<uintptr_t>(q)] = Alloc{bytes ? bytes : 1, type};
  if (type != cudaMemoryTypeHost) d.used += bytes;
  *p = q;
  return cudaSuccess;
}
inline cudaError_t release(void *p, bool host) {
  if (!p) return cudaSuccess;
  Device &d = device();
  std::lock_guard<std::mutex> lock(d.mu);
  auto it = d.allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == d.allocs.end() || (it->second.type == cudaMemoryTypeHost) != host) return fail(cudaErrorInvalidValue);
  if (!host) d.used -= it->second.bytes;
  d.allocs.erase(it);
  std::free(p);
  return cudaSuccess;
}
}  // namespace emu

template <typename T>
cudaError_t cudaMalloc(T **p, size_t bytes) {
  return emu::allocate(reinterpret_cast<void **>(p), bytes, cudaMemoryTypeDevice);
}
template <typename T>
cudaError_t cudaMallocManaged(T **p, size_t bytes, unsigned /*flags*/ = cudaMemAttachGlobal) {
  return emu::allocate(reinterpret_cast<void **>(p), bytes, cudaMemoryTypeManaged);
}
template <typename T>
cudaError_t cudaMallocHost(T **p, size_t bytes) {
  return emu::allocate(reinterpret_cast<void **>(p), bytes, cudaMemoryTypeHost);
}
inline cudaError_t cudaFree(void *p) { return emu::release(p, false); }
inline cudaError_t cudaFreeHost(void *p) { return emu::release(p, true); }

inline cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
  if (!free_b || !total_b) return emu::fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(emu::device().mu);
  *total_b = emu::device().total;
  *free_b = emu::device().total - emu::device().used;
  return cudaSuccess;
}

inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *a, const void *p) {
  if (!a) return emu::fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(emu::device().mu);
  const emu::Alloc *al = emu::find_alloc(p);
  a->type = al ? al->type : cudaMemoryTypeUnregistered;
  a->device = al ? 0 : -2;
  a->devicePointer = al && al->type != cudaMemoryTypeHost ? const_cast<void *>(p) : nullptr;
  a->hostPointer = !al || al->type != cudaMemoryTypeDevice ? const_cast<void *>(p) : nullptr;
  return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s = nullptr) {
  std::lock_guard<std::mutex> lock(emu::device().mu);
  if (bytes && !emu::on_device(p, bytes)) return emu::fail(cudaErrorInvalidValue);
  return emu::enqueue(s, [p, v, bytes] { std::memset(p, v, bytes); });
}
inline cudaError_t cudaMemset(void *p, int v, size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(emu::device().mu);
    if (const cudaError_t e = emu::capture_forbids()) return e;
  }
  return cudaMemsetAsync(p, v, bytes, nullptr);
}

inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t s = nullptr) {
  std::lock_guard<std::mutex> lock(emu::device().mu);
  if (const cudaError_t e = emu::check_copy(dst, src, bytes, kind)) return e;
  return emu::enqueue(s, [dst, src, bytes] {
    if (bytes) std::memmove(dst, src, bytes);
  });
}
inline cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
  {
    std::lock_guard<std::mutex> lock(emu::device().mu);
    if (const cudaError_t e = emu::capture_forbids()) return e;
  }
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}

// ---- streams, events, graphs --------------------------------------------------------

inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
  if (!s) return emu::fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(emu::device().mu);
  *s = new emu::Stream();
  (*s)->flags = flags;
  emu::device().streams.insert(*s);
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  std::lock_guard<std::mutex> lock(emu::device().mu);
  if (!emu::device().streams.erase(s)) return emu::fail(cudaErrorInvalidResourceHandle);
  if (s->capturing) {
    --emu::device().global_captures;
    delete s->graph;
  }
  delete s;
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  std::lock_guard<std::mutex> lock(emu::device().mu);
  emu::Stream *st = emu::stream_of(s);
  if (st != &emu::device().legacy && !emu::device().streams.count(st))
    return emu::fail(cudaErrorInvalidResourceHandle);
  if (st->capturing) {
    st->invalidated = true;
    return emu::fail(cudaErrorStreamCaptureUnsupported);
  }
  if (st == &emu::device().legacy) return emu::capture_forbids();
  return cudaSuccess;
}
inline cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
  std::lock_guard<std::mutex> lock(emu::device().mu);
  emu::Stream *st = emu::stream_of(s);
  if (st == &emu::device().legacy) return emu::fail(cudaErrorStreamCaptureUnsupported);
  if (!emu::device().streams.count(st)) return emu::fail(cudaErrorInvalidResourceHandle);
  if (st->capturing) return emu::fail(cudaErrorInvalidValue);
  st->capturing = true;
  st->invalidated = false;
  st->mode = mode;
  st->graph = new emu::Graph();
  if (mode == cudaStreamCaptureModeGlobal) ++emu::device().global_captures;
  return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
  if (!g) return emu::fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(emu::device().mu);
  emu::Stream *st = emu::stream_of(s);
  if (!emu::device().streams.count(st) || !st->capturing) return emu::fail(cudaErrorStreamCaptureUnmatched);
  st->capturing = false;
  if (st->mode == cudaStreamCaptureModeGlobal) --emu::device().global_captures;
  *g = nullptr;
  if (st->invalidated) {
    delete st->graph;
    st->graph = nullptr;
    return emu::fail(cudaErrorStreamCaptureInvalidated);
  }
  *g = st->graph;
  st->graph = nullptr;
  emu::device().graphs.insert(*g);
  return cudaSuccess;
}
inline cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus *status) {
  if (!status) return emu::fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(emu::device().mu);
  const emu::Stream *st = emu::stream_of(s);
  *status = !st->capturing ? cudaStreamCaptureStatusNone
                           : st->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t g, unsigned long long /*flags*/ = 0) {
  if (!exec) return emu::fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(emu::device().mu);
  if (!emu::device().graphs.count(g)) return emu::fail(cudaErrorInvalidResourceHandle);
  *exec = new emu::Graph(*g);
  emu::device().graphs.insert(*exec);
  return cudaSuccess;
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  std::lock_guard<std::mutex> lock(emu::device().mu);
  if (!emu::device().graphs.count(exec)) return emu::fail(cudaErrorInvalidResourceHandle);
  return emu::enqueue(s, [exec] {
    for (const auto &op : exec->ops) op();
  });
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  std::lock_guard<std::mutex> lock(emu::device().mu);
  if (!emu::device().graphs.erase(g)) return emu::fail(cudaErrorInvalidResourceHandle);
  delete g;
  return cudaSuccess;
}
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t g) { return cudaGraphDestroy(g); }

inline cudaError_t cudaEventCreate(cudaEvent_t *e) {
  if (!e) return emu::fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(emu::device().mu);
  *e = new emu::Event();
  emu::device().events.insert(*e);
  return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned /*flags*/) { return cudaEventCreate(e); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  std::lock_guard<std::mutex> lock(emu::device().mu);
  if (!emu::device().events.erase(e)) return emu::fail(cudaErrorInvalidResourceHandle);
  delete e;
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr) {
  std::lock_guard<std::mutex> lock(emu::device().mu);
  if (!emu::device().events.count(e)) return emu::fail(cudaErrorInvalidResourceHandle);
  return emu::enqueue(s, [e] {
    e->t = std::chrono::steady_clock::now();
    e->recorded = true;
  });
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  std::lock_guard<std::mutex> lock(emu::device().mu);
  return emu::device().events.count(e) ? cudaSuccess : emu::fail(cudaErrorInvalidResourceHandle);
}
inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
  if (!ms) return emu::fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(emu::device().mu);
  if (!emu::device().events.count(a) || !emu::device().events.count(b)) return emu::fail(cudaErrorInvalidResourceHandle);
  if (!a->recorded || !b->recorded) return emu::fail(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}

// ---- launches -----------------------------------------------------------------

inline cudaError_t cudaLaunchKernel(const void *func, dim3 grid, dim3 block, void **args, size_t shared_bytes,
                                    cudaStream_t s) {
  const emu::KernelInfo *k = emu::find_kernel(func);
  if (!k) return emu::fail(cudaErrorInvalidDeviceFunction);
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535 || shared_bytes > (48u << 10))
    return emu::fail(cudaErrorInvalidConfiguration);
  if (k->param_bytes > emu::kParamLimit) return emu::fail(cudaErrorInvalidValue);
  std::function<void()> body = k->bind(args);  // arguments are copied at launch, as on a GPU
  const std::string *name = &k->name;
  std::lock_guard<std::mutex> lock(emu::device().mu);
  return emu::enqueue(s, [name, grid, block, body] { emu::run_grid(name->c_str(), grid, block, body); });
}
