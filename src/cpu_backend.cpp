// The CPU backend: walks tensors in blocks of 256 elements, spreads fixed
// chunks of blocks over threads, and calls the element math of element.hpp.
// Reductions are made per chunk and combined in chunk order, so the result is
// the same whatever the thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>
#include <vector>

#include "core.hpp"

namespace qrms {
namespace core {

namespace {

using math::kBlockSize;

// ---- threads ----------------------------------------------------------------

int default_threads() {
  if (const char *env = std::getenv("QRMS_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

std::atomic<int> g_threads{0};  // 0: not chosen yet

// Work is cut into chunks of this many 256-blocks (64 Ki elements); a chunk
// is the unit of threading and of partial reductions.
constexpr int64_t kChunkBlocks = 256;

// Calls fn(chunk) for every chunk in [0, chunks), on up to cpu_threads()
// threads. fn must only write data owned by its chunk.
template <typename Fn>
void parallel_chunks(int64_t chunks, const Fn &fn) {
  const int64_t threads = std::min<int64_t>(cpu_threads(), chunks);
  if (threads <= 1) {
    for (int64_t c = 0; c < chunks; ++c) fn(c);
    return;
  }
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) fn(c);
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads - 1));
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto &th : pool) th.join();
}

// ---- dtype access ----------------------------------------------------------

template <typename T>
float load(const void *p, int64_t i) {
  return math::to_float(static_cast<const T *>(p)[i]);
}
template <typename T>
void store(void *p, int64_t i, float v) {
  static_cast<T *>(p)[i] = math::from_float<T>(v);
}

// ---- one tensor ------------------------------------------------------------

// What a read-only pass over a chunk collects.
struct Partial {
  double u_sumsq = 0, p_sumsq = 0;   // max_unorm
  float max1 = 0, max2 = 0;          // per-tensor 8-bit: max |s_new|, max |b_new|
};

// State of one tensor of a given kind, read and written a block at a time.
struct StateIO {
  StateKind kind;
  const float *qmap;
  uint8_t zero;

  // Old state of elements [i0, i0+len) of block `blk` into s[].
  void load_block(const void *state, const float *scale, int64_t blk, int64_t i0, int64_t len, float *s) const {
    switch (kind) {
      case StateKind::Float32:
        std::memcpy(s, static_cast<const float *>(state) + i0, static_cast<size_t>(len) * sizeof(float));
        break;
      case StateKind::Blockwise8:
      case StateKind::Tensor8: {
        const float a = kind == StateKind::Blockwise8 ? scale[blk] : scale[0];
        const uint8_t *codes = static_cast<const uint8_t *>(state) + i0;
        for (int64_t k = 0; k < len; ++k) s[k] = math::dequantize(qmap, codes[k], a);
        break;
      }
    }
  }

