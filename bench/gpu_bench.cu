// GPU benchmark of qrmsprop through its C ABI, against a device-to-device
// copy of the same byte count measured in the same run.
//
// Cases: every variant (32-bit, 8-bit block-wise, 8-bit per-tensor; 4-bit
// block-wise when named with --variant) x dtype
// (f32, bf16, f16) x momentum (off, on) for
//  * one tensor of 1e5, 1e6, 1e7, 1e8 and 1e9 elements (1e9 only when the
//    device has the memory; otherwise a JSON line says it was skipped);
//  * "model" cases: the 148 parameter tensors of GPT-2 124M and the ~292 of a
//    1.3B GPT-style model (d=2048, 24 layers, vocab 50257, context 2048), all
//    registered in ONE optimizer and stepped by one qrms_optimizer_step.
// Per case: median time of one step (CUDA events around many steps after a
// warm-up), the minimum bytes the step must move (bench_common.hpp), bytes/s,
// and that as a fraction of the bytes/s of cudaMemcpyAsync device-to-device
// copying bytes_per_step/2 (so bytes_per_step are read + written), timed
// interleaved with the steps. One JSON line per case on stdout.
//
//   qrms_bench_gpu [--quick] [--sizes 1e5,1e6,...] [--models gpt2,1.3b|none]
//                  [--reps R] [--target-ms T] [--device D]
//
// --quick: sizes up to 1e8, GPT-2 only, fewer and shorter samples (well under
// 90 s on an H200). Exit status: 0 all cases ran, 1 a failure (a JSON line
// with "error" says what), 77 no CUDA device (or a build without CUDA).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "qrmsprop/qrmsprop.h"

using namespace qrms_bench;

namespace {

constexpr int kExitNoDevice = 77;

[[noreturn]] void fail(const std::string &what, int code = 1) {
  JsonLine().str("backend", "cuda").str("error", what).print();
  std::exit(code);
}

void cuda_check(cudaError_t e, const char *call, int line) {
  if (e != cudaSuccess)
    fail(std::string(call) + " (gpu_bench.cu:" + std::to_string(line) + "): " + cudaGetErrorName(e) + ": " +
         cudaGetErrorString(e));
}
#define CUDA_CHECK(call) cuda_check((call), #call, __LINE__)

// A qrms failure or an allocation failure inside a case: reported on the
// case's line (out of memory as "skipped"), and the run goes on unless the
// CUDA context itself is broken (checked after the case).
struct CaseFailure {
  std::string message;
  bool out_of_memory;
};
void qrms_check(qrms_status_t st, const char *call) {
  if (st != QRMS_SUCCESS)
    throw CaseFailure{std::string(call) + ": " + qrms_status_string(st) + ": " + qrms_last_error(),
                      st == QRMS_ERROR_OUT_OF_MEMORY};
}
#define QRMS_CHECK(call) qrms_check((call), #call)

// ---- RAII -----------------------------------------------------------------

struct DeviceMem {
  void *p = nullptr;
  DeviceMem() = default;
  explicit DeviceMem(size_t bytes) {
    const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
    if (e == cudaErrorMemoryAllocation) {
      p = nullptr;
      (void)cudaGetLastError();  // not sticky: clear it
      throw CaseFailure{"cudaMalloc of " + std::to_string(bytes) + " bytes: out of memory", true};
    }
    CUDA_CHECK(e);
  }
  DeviceMem(const DeviceMem &) = delete;
  DeviceMem &operator=(const DeviceMem &) = delete;
  ~DeviceMem() {
    if (p) cudaFree(p);
  }
  template <typename T>
  T *as() const {
    return static_cast<T *>(p);
  }
};

struct Event {
  cudaEvent_t e = nullptr;
  Event() { CUDA_CHECK(cudaEventCreate(&e)); }
  Event(const Event &) = delete;
  Event &operator=(const Event &) = delete;
  ~Event() { cudaEventDestroy(e); }
};

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  Stream(const Stream &) = delete;
  Stream &operator=(const Stream &) = delete;
  ~Stream() { cudaStreamDestroy(s); }
};

struct Optimizer {
  qrms_optimizer_t opt = nullptr;
  Optimizer() = default;
  Optimizer(const Optimizer &) = delete;
  Optimizer &operator=(const Optimizer &) = delete;
  ~Optimizer() { qrms_optimizer_destroy(opt); }
};

