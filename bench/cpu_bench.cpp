// CPU benchmark of the qrmsprop update against a read-modify-write memory
// stream over the same arrays, measured in the same run.
//
// For every variant (32-bit, 8-bit block-wise, 8-bit per-tensor), dtype (f32,
// bf16, f16), with and without momentum, on a large tensor, with 1 and 2
// threads: the median time of one step, elements/s, the minimum bytes of the
// step (bench_common.hpp) per second, and that as a fraction of the bytes/s
// of a plain loop that reads param, grad and the state buffers and writes
// param and the state buffers back (the same bytes per element), run on the
// same arrays with the same number of threads (at most one per 64 Ki
// elements, as the library; persistent workers, as the library), interleaved
// with the steps so both see the same machine noise. One JSON line per case on stdout;
// foreign_cpu is the share of the machine's CPU time that other processes
// used during the timed section (0 on a quiet machine; above ~0.05 the
// absolute figures of that line are suspect).
//
//   qrms_bench_cpu [--n N[,N...]] [--threads 1,2] [--reps R] [--min-time S]
//                  [--variant 32bit|8bit_blockwise|8bit_tensor|4bit_blockwise] [--dtype f32|bf16|f16]
//                  [--momentum 0|1] [--api core|optimizer] [--quick]
//
// --api core (default) times the raw-pointer entry points (qrms_update_32bit,
// qrms_update_8bit_blockwise, qrms_update_8bit_tensor) on buffers the
// benchmark owns, so the stream runs over exactly the arrays the update
// touches. --api optimizer times qrms_optimizer_step on one parameter (the
// optimizer owns its state; the stream then uses state-shaped arrays of the
// benchmark). 4bit_blockwise has no raw-pointer entry and needs --api
// optimizer; its stream runs over byte arrays of n elements (twice its
// codes), so its bytes per second are compared with that stream's.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>

#include "bench_common.hpp"
#include "element.hpp"
#include "qrmsprop/qrmsprop.h"

using namespace qrms_bench;

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::vector<int64_t> sizes{int64_t(1) << 24};
  std::vector<int> threads{1, 2};
  int reps = 9;
  int warmup = 2;
  double min_time_s = 0.05;  // each timed sample runs at least this long
  std::vector<Variant> variants{Variant::Bits32, Variant::Blockwise8, Variant::Tensor8};
  std::vector<qrms_dtype_t> dtypes{QRMS_FLOAT32, QRMS_BFLOAT16, QRMS_FLOAT16};
  std::vector<bool> momenta{false, true};
  bool optimizer_api = false;
};

[[noreturn]] void fail(const std::string &what) {
  JsonLine().str("backend", "cpu").str("error", what).print();
  std::exit(1);
}

void check(qrms_status_t st, const char *what) {
  if (st != QRMS_SUCCESS) fail(std::string(what) + ": " + qrms_status_string(st) + ": " + qrms_last_error());
}

void usage() {
  std::fprintf(stderr,
               "usage: qrms_bench_cpu [--n N[,N...]] [--threads T[,T...]] [--reps R] [--min-time S]\n"
               "                      [--variant 32bit|8bit_blockwise|8bit_tensor|4bit_blockwise] [--dtype f32|bf16|f16]\n"
               "                      [--momentum 0|1] [--api core|optimizer] [--quick]\n");
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
      o.sizes = {int64_t(1) << 22};
      o.reps = 3;
      o.warmup = 1;
      o.min_time_s = 0.02;
    } else if (a == "--n") {
      o.sizes.clear();
      for (const std::string &s : split(value())) o.sizes.push_back(std::atoll(s.c_str()));
    } else if (a == "--threads") {
      o.threads.clear();
      for (const std::string &s : split(value())) o.threads.push_back(std::atoi(s.c_str()));
    } else if (a == "--reps") {
      o.reps = std::max(1, std::atoi(value().c_str()));
    } else if (a == "--min-time") {
      o.min_time_s = std::atof(value().c_str());
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
    } else if (a == "--api") {
      const std::string v = value();
      if (v != "core" && v != "optimizer") fail("--api must be core or optimizer");
      o.optimizer_api = v == "optimizer";
    } else if (a == "-h" || a == "--help") {
      usage();
      std::exit(0);
    } else {
      usage();
      fail("unknown argument " + a);
    }
  }
  for (int64_t n : o.sizes)
    if (n <= 0) fail("--n must be > 0");
  for (int t : o.threads)
    if (t <= 0) fail("--threads must be > 0");
  if (!o.optimizer_api && std::find(o.variants.begin(), o.variants.end(), Variant::Blockwise4) != o.variants.end())
    fail("4bit_blockwise has no raw-pointer entry point: add --api optimizer");
  return o;
}

