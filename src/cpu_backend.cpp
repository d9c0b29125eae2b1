// The CPU backend: walks tensors in blocks of 256 elements, spreads fixed
// chunks of blocks over threads, and calls the element math of element.hpp.
// Reductions are made per chunk and combined in chunk order, so the result is
// the same whatever the thread count.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <limits>
#include <mutex>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "core.hpp"
#include "quant_table.hpp"

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

// ---- vector width ------------------------------------------------------------

#if defined(__x86_64__) && defined(__GNUC__)
#define QRMS_CPU_AVX2 1
#else
#define QRMS_CPU_AVX2 0
#endif

// The widest loops this CPU runs; QRMS_CPU_SIMD=baseline in the environment
// keeps the baseline ones.
CpuSimd best_simd() {
  const char *env = std::getenv("QRMS_CPU_SIMD");
  if (env && std::strcmp(env, "baseline") == 0) return CpuSimd::Baseline;
#if QRMS_CPU_AVX2
  __builtin_cpu_init();  // needed when this runs during static initialisation
  // The AVX2 loops use F16C too; clang's __builtin_cpu_supports does not
  // know "f16c", so CPUID leaf 1 (ECX) is read directly.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
  if (__builtin_cpu_supports("avx2") && f16c) return CpuSimd::Avx2;
#endif
  return CpuSimd::Baseline;
}

std::atomic<CpuSimd> g_simd{best_simd()};

// Work is cut into chunks of this many 256-blocks (64 Ki elements); a chunk
// is the unit of threading and of partial reductions.
constexpr int64_t kChunkBlocks = 256;

// Workers that live as long as the process, so that a step does not pay for
// starting threads. One parallel region runs at a time; a caller that finds
// the pool busy (another optimizer stepping on another thread) runs its
// chunks itself, which gives the same result.
class ThreadPool {
 public:
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto &t : workers_) t.join();
  }

  // Calls fn(chunk) for every chunk in [0, chunks) on `threads` threads
  // (the caller included). fn must only write data owned by its chunk.
  void run(int64_t chunks, int threads, const std::function<void(int64_t)> &fn) {
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (!busy.owns_lock() || threads <= 1 || chunks <= 1) {
      for (int64_t c = 0; c < chunks; ++c) fn(c);
      return;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    while (static_cast<int>(workers_.size()) < threads - 1) workers_.emplace_back([this] { work(); });
    fn_ = &fn;
    chunks_ = chunks;
    next_.store(0);
    helpers_ = threads - 1;
    pending_ = threads - 1;
    ++generation_;
    lock.unlock();
    wake_.notify_all();
    drain();
    lock.lock();
    done_.wait(lock, [this] { return pending_ == 0; });
    fn_ = nullptr;
  }

 private:
  void drain() {
    for (int64_t c = next_.fetch_add(1); c < chunks_; c = next_.fetch_add(1)) (*fn_)(c);
  }

  void work() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || (generation_ != seen && helpers_ > 0); });
      if (stop_) return;
      seen = generation_;
      --helpers_;  // only as many workers as asked for take part
      lock.unlock();
      drain();
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex run_mutex_;  // one region at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)> *fn_ = nullptr;
  int64_t chunks_ = 0;
  std::atomic<int64_t> next_{0};
  int helpers_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

// Never destroyed: its workers just stay blocked until the process ends.
ThreadPool &thread_pool() {
  static ThreadPool *pool = new ThreadPool;
  return *pool;
}

template <typename Fn>
void parallel_chunks(int64_t chunks, const Fn &fn) {
  thread_pool().run(chunks, cpu_threads(), std::function<void(int64_t)>(std::cref(fn)));
}

// ---- dtype access ----------------------------------------------------------

template <typename T>
float load(const void *p, int64_t i) {
  return math::to_float(static_cast<const T *>(p)[i]);
}

// `a` where `first` is set, else `b`: a select on the bits, so a kept
// element keeps its exact bits (a NaN its payload).
inline float pick(bool first, float a, float b) { return first ? a : b; }
inline math::half_t pick(bool first, math::half_t a, math::half_t b) { return math::half_t{first ? a.bits : b.bits}; }
inline math::bf16_t pick(bool first, math::bf16_t a, math::bf16_t b) { return math::bf16_t{first ? a.bits : b.bits}; }

// ---- one tensor ------------------------------------------------------------

// What a read-only pass over a chunk collects.
struct Partial {
  double u_sumsq = 0, p_sumsq = 0;   // max_unorm
  float max1 = 0, max2 = 0;          // per-tensor 8-bit: max |s_new|, max |b_new|
};