// ---- inputs ------------------------------------------------------------------

__device__ __forceinline__ float hash_uniform(uint64_t x) {  // splitmix64 -> [-1, 1)
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return static_cast<float>(x >> 40) * (1.0f / 8388608.0f) - 1.0f;
}

__device__ __forceinline__ void store_as(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_as(__half *p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store_as(__nv_bfloat16 *p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

template <typename T>
__global__ void fill_kernel(T *p, int64_t n, uint64_t seed, float scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    store_as(p, i, scale * hash_uniform(seed ^ static_cast<uint64_t>(i) * 0x100000001b3ull));
}

void fill(qrms_dtype_t dtype, void *p, int64_t n, uint64_t seed, float scale, cudaStream_t s) {
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(n, threads), 65536));
  if (dtype == QRMS_FLOAT32) fill_kernel<<<blocks, threads, 0, s>>>(static_cast<float *>(p), n, seed, scale);
  else if (dtype == QRMS_FLOAT16) fill_kernel<<<blocks, threads, 0, s>>>(static_cast<__half *>(p), n, seed, scale);
  else fill_kernel<<<blocks, threads, 0, s>>>(static_cast<__nv_bfloat16 *>(p), n, seed, scale);
  CUDA_CHECK(cudaGetLastError());
}

// ---- model shapes --------------------------------------------------------------

struct Tensor {
  std::string name;
  int64_t n;
};

// GPT-2 style transformer: token and position embeddings, `layers` blocks of
// (ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj), ln_f; the LM
// head is tied to wte (as in GPT-2), so it adds no tensor.
std::vector<Tensor> gpt_shapes(int64_t vocab, int64_t ctx, int64_t d, int layers) {
  std::vector<Tensor> t;
  t.push_back({"wte", vocab * d});
  t.push_back({"wpe", ctx * d});
  for (int l = 0; l < layers; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    t.push_back({h + "ln_1.weight", d});
    t.push_back({h + "ln_1.bias", d});
    t.push_back({h + "attn.c_attn.weight", d * 3 * d});
    t.push_back({h + "attn.c_attn.bias", 3 * d});
    t.push_back({h + "attn.c_proj.weight", d * d});
    t.push_back({h + "attn.c_proj.bias", d});
    t.push_back({h + "ln_2.weight", d});
    t.push_back({h + "ln_2.bias", d});
    t.push_back({h + "mlp.c_fc.weight", d * 4 * d});
    t.push_back({h + "mlp.c_fc.bias", 4 * d});
    t.push_back({h + "mlp.c_proj.weight", 4 * d * d});
    t.push_back({h + "mlp.c_proj.bias", d});
  }
  t.push_back({"ln_f.weight", d});
  t.push_back({"ln_f.bias", d});
  return t;
}

// 124,439,808 parameters in 148 tensors.
std::vector<Tensor> gpt2_124m() { return gpt_shapes(50257, 1024, 768, 12); }
// GPT-3 XL shape: about 1.32e9 parameters in 292 tensors.
std::vector<Tensor> gpt_1_3b() { return gpt_shapes(50257, 2048, 2048, 24); }

// ---- options ---------------------------------------------------------------------

struct Options {
  std::vector<int64_t> sizes{100000, 1000000, 10000000, 100000000, 1000000000};
  std::vector<std::string> models{"gpt2_124m", "gpt_1_3b"};
  int reps = 5;
  int warmup = 5;
  double target_ms = 100.0;  // each timed sample lasts about this long
  int device = 0;
  std::vector<Variant> variants{Variant::Bits32, Variant::Blockwise8, Variant::Tensor8};
  std::vector<qrms_dtype_t> dtypes{QRMS_FLOAT32, QRMS_BFLOAT16, QRMS_FLOAT16};
  std::vector<bool> momenta{false, true};
};

void usage() {
  std::fprintf(stderr,
               "usage: qrms_bench_gpu [--quick] [--sizes N[,N...]] [--models gpt2_124m,gpt_1_3b|none]\n"
               "                      [--variant 32bit|8bit_blockwise|8bit_tensor|4bit_blockwise] [--dtype f32|bf16|f16]\n"
               "                      [--momentum 0|1] [--reps R] [--warmup W] [--target-ms T] [--device D]\n");
}

Options parse(int argc, char **argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        usage();
        fail("missing value for " + a);
      }
      return argv[++i];
    };
    if (a == "--quick") {
      o.sizes = {100000, 1000000, 10000000, 100000000};
      o.models = {"gpt2_124m"};
      o.reps = 3;
      o.warmup = 3;
      o.target_ms = 20.0;
    } else if (a == "--sizes") {
      o.sizes.clear();
      for (const std::string &s : split(value())) {
        if (s == "none") continue;
        o.sizes.push_back(static_cast<int64_t>(std::llround(std::atof(s.c_str()))));  // accepts 1e8
      }
    } else if (a == "--models") {
      o.models.clear();
      for (const std::string &s : split(value())) {
        if (s == "none") continue;
        if (s != "gpt2_124m" && s != "gpt_1_3b") fail("unknown model " + s + " (gpt2_124m, gpt_1_3b, none)");
        o.models.push_back(s);
      }
    } else if (a == "--variant") {
      std::string unknown;
      o.variants = variants_named(value(), unknown);
      if (!unknown.empty()) fail("unknown variant " + unknown);
    } else if (a == "--dtype") {
      std::string unknown;
      o.dtypes = dtypes_named(value(), unknown);
      if (!unknown.empty()) fail("unknown dtype " + unknown);
    } else if (a == "--momentum") {
      o.momenta.clear();
      for (const std::string &s : split(value())) o.momenta.push_back(std::atoi(s.c_str()) != 0);
    } else if (a == "--reps") {
      o.reps = std::max(1, std::atoi(value().c_str()));
    } else if (a == "--target-ms") {
      o.target_ms = std::max(0.1, std::atof(value().c_str()));
    } else if (a == "--warmup") {
      o.warmup = std::max(1, std::atoi(value().c_str()));
    } else if (a == "--device") {
      o.device = std::atoi(value().c_str());
    } else if (a == "-h" || a == "--help") {
      usage();
      std::exit(0);
    } else {
      usage();
      fail("unknown argument " + a);
    }
  }
  for (int64_t n : o.sizes)
    if (n <= 0) fail("--sizes must be > 0");
  return o;
}