// ---- buffers -------------------------------------------------------------------

// Owns an allocation whose data starts `offset` bytes after the page-aligned
// base: the arrays of a case start at different offsets modulo 4 KiB, as
// independent allocations usually do, so that no figure depends on every
// stream sharing one page offset (4K aliasing, cache-set conflicts).
struct Mem {
  void *base = nullptr;
  size_t offset = 0;
  Mem() = default;
  Mem(void *b, size_t off) : base(b), offset(off) {}
  Mem(Mem &&o) noexcept : base(o.base), offset(o.offset) { o.base = nullptr; }
  Mem &operator=(Mem &&o) noexcept {
    std::swap(base, o.base);
    std::swap(offset, o.offset);
    return *this;
  }
  Mem(const Mem &) = delete;
  Mem &operator=(const Mem &) = delete;
  ~Mem() { std::free(base); }
  void *get() const { return base ? static_cast<char *>(base) + offset : nullptr; }
};

// Zeroed (and so faulted in before any timing); array number `index` of a
// case starts index * 1088 bytes (17 cache lines) into its first page.
Mem alloc_zero(size_t bytes, int index) {
  const size_t offset = static_cast<size_t>(index) * 1088 % 4096;
  const size_t rounded = (std::max<size_t>(bytes, 1) + offset + 4095) / 4096 * 4096;
  void *p = std::aligned_alloc(4096, rounded);
  if (!p) fail("out of memory allocating " + std::to_string(bytes) + " bytes");
  std::memset(p, 0, rounded);
  return Mem(p, offset);
}

uint64_t g_rng = 0x9e3779b97f4a7c15ull;
float uniform() {  // xorshift64*, in [-1, 1)
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  const uint64_t r = g_rng * 0x2545f4914f6cdd1dull;
  return static_cast<float>(static_cast<double>(r >> 40) / 8388608.0 - 1.0);
}

template <typename T>
void fill(void *p, int64_t n, float scale) {
  T *q = static_cast<T *>(p);
  for (int64_t i = 0; i < n; ++i) q[i] = qrms::math::from_float<T>(scale * uniform());
}

void fill_dtype(qrms_dtype_t d, void *p, int64_t n, float scale) {
  if (d == QRMS_FLOAT32) fill<float>(p, n, scale);
  else if (d == QRMS_FLOAT16) fill<qrms::math::half_t>(p, n, scale);
  else fill<qrms::math::bf16_t>(p, n, scale);
}

struct Case {
  Variant variant;
  qrms_dtype_t dtype;
  bool momentum;
  int64_t n;
};

// Everything one case touches.
struct Buffers {
  Mem param, grad, s1, s2, a1, a2;
  int64_t scales = 0;  // floats per scale array
};

Buffers make_buffers(const Case &c) {
  Buffers b;
  const size_t ps = static_cast<size_t>(dtype_size(c.dtype)), n = static_cast<size_t>(c.n);
  b.param = alloc_zero(n * ps, 0);
  b.grad = alloc_zero(n * ps, 1);
  fill_dtype(c.dtype, b.param.get(), c.n, 0.5f);
  fill_dtype(c.dtype, b.grad.get(), c.n, 0.01f);
  const size_t ss = c.variant == Variant::Bits32 ? 4 : 1;
  b.scales = c.variant == Variant::Blockwise8   ? ceil_div(c.n, 256)
             : c.variant == Variant::Blockwise4 ? ceil_div(c.n, 128)
             : c.variant == Variant::Tensor8    ? 2
                                                : 0;
  // Zero codes and zero scales are the SPEC's initial 8-bit state (state 0).
  b.s1 = alloc_zero(n * ss, 2);
  if (b.scales) b.a1 = alloc_zero(static_cast<size_t>(b.scales) * 4, 3);
  if (c.momentum) {
    b.s2 = alloc_zero(n * ss, 4);
    if (b.scales) b.a2 = alloc_zero(static_cast<size_t>(b.scales) * 4, 5);
  }
  return b;
}

// ---- the read-modify-write stream ---------------------------------------------------

// mask is 0 at run time (read through a volatile), so every store writes back
// the value it read and the arrays stay valid for the optimizer; the compiler
// cannot know that and must do every load and store.
volatile uint32_t g_zero_mask = 0;