// max |s[k]| with NaN kept (as math::nan_max), in a loop that vectorises:
// magnitudes compare as their bit patterns, and every NaN pattern is above
// infinity's. (Which NaN, when several, may differ from nan_max's; a NaN
// absmax reads back as NaN either way.)
float abs_max(const float *s, int64_t len) {
  uint32_t m = 0;
  for (int64_t k = 0; k < len; ++k) {
    const uint32_t b = math::float_bits(s[k]) & 0x7fffffffu;
    m = b > m ? b : m;
  }
  return math::bits_float(m);
}

// The 8-bit loops of one block: codes to floats, floats to codes with the
// dynamic maps' coder. Compiled for baseline x86-64 and for AVX2 like the
// update loop (same IEEE operations, so the same bits).
[[gnu::always_inline]] inline void decode_loop(const float *__restrict qmap, const uint8_t *__restrict codes, float a,
                                               float *__restrict out, int64_t len) {
  for (int64_t k = 0; k < len; ++k) out[k] = math::dequantize(qmap, codes[k], a);
}
[[gnu::always_inline]] inline void encode_loop(const math::DynamicCoder &coder, const float *__restrict s, float a,
                                               uint8_t *__restrict codes, int64_t len) {
  if (!(a > 0.0f)) {  // math::quantize_scaled's zero scale, outside the loop
    for (int64_t k = 0; k < len; ++k) codes[k] = uint8_t(coder.zero);
    return;
  }
  const math::DynamicCoder d = coder;  // a local copy: stores to codes cannot alias it
  for (int64_t k = 0; k < len; ++k) codes[k] = math::dynamic_code(d, s[k] / a);
}
void decode_base(const float *qmap, const uint8_t *codes, float a, float *out, int64_t len) {
  decode_loop(qmap, codes, a, out, len);
}
void encode_base(const math::DynamicCoder &coder, const float *s, float a, uint8_t *codes, int64_t len) {
  encode_loop(coder, s, a, codes, len);
}
#if QRMS_CPU_AVX2
[[gnu::target("avx2")]] void decode_avx2(const float *qmap, const uint8_t *codes, float a, float *out, int64_t len) {
  decode_loop(qmap, codes, a, out, len);
}
[[gnu::target("avx2")]] void encode_avx2(const math::DynamicCoder &coder, const float *s, float a, uint8_t *codes,
                                         int64_t len) {
  encode_loop(coder, s, a, codes, len);
}
#endif

void decode(const float *qmap, const uint8_t *codes, float a, float *out, int64_t len) {
#if QRMS_CPU_AVX2
  if (g_simd.load(std::memory_order_relaxed) == CpuSimd::Avx2) return decode_avx2(qmap, codes, a, out, len);
#endif
  decode_base(qmap, codes, a, out, len);
}
void encode(const math::DynamicCoder &coder, const float *s, float a, uint8_t *codes, int64_t len) {
#if QRMS_CPU_AVX2
  if (g_simd.load(std::memory_order_relaxed) == CpuSimd::Avx2) return encode_avx2(coder, s, a, codes, len);
#endif
  encode_base(coder, s, a, codes, len);
}