// ---- one case ---------------------------------------------------------------------

struct Case {
  std::string kind;  // "size" or a model name
  std::vector<Tensor> tensors;
  Variant variant;
  qrms_dtype_t dtype;
  bool momentum;
};

constexpr int64_t kAlignBytes = 512;  // what a caching allocator hands out
constexpr int64_t kMin8bitSize = 4096;
constexpr size_t kCopyChunk = size_t(2) << 30;  // largest single cudaMemcpyAsync

std::string device_name;

JsonLine case_line(const Case &c, int64_t total) {
  JsonLine j;
  j.str("backend", "cuda")
      .str("device", device_name)
      .str("case", c.kind)
      .str("variant", variant_name(c.variant))
      .str("dtype", dtype_name(c.dtype))
      .boolean("momentum", c.momentum)
      .integer("n", total)
      .integer("tensors", static_cast<int64_t>(c.tensors.size()));
  return j;
}

// Returns false when the case failed (its line says why).
bool run_case(const Options &o, const Case &c) {
  const int64_t ps = dtype_size(c.dtype);
  int64_t total = 0, bytes = 0, two_pass = 0, pool_bytes = 0;
  std::vector<int64_t> offsets;
  for (const Tensor &t : c.tensors) {
    offsets.push_back(pool_bytes);
    pool_bytes += ceil_div(t.n * ps, kAlignBytes) * kAlignBytes;
    total += t.n;
    bytes += step_bytes(c.variant, c.dtype, c.momentum, t.n, kMin8bitSize);
    two_pass += two_pass_bytes(c.variant, c.dtype, c.momentum, t.n, kMin8bitSize);
  }
  // State the optimizer will allocate, roughly (bytes of the step ~ 2x it).
  int64_t state_estimate = 0;
  for (const Tensor &t : c.tensors) {
    const bool eight = c.variant != Variant::Bits32 && t.n >= kMin8bitSize;
    state_estimate += (c.momentum ? 2 : 1) * (eight ? t.n + ceil_div(t.n, 128) * 4 + 64 : 4 * t.n + 64);
  }
  const size_t copy_total = static_cast<size_t>(bytes / 2);
  const size_t copy_buf = std::min(copy_total, kCopyChunk);
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  const double need = static_cast<double>(2 * pool_bytes + state_estimate + 2 * static_cast<int64_t>(copy_buf));
  if (need > 0.92 * static_cast<double>(free_b)) {
    case_line(c, total)
        .str("skipped", "not enough device memory")
        .number("needs_bytes", need)
        .number("free_bytes", static_cast<double>(free_b))
        .print();
    return true;
  }

  try {
    Stream stream;
    DeviceMem params(static_cast<size_t>(pool_bytes)), grads(static_cast<size_t>(pool_bytes));
    DeviceMem copy_src(copy_buf), copy_dst(copy_buf);
    for (size_t i = 0; i < c.tensors.size(); ++i) {
      char *p = params.as<char>() + offsets[i];
      char *g = grads.as<char>() + offsets[i];
      fill(c.dtype, p, c.tensors[i].n, 2 * i + 1, 0.5f, stream.s);
      fill(c.dtype, g, c.tensors[i].n, 2 * i + 2, 0.01f, stream.s);
    }
    CUDA_CHECK(cudaMemsetAsync(copy_src.p, 1, copy_buf, stream.s));
    CUDA_CHECK(cudaStreamSynchronize(stream.s));

    qrms_config cfg;
    qrms_config_init(&cfg);
    cfg.lr = 1e-4f;
    cfg.momentum = c.momentum ? 0.9f : 0.0f;
    cfg.block_wise = c.variant == Variant::Tensor8 ? 0 : 1;
    cfg.min_8bit_size = kMin8bitSize;
    Optimizer opt;
    const qrms_variant_t v = c.variant == Variant::Bits32       ? QRMS_RMSPROP_32BIT
                             : c.variant == Variant::Blockwise4 ? QRMS_RMSPROP_4BIT
                                                                : QRMS_RMSPROP_8BIT;
    QRMS_CHECK(qrms_optimizer_create(&opt.opt, v, &cfg, QRMS_DEVICE_CUDA, o.device));
    for (size_t i = 0; i < c.tensors.size(); ++i)
      QRMS_CHECK(qrms_optimizer_add_param(opt.opt, params.as<char>() + offsets[i], grads.as<char>() + offsets[i],
                                          c.dtype, c.tensors[i].n, nullptr));
    int64_t state_bytes = 0;
    QRMS_CHECK(qrms_optimizer_state_bytes(opt.opt, &state_bytes));
    const qrms_stream_t qs = stream.s;  // the same type as cudaStream_t

    auto copy_once = [&] {
      for (size_t done = 0; done < copy_total; done += copy_buf) {
        const size_t len = std::min(copy_buf, copy_total - done);
        CUDA_CHECK(cudaMemcpyAsync(copy_dst.p, copy_src.p, len, cudaMemcpyDeviceToDevice, stream.s));
      }
    };

    Event e0, e1, e2;
    float ms = 0.0f;
    // Warm-up, timed as a first estimate of the step to size the samples.
    QRMS_CHECK(qrms_optimizer_step(opt.opt, qs));
    copy_once();
    CUDA_CHECK(cudaEventRecord(e0.e, stream.s));
    for (int w = 0; w < o.warmup; ++w) QRMS_CHECK(qrms_optimizer_step(opt.opt, qs));
    CUDA_CHECK(cudaEventRecord(e1.e, stream.s));
    for (int w = 0; w < o.warmup; ++w) copy_once();
    CUDA_CHECK(cudaEventRecord(e2.e, stream.s));
    CUDA_CHECK(cudaEventSynchronize(e2.e));
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0.e, e1.e));
    const double est = std::max(1e-4, static_cast<double>(ms) / o.warmup);
    const int iters = static_cast<int>(std::min(2000.0, std::max(3.0, std::ceil(o.target_ms / est))));

    std::vector<double> step_ms, copy_ms;
    for (int r = 0; r < o.reps; ++r) {
      CUDA_CHECK(cudaEventRecord(e0.e, stream.s));
      for (int k = 0; k < iters; ++k) QRMS_CHECK(qrms_optimizer_step(opt.opt, qs));
      CUDA_CHECK(cudaEventRecord(e1.e, stream.s));
      for (int k = 0; k < iters; ++k) copy_once();
      CUDA_CHECK(cudaEventRecord(e2.e, stream.s));
      CUDA_CHECK(cudaEventSynchronize(e2.e));
      CUDA_CHECK(cudaEventElapsedTime(&ms, e0.e, e1.e));
      step_ms.push_back(static_cast<double>(ms) / iters);
      CUDA_CHECK(cudaEventElapsedTime(&ms, e1.e, e2.e));
      copy_ms.push_back(static_cast<double>(ms) / iters);
    }
    CUDA_CHECK(cudaGetLastError());

    const double t = median(step_ms) * 1e-3, tc = median(copy_ms) * 1e-3;
    const double bps = static_cast<double>(bytes) / t;
    const double copy_bps = static_cast<double>(2 * copy_total) / tc;
    case_line(c, total)
        .number("ms_per_step", t * 1e3)
        .number("elems_per_s", static_cast<double>(total) / t)
        .integer("bytes_per_step", bytes)
        .number("bytes_per_elem", static_cast<double>(bytes) / static_cast<double>(total))
        .number("bytes_per_s", bps)
        .number("copy_ms", tc * 1e3)
        .number("copy_bytes_per_s", copy_bps)
        .number("fraction_of_copy", bps / copy_bps)
        .number("two_pass_fraction_of_copy", static_cast<double>(two_pass) / t / copy_bps)
        .integer("state_bytes", state_bytes)
        .integer("iters", iters)
        .integer("reps", o.reps)
        .print();
    return true;
  } catch (const CaseFailure &f) {
    if (f.out_of_memory) {
      case_line(c, total).str("skipped", f.message).print();
      return true;
    }
    case_line(c, total).str("error", f.message).print();
    // A broken context would fail every later case: stop now.
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaGetLastError());
    return false;
  }
}

}  // namespace