// Reads p, g, s1 (and s2) and writes p, s1 (and s2): element-wise integer
// ops on the bit patterns, which vectorise and never meet denormals.
template <typename P, typename S, bool Mom>
void rmw_range(P *__restrict p, const P *__restrict g, S *__restrict s1, S *__restrict s2, int64_t i0, int64_t i1,
               uint32_t mask) {
  const P pm = static_cast<P>(mask);
  const S sm = static_cast<S>(mask);
  for (int64_t i = i0; i < i1; ++i) {
    const P gi = g[i];
    p[i] = static_cast<P>(p[i] + (gi & pm));
    s1[i] = static_cast<S>(s1[i] + (static_cast<S>(gi) & sm));
    if (Mom) s2[i] = static_cast<S>(s2[i] + (static_cast<S>(gi) & sm));
  }
}

void rmw_scales(float *a, int64_t n, uint32_t mask) {
  if (!a) return;
  uint32_t *u = reinterpret_cast<uint32_t *>(a);
  for (int64_t i = 0; i < n; ++i) u[i] = u[i] + (u[i] & mask);
}

using RangeFn = void (*)(void *, const void *, void *, void *, int64_t, int64_t, uint32_t);

template <typename P, typename S, bool Mom>
void rmw_erased(void *p, const void *g, void *s1, void *s2, int64_t i0, int64_t i1, uint32_t mask) {
  rmw_range<P, S, Mom>(static_cast<P *>(p), static_cast<const P *>(g), static_cast<S *>(s1), static_cast<S *>(s2),
                       i0, i1, mask);
}

RangeFn pick_rmw(int64_t ps, int64_t ss, bool mom) {
  if (ps == 4 && ss == 4) return mom ? rmw_erased<uint32_t, uint32_t, true> : rmw_erased<uint32_t, uint32_t, false>;
  if (ps == 4 && ss == 1) return mom ? rmw_erased<uint32_t, uint8_t, true> : rmw_erased<uint32_t, uint8_t, false>;
  if (ps == 2 && ss == 4) return mom ? rmw_erased<uint16_t, uint32_t, true> : rmw_erased<uint16_t, uint32_t, false>;
  return mom ? rmw_erased<uint16_t, uint8_t, true> : rmw_erased<uint16_t, uint8_t, false>;
}

struct StreamArrays {
  void *p;
  const void *g;
  void *s1, *s2;
  float *a1, *a2;
  int64_t n, scales;
  RangeFn fn;
};

// Workers that live as long as the process, woken through a condition
// variable, as the CPU backend's own pool: a stream pass pays what a step
// pays to start its threads, no more.
class StreamPool {
 public:
  ~StreamPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto &t : workers_) t.join();
  }

  // Calls fn(slice) for slice in [0, slices), slice 0 on the caller.
  void run(int slices, const std::function<void(int)> &fn) {
    if (slices <= 1) {
      fn(0);
      return;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    while (static_cast<int>(workers_.size()) < slices - 1) {
      const int index = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, index] { work(index); });
    }
    fn_ = &fn;
    slices_ = slices;
    pending_ = slices - 1;
    ++generation_;
    lock.unlock();
    wake_.notify_all();
    fn(0);
    lock.lock();
    done_.wait(lock, [this] { return pending_ == 0; });
    fn_ = nullptr;
  }

 private:
  void work(int index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (index >= slices_) continue;  // not needed this time
      const std::function<void(int)> *fn = fn_;
      lock.unlock();
      (*fn)(index);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int)> *fn_ = nullptr;
  int slices_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

StreamPool &stream_pool() {
  static StreamPool *pool = new StreamPool;  // never destroyed, like the library's
  return *pool;
}

// The thread count the CPU backend would use: `threads`, but no more than one
// per 64 Ki elements (its unit of work), each thread a contiguous slice.
void stream_pass(const StreamArrays &s, int threads) {
  const uint32_t mask = g_zero_mask;
  const int slices = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, ceil_div(s.n, 65536))));
  const int64_t per = ceil_div(ceil_div(s.n, slices), 64) * 64;
  stream_pool().run(slices, [&s, per, mask](int t) {
    const int64_t i0 = std::min(s.n, t * per), i1 = std::min(s.n, (t + 1) * per);
    s.fn(s.p, s.g, s.s1, s.s2, i0, i1, mask);
  });
  rmw_scales(s.a1, s.scales, mask);
  rmw_scales(s.a2, s.scales, mask);
}

// ---- the optimizer step ---------------------------------------------------------