  // New state s[] of the block back to memory (per-tensor: scale[1] is new_max1).
  void store_block(void *state, float *scale, int64_t blk, int64_t i0, int64_t len, const float *s) const {
    switch (kind) {
      case StateKind::Float32:
        std::memcpy(static_cast<float *>(state) + i0, s, static_cast<size_t>(len) * sizeof(float));
        break;
      case StateKind::Blockwise8:
      case StateKind::Tensor8: {
        float a;
        if (kind == StateKind::Blockwise8) {
          a = 0.0f;
          for (int64_t k = 0; k < len; ++k) a = math::nan_max(a, std::fabs(s[k]));
          scale[blk] = a;
        } else {
          a = scale[1];
        }
        uint8_t *codes = static_cast<uint8_t *>(state) + i0;
        for (int64_t k = 0; k < len; ++k) codes[k] = math::quantize_scaled(qmap, s[k], a, zero);
        break;
      }
    }
  }
};

// Runs SPEC 3 over the blocks of one chunk. With write == false it only
// accumulates `acc` (norms for max_unorm, maxima for per-tensor 8-bit); with
// write == true it stores params and state.
template <typename T>
void walk_chunk(const TensorUpdate &t, const StateIO &io, int64_t chunk, bool write, float gscale, float uscale,
                Partial &acc) {
  const math::Hyper &h = t.hp;
  const bool mom = h.momentum > 0.0f;
  const int64_t nblocks = num_blocks(t.n);
  const int64_t b0 = chunk * kChunkBlocks, b1 = std::min(nblocks, b0 + kChunkBlocks);
  float s[kBlockSize], b[kBlockSize];
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t i0 = blk * kBlockSize, len = std::min(kBlockSize, t.n - i0);
    io.load_block(t.state1, t.scale1, blk, i0, len, s);
    if (mom) io.load_block(t.state2, t.scale2, blk, i0, len, b);
    float block_u = 0, block_p = 0;
    for (int64_t k = 0; k < len; ++k) {
      const float p = load<T>(t.param, i0 + k);
      float bk = mom ? b[k] : 0.0f, u;
      const bool touched = math::rms_element(h, p, load<T>(t.grad, i0 + k), gscale, s[k], bk, u);
      if (mom) b[k] = bk;
      block_u += u * u;
      block_p += p * p;
      if (write && touched) store<T>(t.param, i0 + k, math::apply_update(p, h.lr, uscale, u));
      acc.max1 = math::nan_max(acc.max1, std::fabs(s[k]));
      if (mom) acc.max2 = math::nan_max(acc.max2, std::fabs(b[k]));
    }
    acc.u_sumsq += block_u;
    acc.p_sumsq += block_p;
    if (write) {
      io.store_block(t.state1, t.scale1, blk, i0, len, s);
      if (mom) io.store_block(t.state2, t.scale2, blk, i0, len, b);
    }
  }
}

template <typename T>
void update_tensor(StateKind kind, const TensorUpdate &t, const float *qmap) {
  const StateIO io{kind, qmap, qmap ? math::zero_code(qmap) : uint8_t(0)};
  const float gscale = t.gnorm_scale ? *t.gnorm_scale : 1.0f;
  const int64_t chunks = (num_blocks(t.n) + kChunkBlocks - 1) / kChunkBlocks;
  float uscale = 1.0f;
  const bool tensor8 = kind == StateKind::Tensor8;
  if (t.hp.max_unorm > 0.0f || tensor8) {
    std::vector<Partial> parts(static_cast<size_t>(chunks));
    parallel_chunks(chunks, [&](int64_t c) { walk_chunk<T>(t, io, c, false, gscale, 1.0f, parts[c]); });
    Partial total;
    for (const Partial &p : parts) {
      total.u_sumsq += p.u_sumsq;
      total.p_sumsq += p.p_sumsq;
      total.max1 = math::nan_max(total.max1, p.max1);
      total.max2 = math::nan_max(total.max2, p.max2);
    }
    if (t.hp.max_unorm > 0.0f) {
      t.unorm[0] = static_cast<float>(total.u_sumsq);
      t.unorm[1] = static_cast<float>(total.p_sumsq);
      uscale = math::update_scale(t.hp.max_unorm, t.hp.eps, t.unorm[0], t.unorm[1]);
    }
    if (tensor8) {
      t.scale1[1] = total.max1;
      if (t.scale2) t.scale2[1] = total.max2;
    }
  }
  parallel_chunks(chunks, [&](int64_t c) {
    Partial unused;
    walk_chunk<T>(t, io, c, true, gscale, uscale, unused);
  });
  if (tensor8) {  // new_max1 becomes max1 for the next step
    t.scale1[0] = t.scale1[1];
    if (t.scale2) t.scale2[0] = t.scale2[1];
  }
}

template <typename T>
float grad_sumsq(const void *grad, int64_t n) {
  const int64_t chunk = kChunkBlocks * kBlockSize;
  const int64_t chunks = (n + chunk - 1) / chunk;
  std::vector<double> parts(static_cast<size_t>(chunks), 0.0);
  parallel_chunks(chunks, [&](int64_t c) {
    double acc = 0;
    for (int64_t i = c * chunk, e = std::min(n, (c + 1) * chunk); i < e; ++i) {
      const float g = load<T>(grad, i);
      acc += static_cast<double>(g * g);
    }
    parts[c] = acc;
  });
  double q = 0;
  for (double p : parts) q += p;
  return static_cast<float>(q);
}

template <typename Fn>
void dispatch_dtype(Dtype dtype, const Fn &fn) {
  switch (dtype) {
    case Dtype::Float32: fn(float{}); break;
    case Dtype::Float16: fn(math::half_t{}); break;
    case Dtype::BFloat16: fn(math::bf16_t{}); break;
  }
}

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::CPU; }

  void *alloc(size_t bytes) override {
    void *p = std::calloc(bytes ? bytes : 1, 1);
    if (!p) throw OutOfMemoryError("out of host memory allocating " + std::to_string(bytes) + " bytes of state");
    return p;
  }
  void free(void *p) noexcept override { std::free(p); }
  void to_host(void *dst, const void *src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void from_host(void *dst, const void *src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void check_pointer(const void *, const char *) override {}

  void update(StateKind kind, Dtype dtype, const TensorUpdate *tensors, size_t count, const float *qmap,
              void *) override {
    dispatch_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      for (size_t i = 0; i < count; ++i) update_tensor<T>(kind, tensors[i], qmap);
    });
  }

  void clip(Dtype dtype, const ClipJob *jobs, size_t count, void *) override {
    dispatch_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      for (size_t i = 0; i < count; ++i) {
        const ClipJob &j = jobs[i];
        const int64_t step = ++*j.step;
        math::record_gnorm(j.gnorm_vec, step, grad_sumsq<T>(j.grad, j.n));
        float sorted[math::kGnormHistory];
        std::copy(j.gnorm_vec, j.gnorm_vec + math::kGnormHistory, sorted);
        std::sort(sorted, sorted + math::kGnormHistory);
        *j.gnorm_scale = math::clip_scale(j.gnorm_vec, sorted, step, j.percentile);
      }
    });
  }

  void quantize_blockwise(const float *qmap, const float *in, uint8_t *codes, float *absmax, int64_t n,
                          int64_t blocksize, void *) override {
    const uint8_t zero = math::zero_code(qmap);
    const int64_t blocks = (n + blocksize - 1) / blocksize;
    parallel_chunks(blocks, [&](int64_t blk) {
      const int64_t i0 = blk * blocksize, i1 = std::min(n, i0 + blocksize);
      float a = 0.0f;
      for (int64_t i = i0; i < i1; ++i) a = math::nan_max(a, std::fabs(in[i]));
      absmax[blk] = a;
      for (int64_t i = i0; i < i1; ++i) codes[i] = math::quantize_scaled(qmap, in[i], a, zero);
    });
  }

  void dequantize_blockwise(const float *qmap, const uint8_t *codes, const float *absmax, float *out, int64_t n,
                            int64_t blocksize, void *) override {
    for (int64_t i = 0; i < n; ++i) out[i] = math::dequantize(qmap, codes[i], absmax[i / blocksize]);
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

void set_cpu_threads(int n) { g_threads.store(n > 0 ? n : default_threads()); }

int cpu_threads() {
  int n = g_threads.load();
  if (n <= 0) {
    n = default_threads();
    g_threads.store(n);
  }
  return n;
}

}  // namespace core
}  // namespace qrms