// 4-bit state of elements [i0, i0 + len) of a tensor (i0 a multiple of 128):
// floats from codes, and codes (with one absmax per 128 elements) from floats.
// Decoding walks a block's bytes, two values per byte, against a local copy
// of the map (which stores to out cannot alias).
[[gnu::always_inline]] inline void decode4_loop(const float *map, const uint8_t *codes, const float *absmax, int64_t i0,
                                                int64_t len, float *__restrict out) {
  math::Map4 m;
  for (int c = 0; c < math::kCodes4; ++c) m.v[c] = map[c];
  for (int64_t off = 0; off < len; off += math::kBlockSize4) {
    const int64_t sub = std::min(math::kBlockSize4, len - off);
    const float a = absmax[(i0 + off) / math::kBlockSize4];
    const uint8_t *b = codes + (i0 + off) / 2;
    float *o = out + off;
    for (int64_t k = 0; k < sub / 2; ++k) {
      o[2 * k] = math::dequantize(m.v, uint8_t(b[k] & 15), a);
      o[2 * k + 1] = math::dequantize(m.v, uint8_t(b[k] >> 4), a);
    }
    if (sub % 2) o[sub - 1] = math::dequantize(m.v, uint8_t(b[sub / 2] & 15), a);
  }
}
void decode4_base(const float *map, const uint8_t *codes, const float *absmax, int64_t i0, int64_t len, float *out) {
  decode4_loop(map, codes, absmax, i0, len, out);
}
#if QRMS_CPU_AVX2
[[gnu::target("avx2")]] void decode4_avx2(const float *map, const uint8_t *codes, const float *absmax, int64_t i0,
                                          int64_t len, float *out) {
  decode4_loop(map, codes, absmax, i0, len, out);
}
#endif
void decode4(const float *map, const uint8_t *codes, const float *absmax, int64_t i0, int64_t len, float *out) {
#if QRMS_CPU_AVX2
  if (g_simd.load(std::memory_order_relaxed) == CpuSimd::Avx2) return decode4_avx2(map, codes, absmax, i0, len, out);
#endif
  decode4_base(map, codes, absmax, i0, len, out);
}
// One block's codes into q[] in a loop that vectorises (the coder's 15
// compares), then packed two per byte; an odd tail pads with code 0.
[[gnu::always_inline]] inline void encode4_loop(const math::Coder4 &coder, const float *s, int64_t i0, int64_t len,
                                                uint8_t *codes, float *absmax) {
  const math::Coder4 c = coder;  // a local copy: stores to codes cannot alias it
  uint8_t q[math::kBlockSize4 + 1];
  for (int64_t off = 0; off < len; off += math::kBlockSize4) {
    const int64_t sub = std::min(math::kBlockSize4, len - off);
    const float a = abs_max(s + off, sub);
    absmax[(i0 + off) / math::kBlockSize4] = a;
    for (int64_t k = 0; k < sub; ++k) q[k] = math::quantize4(c, s[off + k], a);
    q[sub] = 0;
    for (int64_t k = 0; k < sub; k += 2) codes[(i0 + off + k) / 2] = math::pack4(q[k], q[k + 1]);
  }
}
void encode4_base(const math::Coder4 &c, const float *s, int64_t i0, int64_t len, uint8_t *codes, float *absmax) {
  encode4_loop(c, s, i0, len, codes, absmax);
}
#if QRMS_CPU_AVX2
[[gnu::target("avx2")]] void encode4_avx2(const math::Coder4 &c, const float *s, int64_t i0, int64_t len,
                                          uint8_t *codes, float *absmax) {
  encode4_loop(c, s, i0, len, codes, absmax);
}
#endif
void encode4(const math::Coder4 &c, const float *s, int64_t i0, int64_t len, uint8_t *codes, float *absmax) {
#if QRMS_CPU_AVX2
  if (g_simd.load(std::memory_order_relaxed) == CpuSimd::Avx2) return encode4_avx2(c, s, i0, len, codes, absmax);
#endif
  encode4_base(c, s, i0, len, codes, absmax);
}

// State of one tensor of a given kind, read and written a block at a time.
// 32-bit state is updated where it lies; 8-bit and 4-bit state go through a
// float buffer of one block.
struct StateIO {
  StateKind kind;
  const float *qmap;
  const QuantTable *table;  // its coder for the dynamic maps; nullptr: quantize by binary search
  uint8_t zero;
  const float *map4 = nullptr;             // Blockwise4: this buffer's 16-entry map
  const math::Coder4 *coder4 = nullptr;    // and its coder

  // Where the old state of block `blk` (elements [i0, i0+len)) can be read
  // as floats: the state itself (32-bit) or buf, filled by dequantizing.
  float *load_block(void *state, const float *scale, int64_t blk, int64_t i0, int64_t len, float *buf) const {
    if (kind == StateKind::Float32) return static_cast<float *>(state) + i0;
    if (kind == StateKind::Blockwise4) {
      decode4(map4, static_cast<const uint8_t *>(state), scale, i0, len, buf);
      return buf;
    }
    const float a = kind == StateKind::Blockwise8 ? scale[blk] : scale[0];
    decode(qmap, static_cast<const uint8_t *>(state) + i0, a, buf, len);
    return buf;
  }

  // New state s[] of the block back to memory: nothing to do for 32-bit
  // (s is the state); 8-bit is quantized (per-tensor: scale[1] is new_max1).
  void store_block(void *state, float *scale, int64_t blk, int64_t i0, int64_t len, const float *s) const {
    if (kind == StateKind::Float32) return;
    if (kind == StateKind::Blockwise4) return encode4(*coder4, s, i0, len, static_cast<uint8_t *>(state), scale);
    float a;
    if (kind == StateKind::Blockwise8) {
      a = abs_max(s, len);
      scale[blk] = a;
    } else {
      a = scale[1];
    }
    uint8_t *codes = static_cast<uint8_t *>(state) + i0;
    if (table && table->coder()) {
      encode(*table->coder(), s, a, codes, len);
    } else if (table) {
      for (int64_t k = 0; k < len; ++k) codes[k] = math::quantize_scaled(qmap, s[k], a, zero, *table);
    } else {
      for (int64_t k = 0; k < len; ++k) codes[k] = math::quantize_scaled(qmap, s[k], a, zero);
    }
  }
};