struct Stepper {
  Case c;
  Buffers *b;
  std::vector<float> qmap;
  qrms_update_params hp{};
  qrms_optimizer_t opt = nullptr;

  void step() const {
    if (opt) {
      check(qrms_optimizer_step(opt, nullptr), "qrms_optimizer_step");
      return;
    }
    void *p = b->param.get();
    const void *g = b->grad.get();
    switch (c.variant) {
      case Variant::Bits32:
        check(qrms_update_32bit(QRMS_DEVICE_CPU, c.dtype, p, g, static_cast<float *>(b->s1.get()),
                                static_cast<float *>(b->s2.get()), c.n, &hp, nullptr, nullptr, nullptr),
              "qrms_update_32bit");
        break;
      case Variant::Blockwise8:
        check(qrms_update_8bit_blockwise(QRMS_DEVICE_CPU, c.dtype, p, g, static_cast<uint8_t *>(b->s1.get()),
                                         static_cast<float *>(b->a1.get()), static_cast<uint8_t *>(b->s2.get()),
                                         static_cast<float *>(b->a2.get()), qmap.data(), c.n, &hp, nullptr,
                                         nullptr, nullptr),
              "qrms_update_8bit_blockwise");
        break;
      case Variant::Blockwise4:  // only through the optimizer (parse refuses --api core)
        break;
      case Variant::Tensor8:
        check(qrms_update_8bit_tensor(QRMS_DEVICE_CPU, c.dtype, p, g, static_cast<uint8_t *>(b->s1.get()),
                                      static_cast<float *>(b->a1.get()), static_cast<uint8_t *>(b->s2.get()),
                                      static_cast<float *>(b->a2.get()), qmap.data(), c.n, &hp, nullptr, nullptr,
                                      nullptr),
              "qrms_update_8bit_tensor");
        break;
    }
  }
};

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// CPU time used on the whole machine (all cores, /proc/stat, steal included)
// and by this process, in seconds: their difference over a timed section is
// the work of other processes that competed with the benchmark.
struct CpuTimes {
  double machine = -1.0, self = 0.0;
};