int main(int argc, char **argv) {
  const Options o = parse(argc, argv);
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    JsonLine()
        .str("backend", "cuda")
        .str("skipped", std::string("no CUDA device: ") + (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices"))
        .print();
    return kExitNoDevice;
  }
  if (qrms_cuda_device_count() == 0) {
    JsonLine().str("backend", "cuda").str("skipped", "libqrmsprop was built without CUDA support").print();
    return kExitNoDevice;
  }
  if (o.device < 0 || o.device >= count) fail("--device " + std::to_string(o.device) + " does not exist");
  CUDA_CHECK(cudaSetDevice(o.device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, o.device));
  device_name = prop.name;
  int mem_khz = 0, bus_bits = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, o.device));
  CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, o.device));
  int runtime = 0, driver = 0;
  CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  CUDA_CHECK(cudaDriverGetVersion(&driver));
  JsonLine()
      .str("backend", "cuda")
      .str("meta", "qrms_bench_gpu")
      .str("device", device_name)
      .str("sm", std::to_string(prop.major) + "." + std::to_string(prop.minor))
      .integer("sms", prop.multiProcessorCount)
      .integer("memory_bytes", static_cast<int64_t>(prop.totalGlobalMem))
      .number("peak_bytes_per_s_theoretical", 2.0 * mem_khz * 1e3 * bus_bits / 8.0)
      .integer("cuda_runtime", runtime)
      .integer("cuda_driver", driver)
      .integer("qrms_version", qrms_version())
      .print(stderr);

  bool ok = true;
  for (int64_t n : o.sizes)
    for (Variant v : o.variants)
      for (qrms_dtype_t d : o.dtypes)
        for (bool m : o.momenta) ok &= run_case(o, Case{"size", {{"tensor", n}}, v, d, m});
  for (const std::string &model : o.models) {
    const std::vector<Tensor> shapes = model == "gpt2_124m" ? gpt2_124m() : gpt_1_3b();
    for (Variant v : o.variants)
      for (qrms_dtype_t d : o.dtypes)
        for (bool m : o.momenta) ok &= run_case(o, Case{model, shapes, v, d, m});
  }
  return ok ? 0 : 1;
}