// The writing pass over one block, in one loop the compiler vectorises:
// SPEC 3 for every element, the new parameter and the new state s (and b
// with momentum) stored in place. With skip_zeros, skipped elements keep
// their parameter bits (the flag is a template argument: a runtime flag in
// the select keeps GCC from vectorising the loop).
// Stochastic rounding's key for the elements of one block (p[0] is element
// `first` of its tensor); `on` false: round to nearest.
struct Rounding {
  bool on = false;
  uint64_t seed = 0;
  int64_t step = 0;
  int64_t first = 0;
};

template <typename T, bool Stochastic>
[[gnu::always_inline]] inline T round_param(float v, const math::Hyper &h, const Rounding &r, int64_t k) {
  if constexpr (Stochastic)
    return math::round_stochastic<T>(v, math::rounding_bits(r.seed, r.step, h.stream, r.first + k));
  else
    return math::from_float<T>(v);
}

template <typename T, bool Momentum, bool SkipZeros, bool Stochastic>
[[gnu::always_inline]] inline void update_loop(const math::Hyper &hp, T *__restrict p, const T *__restrict g,
                                               float *__restrict s, float *__restrict b, int64_t len, float unscale,
                                               float gscale, float uscale, const Rounding &rnd) {
  const math::Hyper h = hp;  // a local copy: stores to float arrays cannot alias it
  const Rounding r = rnd;
  for (int64_t k = 0; k < len; ++k) {
    const T old = p[k];
    const float pk = math::to_float(old), gk = math::grad_in(math::to_float(g[k]), unscale);
    float sk = s[k], bk = Momentum ? b[k] : 0.0f, uk;
    math::rms_element(h, pk, gk, gscale, sk, bk, uk);
    s[k] = sk;
    if (Momentum) b[k] = bk;
    p[k] = pick(SkipZeros && math::skipped(h, gk), old, round_param<T, Stochastic>(math::apply_update(pk, h.lr, uscale, uk), h, r, k));
  }
}

// The loop compiled twice: for baseline x86-64 (SSE2) and, on x86-64, for
// AVX2 (8 lanes instead of 4; picked at run time when the CPU has it). Both
// run the same IEEE float operations (no FMA: -ffp-contract=off), so they
// give the same bits; the tests run both.
template <typename T, bool Momentum, bool SkipZeros, bool Stochastic>
void update_block_base(const math::Hyper &h, T *p, const T *g, float *s, float *b, int64_t len, float unscale,
                       float gscale, float uscale, const Rounding &rnd) {
  update_loop<T, Momentum, SkipZeros, Stochastic>(h, p, g, s, b, len, unscale, gscale, uscale, rnd);
}

#if QRMS_CPU_AVX2
template <typename T, bool Momentum, bool SkipZeros, bool Stochastic>
[[gnu::target("avx2")]] void update_block_avx2(const math::Hyper &h, T *p, const T *g, float *s, float *b,
                                               int64_t len, float unscale, float gscale, float uscale,
                                               const Rounding &rnd) {
  update_loop<T, Momentum, SkipZeros, Stochastic>(h, p, g, s, b, len, unscale, gscale, uscale, rnd);
}
#endif

// The loop for one combination of the runtime flags, as a template argument
// each (stochastic rounding only for 16-bit params).
template <typename T, bool Avx2, bool... Flags>
auto pick_update_block() {
#if QRMS_CPU_AVX2
  if constexpr (Avx2) return &update_block_avx2<T, Flags...>;
  else
#endif
    return &update_block_base<T, Flags...>;
}

template <typename T, bool Avx2>
auto pick_update_block(bool mom, bool skip, bool stochastic) {
  if constexpr (!std::is_same_v<T, float>) {
    if (stochastic)
      return mom ? (skip ? pick_update_block<T, Avx2, true, true, true>() : pick_update_block<T, Avx2, true, false, true>())
                 : (skip ? pick_update_block<T, Avx2, false, true, true>() : pick_update_block<T, Avx2, false, false, true>());
  }
  return mom ? (skip ? pick_update_block<T, Avx2, true, true, false>() : pick_update_block<T, Avx2, true, false, false>())
             : (skip ? pick_update_block<T, Avx2, false, true, false>() : pick_update_block<T, Avx2, false, false, false>());
}