CpuTimes cpu_times() {
  CpuTimes t;
  std::ifstream f("/proc/stat");
  std::string cpu;
  if (f >> cpu && cpu == "cpu") {
    // user nice system idle iowait irq softirq steal
    unsigned long long v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (unsigned long long &x : v) f >> x;
    const unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    t.machine = static_cast<double>(busy) / 100.0;  // USER_HZ is 100 on Linux
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  t.self = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           1e-6 * static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  return t;
}

double load_average() {
  std::ifstream f("/proc/loadavg");
  double l = -1.0;
  if (f) f >> l;
  return l;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "unknown";
}

void run_case(const Options &o, const Case &c) {
  // The raw entry points always use the state they are given; an optimizer
  // keeps 32-bit state below min_8bit_size (4096, the default), and then the
  // stream's arrays and the byte model follow what it really holds.
  const int64_t min_8bit = o.optimizer_api ? 4096 : 0;
  Case held = c;
  if (c.variant != Variant::Bits32 && c.n < min_8bit) held.variant = Variant::Bits32;
  Buffers b = make_buffers(held);
  Stepper st;
  st.c = c;
  st.b = &b;
  st.qmap.resize(256);
  check(qrms_dynamic_map(1, st.qmap.data()), "qrms_dynamic_map");
  qrms_update_params_init(&st.hp);
  st.hp.lr = 1e-3f;
  st.hp.alpha = 0.99f;
  st.hp.eps = 1e-8f;
  st.hp.momentum = c.momentum ? 0.9f : 0.0f;

  if (o.optimizer_api) {
    qrms_config cfg;
    qrms_config_init(&cfg);
    cfg.lr = st.hp.lr;
    cfg.momentum = st.hp.momentum;
    cfg.block_wise = c.variant == Variant::Tensor8 ? 0 : 1;
    const qrms_variant_t v = c.variant == Variant::Bits32       ? QRMS_RMSPROP_32BIT
                             : c.variant == Variant::Blockwise4 ? QRMS_RMSPROP_4BIT
                                                                : QRMS_RMSPROP_8BIT;
    check(qrms_optimizer_create(&st.opt, v, &cfg, QRMS_DEVICE_CPU, 0), "qrms_optimizer_create");
    check(qrms_optimizer_add_param(st.opt, b.param.get(), b.grad.get(), c.dtype, c.n, nullptr),
          "qrms_optimizer_add_param");
  }

  const int64_t ss = held.variant == Variant::Bits32 ? 4 : 1;
  const StreamArrays sa{b.param.get(),
                        b.grad.get(),
                        b.s1.get(),
                        b.s2.get(),
                        static_cast<float *>(b.a1.get()),
                        static_cast<float *>(b.a2.get()),
                        c.n,
                        held.variant == Variant::Blockwise8 || held.variant == Variant::Blockwise4 ? b.scales : 0,
                        pick_rmw(dtype_size(c.dtype), ss, c.momentum)};
  const int64_t bytes = step_bytes(c.variant, c.dtype, c.momentum, c.n, min_8bit);
  // What one stream pass moves: the step's bytes, except for 4-bit state,
  // whose stream runs over n-byte state arrays.
  const int64_t stream_bytes = c.n * 3 * dtype_size(c.dtype) + (c.momentum ? 2 : 1) * (2 * c.n * ss + 8 * sa.scales);

  for (int threads : o.threads) {
    check(qrms_set_num_threads(threads), "qrms_set_num_threads");
    const double load = load_average();
    // Warm-up (also settles the 8-bit state away from its all-zero start),
    // then size the samples so each lasts at least min_time_s.
    for (int w = 0; w < o.warmup; ++w) st.step();
    stream_pass(sa, threads);
    Clock::time_point t0 = Clock::now();
    st.step();
    const double one = std::max(seconds_since(t0), 1e-7);
    const int iters = static_cast<int>(std::min<double>(1e6, std::max(1.0, std::ceil(o.min_time_s / one))));

    std::vector<double> step_s, stream_s;
    const CpuTimes c0 = cpu_times();
    const Clock::time_point timed0 = Clock::now();
    for (int r = 0; r < o.reps; ++r) {
      t0 = Clock::now();
      for (int k = 0; k < iters; ++k) stream_pass(sa, threads);
      stream_s.push_back(seconds_since(t0) / iters);
      t0 = Clock::now();
      for (int k = 0; k < iters; ++k) st.step();
      step_s.push_back(seconds_since(t0) / iters);
    }
    const CpuTimes c1 = cpu_times();
    const double wall = seconds_since(timed0);
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    // Share of the machine's CPU time other processes used while we timed.
    const double foreign =
        c0.machine < 0 ? -1.0 : std::max(0.0, (c1.machine - c0.machine) - (c1.self - c0.self)) / (wall * hw);
    const double t_step = median(step_s), t_stream = median(stream_s);
    const double bps = static_cast<double>(bytes) / t_step;
    const double stream_bps = static_cast<double>(stream_bytes) / t_stream;
    JsonLine()
        .str("backend", "cpu")
        .str("api", o.optimizer_api ? "optimizer" : "core")
        .str("variant", variant_name(c.variant))
        .str("state", variant_name(held.variant))
        .str("dtype", dtype_name(c.dtype))
        .boolean("momentum", c.momentum)
        .integer("n", c.n)
        .integer("threads", threads)
        .number("ms_per_step", t_step * 1e3)
        .number("elems_per_s", static_cast<double>(c.n) / t_step)
        .integer("bytes_per_step", bytes)
        .number("bytes_per_elem", static_cast<double>(bytes) / static_cast<double>(c.n))
        .number("bytes_per_s", bps)
        .number("stream_ms", t_stream * 1e3)
        .number("stream_bytes_per_s", stream_bps)
        .number("fraction_of_stream", bps / stream_bps)
        .number("two_pass_fraction_of_stream",
                static_cast<double>(two_pass_bytes(c.variant, c.dtype, c.momentum, c.n, min_8bit)) / t_step / stream_bps)
        .integer("reps", o.reps)
        .integer("iters", iters)
        .number("load1", load)
        .number("foreign_cpu", foreign)
        .print();
  }
  qrms_optimizer_destroy(st.opt);
}

}  // namespace

int main(int argc, char **argv) {
  const Options o = parse(argc, argv);
  JsonLine()
      .str("backend", "cpu")
      .str("meta", "qrms_bench_cpu")
      .str("cpu", cpu_model())
      .integer("hardware_threads", static_cast<int64_t>(std::thread::hardware_concurrency()))
      .integer("qrms_version", qrms_version())
      .number("load1", load_average())
      .print(stderr);
  for (int64_t n : o.sizes)
    for (Variant v : o.variants)
      for (qrms_dtype_t d : o.dtypes)
        for (bool m : o.momenta) run_case(o, Case{v, d, m, n});
  return 0;
}