#if QRMS_CPU_AVX2
// float16 parameters on the AVX2 path convert with F16C, 8 values per
// instruction, where the portable to_float / to_half cost a dozen
// instructions each: a tile of p and g to floats, the float loop, and back.
// vcvtph2ps is exact; it returns a signalling NaN quieted, which the
// portable loop's arithmetic (every use of p and g) does too. vcvtps2ph
// rounds to nearest even as to_half does, but keeps a NaN's payload, so NaN
// lanes are replaced by to_half's quiet NaN of the same sign.
[[gnu::target("avx2,f16c")]] void halves_to_floats(const math::half_t *in, float *out, int64_t n) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(out + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(in + k))));
  for (; k < n; ++k) out[k] = math::to_float(in[k]);
}

[[gnu::target("avx2,f16c")]] void floats_to_halves(const float *in, math::half_t *out, int64_t n) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256 v = _mm256_loadu_ps(in + k);
    const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i nan32 = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m128i nan16 = _mm_packs_epi32(_mm256_castsi256_si128(nan32), _mm256_extracti128_si256(nan32, 1));
    const __m128i quiet = _mm_or_si128(_mm_and_si128(h, _mm_set1_epi16(int16_t(0x8000))), _mm_set1_epi16(0x7e00));
    _mm_storeu_si128(reinterpret_cast<__m128i *>(out + k), _mm_blendv_epi8(h, quiet, nan16));
  }
  for (; k < n; ++k) out[k] = math::to_half(in[k]);
}

template <bool Momentum>
[[gnu::target("avx2,f16c")]] void update_block_f16c(const math::Hyper &h, math::half_t *p, const math::half_t *g,
                                                    float *s, float *b, int64_t len, float unscale, float gscale,
                                                    float uscale, const Rounding &rnd) {
  constexpr int64_t kTile = 64;
  float pf[kTile], gf[kTile];
  for (int64_t i = 0; i < len; i += kTile) {
    const int64_t n = std::min(kTile, len - i);
    halves_to_floats(p + i, pf, n);
    halves_to_floats(g + i, gf, n);
    update_loop<float, Momentum, false, false>(h, pf, gf, s + i, Momentum ? b + i : nullptr, n, unscale, gscale,
                                               uscale, rnd);
    floats_to_halves(pf, p + i, n);
  }
}
#endif

template <typename T>
void update_block(const math::Hyper &h, T *p, const T *g, float *s, float *b, int64_t len, float unscale,
                  float gscale, float uscale, const Rounding &rnd) {
  const bool mom = h.momentum > 0.0f, skip = h.skip_zeros != 0;
  auto run = pick_update_block<T, false>(mom, skip, rnd.on);
#if QRMS_CPU_AVX2
  if (g_simd.load(std::memory_order_relaxed) == CpuSimd::Avx2) {
    run = pick_update_block<T, true>(mom, skip, rnd.on);
    // skip_zeros (which keeps a skipped parameter's bits) and stochastic
    // rounding keep the portable loop.
    if constexpr (std::is_same_v<T, math::half_t>)
      if (!skip && !rnd.on) run = mom ? &update_block_f16c<true> : &update_block_f16c<false>;
  }
#endif
  run(h, p, g, s, b, len, unscale, gscale, uscale, rnd);
}

// Runs SPEC 3 over the blocks of one chunk; io reads and writes the square
// average, bio the momentum buffer (their maps may differ). With write == false it only
// accumulates `acc` (norms for max_unorm, maxima for per-tensor 8-bit) and
// changes nothing; with write == true it stores params and state.
template <typename T>
void walk_chunk(const TensorUpdate &t, const StateIO &io, const StateIO &bio, int64_t chunk, bool write, float unscale,
                float gscale, float uscale, Rounding rnd, Partial &acc) {
  const math::Hyper h = t.hp;
  const bool mom = h.momentum > 0.0f;
  const bool norms = h.max_unorm > 0.0f;  // the read-only pass also sums squares
  const int64_t nblocks = num_blocks(t.n);
  const int64_t b0 = chunk * kChunkBlocks, b1 = std::min(nblocks, b0 + kChunkBlocks);
  T *param = static_cast<T *>(t.param);
  const T *grad = static_cast<const T *>(t.grad);
  if (write && io.kind == StateKind::Float32) {  // contiguous state: the whole chunk in one loop
    const int64_t i0 = b0 * kBlockSize, len = std::min(b1 * kBlockSize, t.n) - i0;
    float *s = static_cast<float *>(t.state1) + i0, *b = mom ? static_cast<float *>(t.state2) + i0 : nullptr;
    rnd.first = i0;
    update_block<T>(h, param + i0, grad + i0, s, b, len, unscale, gscale, uscale, rnd);
    return;
  }
  float sbuf[kBlockSize], bbuf[kBlockSize];
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t i0 = blk * kBlockSize, len = std::min(kBlockSize, t.n - i0);
    float *s = io.load_block(t.state1, t.scale1, blk, i0, len, sbuf);
    float *b = mom ? bio.load_block(t.state2, t.scale2, blk, i0, len, bbuf) : nullptr;
    if (write) {
      rnd.first = i0;
      update_block<T>(h, param + i0, grad + i0, s, b, len, unscale, gscale, uscale, rnd);
      io.store_block(t.state1, t.scale1, blk, i0, len, s);
      if (mom) bio.store_block(t.state2, t.scale2, blk, i0, len, b);
      continue;
    }
    // Read-only pass: the figures a tensor needs before its writing pass.
    // The element math into buffers (a loop that vectorises), then the sums
    // in element order and the maxima.
    float p_in[kBlockSize], s_new[kBlockSize], b_new[kBlockSize], u[kBlockSize];
    for (int64_t k = 0; k < len; ++k) {
      p_in[k] = load<T>(param, i0 + k);
      s_new[k] = s[k];
      b_new[k] = mom ? b[k] : 0.0f;
      math::rms_element(h, p_in[k], math::grad_in(load<T>(grad, i0 + k), unscale), gscale, s_new[k], b_new[k], u[k]);
    }
    if (norms) {
      float block_u = 0, block_p = 0;
      for (int64_t k = 0; k < len; ++k) {
        block_u += u[k] * u[k];
        block_p += p_in[k] * p_in[k];
      }
      acc.u_sumsq += block_u;
      acc.p_sumsq += block_p;
    }
    acc.max1 = math::nan_max(acc.max1, abs_max(s_new, len));
    if (mom) acc.max2 = math::nan_max(acc.max2, abs_max(b_new, len));
  }
}

// One chunk of one tensor: the unit of a multi-tensor pass.
struct ChunkRef {
  size_t tensor;
  int64_t chunk;
};

int64_t chunks_of(int64_t n) { return (num_blocks(n) + kChunkBlocks - 1) / kChunkBlocks; }

// All tensors of one (kind, dtype) group in two parallel regions, as the
// CUDA backend does in two launches: first the read-only pass of the tensors
// that need whole-tensor figures before writing (max_unorm norms, per-tensor
// 8-bit maxima), then the writing pass of every tensor.
template <typename T>
void update_group(StateKind kind, const TensorUpdate *tensors, size_t count, const float *qmap,
                  const StepControl &ctl) {
  if (ctl.skip && *ctl.skip) return;
  const float unscale = ctl.grad_unscale ? *ctl.grad_unscale : 1.0f;
  const float *bmap = ctl.momentum_qmap ? ctl.momentum_qmap : qmap;
  const bool bits8 = kind == StateKind::Blockwise8 || kind == StateKind::Tensor8;
  const std::shared_ptr<const QuantTable> table = bits8 ? QuantTable::of(qmap) : nullptr;
  const std::shared_ptr<const QuantTable> btable = bits8 ? QuantTable::of(bmap) : nullptr;
  // io: the square average's; bio: the momentum buffer's (8-bit: bmap;
  // 4-bit: the fixed momentum map).
  static const math::Map4 sq4 = math::square_map4(), mom4 = math::momentum_map4();
  static const math::Coder4 sq4c = math::coder4(sq4), mom4c = math::coder4(mom4);
  const StateIO io{kind, qmap, table.get(), bits8 ? math::zero_code(qmap) : uint8_t(0), sq4.v, &sq4c};
  const StateIO bio{kind, bmap, btable.get(), bits8 ? math::zero_code(bmap) : uint8_t(0), mom4.v, &mom4c};
  const bool tensor8 = kind == StateKind::Tensor8;
  auto gscale = [&](size_t i) { return tensors[i].gnorm_scale ? *tensors[i].gnorm_scale : 1.0f; };

  std::vector<ChunkRef> all, pre;
  for (size_t i = 0; i < count; ++i) {
    const bool needs_pre = tensors[i].hp.max_unorm > 0.0f || tensor8;
    for (int64_t c = 0, e = chunks_of(tensors[i].n); c < e; ++c) {
      all.push_back({i, c});
      if (needs_pre) pre.push_back({i, c});
    }
  }

  if (ctl.pass != Pass::Write) {
    std::vector<Partial> parts(pre.size());
    parallel_chunks(static_cast<int64_t>(pre.size()), [&](int64_t k) {
      const ChunkRef r = pre[static_cast<size_t>(k)];
      walk_chunk<T>(tensors[r.tensor], io, bio, r.chunk, false, unscale, gscale(r.tensor), 1.0f, Rounding{},
                    parts[static_cast<size_t>(k)]);
    });
    // Combine each tensor's partials in chunk order (thread-count independent);
    // a tensor without chunks (an empty shard) gets zeros.
    std::vector<Partial> totals(count);
    for (size_t k = 0; k < pre.size(); ++k) {
      Partial &total = totals[pre[k].tensor];
      total.u_sumsq += parts[k].u_sumsq;
      total.p_sumsq += parts[k].p_sumsq;
      total.max1 = math::nan_max(total.max1, parts[k].max1);
      total.max2 = math::nan_max(total.max2, parts[k].max2);
    }
    for (size_t i = 0; i < count; ++i) {
      const TensorUpdate &t = tensors[i];
      if (t.hp.max_unorm > 0.0f) {
        t.unorm[0] = static_cast<float>(totals[i].u_sumsq);
        t.unorm[1] = static_cast<float>(totals[i].p_sumsq);
      }
      if (tensor8) {
        (t.new_max ? t.new_max[0] : t.scale1[1]) = totals[i].max1;
        if (t.scale2) (t.new_max ? t.new_max[1] : t.scale2[1]) = totals[i].max2;
      }
    }
  }
  if (ctl.pass == Pass::Read) return;

  std::vector<float> uscale(count, 1.0f);
  for (size_t i = 0; i < count; ++i) {
    const TensorUpdate &t = tensors[i];
    if (t.hp.max_unorm > 0.0f) uscale[i] = math::update_scale(t.hp.max_unorm, t.hp.eps, t.unorm[0], t.unorm[1]);
    if (tensor8 && t.new_max) {
      t.scale1[1] = t.new_max[0];
      if (t.scale2) t.scale2[1] = t.new_max[1];
    }
  }

  parallel_chunks(static_cast<int64_t>(all.size()), [&](int64_t k) {
    const ChunkRef r = all[static_cast<size_t>(k)];
    const TensorUpdate &t = tensors[r.tensor];
    // The key's step is the one this pass takes (counted below).
    const Rounding rnd{ctl.stochastic_round, ctl.seed, t.step ? *t.step + 1 : 0, 0};
    Partial unused;
    walk_chunk<T>(t, io, bio, r.chunk, true, unscale, gscale(r.tensor), uscale[r.tensor], rnd, unused);
  });
  for (size_t i = 0; i < count; ++i)
    if (tensors[i].step) ++*tensors[i].step;

  if (tensor8) {  // new_max1 becomes max1 for the next step
    for (size_t i = 0; i < count; ++i) {
      tensors[i].scale1[0] = tensors[i].scale1[1];
      if (tensors[i].scale2) tensors[i].scale2[0] = tensors[i].scale2[1];
    }
  }
}

template <typename T>
float grad_sumsq(const void *grad, int64_t n, float unscale) {
  const int64_t chunk = kChunkBlocks * kBlockSize;
  const int64_t chunks = (n + chunk - 1) / chunk;
  std::vector<double> parts(static_cast<size_t>(chunks), 0.0);
  parallel_chunks(chunks, [&](int64_t c) {
    double acc = 0;
    for (int64_t i = c * chunk, e = std::min(n, (c + 1) * chunk); i < e; ++i) {
      const float g = math::grad_in(load<T>(grad, i), unscale);
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
    if (!p) throw OutOfMemoryError("out of host memory allocating " + core::counted(bytes, "byte") + " of state");
    return p;
  }
  void free(void *p) noexcept override { std::free(p); }
  void to_host(void *dst, const void *src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void from_host(void *dst, const void *src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void check_pointer(const void *p, const char *what) override {
    const int dev = cuda_pointer_device(p);
    if (dev >= 0)
      throw DeviceError(std::string(what) + " is memory of CUDA device " + std::to_string(dev) +
                        ", but the optimizer runs on the CPU");
  }

  void zero(void *p, size_t bytes, void *) override { std::memset(p, 0, bytes); }

  void update(StateKind kind, Dtype dtype, const TensorUpdate *tensors, size_t count, const float *qmap,
              const StepControl &ctl, void *) override {
    dispatch_dtype(dtype, [&](auto tag) { update_group<decltype(tag)>(kind, tensors, count, qmap, ctl); });
  }

  void clip(Dtype dtype, const ClipJob *jobs, size_t count, const StepControl &ctl, void *) override {
    if (ctl.skip && *ctl.skip) return;
    const float unscale = ctl.grad_unscale ? *ctl.grad_unscale : 1.0f;
    dispatch_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      for (size_t i = 0; i < count; ++i) {
        const ClipJob &j = jobs[i];
        float q = 0.0f;
        if (ctl.pass != Pass::Write) q = grad_sumsq<T>(j.grad, j.n, unscale);
        if (ctl.pass == Pass::Read) {
          *j.sumsq = q;
          continue;
        }
        if (ctl.pass == Pass::Write) q = *j.sumsq;
        const int64_t step = *j.step + 1;
        if (j.advance) *j.step = step;
        math::record_gnorm(j.gnorm_vec, step, q);
        float sorted[math::kGnormHistory];
        std::copy(j.gnorm_vec, j.gnorm_vec + math::kGnormHistory, sorted);
        std::sort(sorted, sorted + math::kGnormHistory, math::gnorm_less);
        *j.gnorm_scale = math::clip_scale(j.gnorm_vec, sorted, step, j.percentile);
      }
    });
  }

  void check_finite(Dtype dtype, const GradRef *grads, size_t count, const float *grad_unscale, int32_t *found,
                    void *) override {
    const float unscale = grad_unscale ? *grad_unscale : 1.0f;
    dispatch_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      for (size_t i = 0; i < count && !*found; ++i)
        for (int64_t k = 0; k < grads[i].n; ++k)
          if (!std::isfinite(math::grad_in(load<T>(grads[i].grad, k), unscale))) {
            *found = 1;
            break;
          }
    });
  }

  void slots(SlotOp op, float *v, int64_t n, int32_t *flag, void *) override {
    switch (op) {
      case SlotOp::EncodeMax:
        for (int64_t i = 0; i < n; ++i) {
          v[n + i] = std::isnan(v[i]) ? 1.0f : 0.0f;
          if (std::isnan(v[i])) v[i] = 0.0f;
        }
        break;
      case SlotOp::DecodeMax:
        for (int64_t i = 0; i < n; ++i)
          if (v[n + i] > 0.0f) v[i] = std::numeric_limits<float>::quiet_NaN();
        break;
      case SlotOp::FromFlag: v[0] = *flag != 0 ? 1.0f : 0.0f; break;
      case SlotOp::ToFlag: *flag = v[0] > 0.0f ? 1 : 0; break;
    }
  }

  void quantize_blockwise(const float *qmap, const float *in, uint8_t *codes, float *absmax, int64_t n,
                          int64_t blocksize, void *) override {
    const std::shared_ptr<const QuantTable> table = QuantTable::of(qmap);
    const StateIO io{StateKind::Blockwise8, qmap, table.get(), math::zero_code(qmap)};
    const int64_t blocks = (n + blocksize - 1) / blocksize;
    parallel_chunks(blocks, [&](int64_t blk) {
      const int64_t i0 = blk * blocksize;
      io.store_block(codes, absmax, blk, i0, std::min(n - i0, blocksize), in + i0);
    });
  }

  void dequantize_blockwise(const float *qmap, const uint8_t *codes, const float *absmax, float *out, int64_t n,
                            int64_t blocksize, void *) override {
    for (int64_t i = 0; i < n; ++i) out[i] = math::dequantize(qmap, codes[i], absmax[i / blocksize]);
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

CpuSimd set_cpu_simd(CpuSimd want) {
  const CpuSimd best = best_simd();
  const CpuSimd got = want == CpuSimd::Avx2 && best != CpuSimd::Avx2 ? CpuSimd::Baseline : want;
  g_simd.store(got);
  return got;
}

void cpu_halves_to_floats(const math::half_t *in, float *out, int64_t n) {
#if QRMS_CPU_AVX2
  if (g_simd.load() == CpuSimd::Avx2) return halves_to_floats(in, out, n);
#endif
  for (int64_t k = 0; k < n; ++k) out[k] = math::to_float(in[k]);
}

void cpu_floats_to_halves(const float *in, math::half_t *out, int64_t n) {
#if QRMS_CPU_AVX2
  if (g_simd.load() == CpuSimd::Avx2) return floats_to_halves(in, out, n);
#endif
  for (int64_t k = 0; k < n; ++k) out[k] = math::to_half(in[k]);
}

void cpu_encode(const math::DynamicCoder &coder, const float *s, float a, uint8_t *codes, int64_t len) {
  encode(coder, s, a, codes, len);
}

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
