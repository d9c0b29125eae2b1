// The per-element math of qrmsprop (SPEC section 3 and 4), written once and
// compiled for both backends: the CPU backend calls these functions from its
// loops, the CUDA kernels from theirs. Every function is plain float32
// arithmetic with no fused multiply-add on either side (the CUDA code is
// built with -fmad=false), so both backends produce the same bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define QRMS_HD __host__ __device__ __forceinline__
#else
#define QRMS_HD inline
#endif

namespace qrms {
namespace math {

// Storage types of the 16-bit dtypes; arithmetic is always done in float.
struct half_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

constexpr int64_t kBlockSize = 256;   // 8-bit block-wise quantization block
constexpr int kGnormHistory = 100;   // percentile clipping history length

QRMS_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

QRMS_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// ---- conversions ---------------------------------------------------------

QRMS_HD float to_float(float x) { return x; }

QRMS_HD float to_float(bf16_t x) { return bits_float(uint32_t(x.bits) << 16); }

// IEEE half -> float, exact. Selects instead of branches so that CPU loops
// over half tensors vectorise: the exponent is rebased by 112; infinity and
// NaN get the rest of the way to 255; a subnormal half m * 2^-24 is built as
// the normal float 2^-14 + m * 2^-24 minus 2^-14 (exact, no float subnormal).
QRMS_HD float to_float(half_t x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t magnitude = uint32_t(x.bits & 0x7fffu) << 13;
  const uint32_t exp = magnitude & 0x0f800000u;
  uint32_t o = magnitude + (112u << 23);
  o = exp == 0x0f800000u ? o + (112u << 23) : o;                       // inf / nan
  const float f = exp == 0 ? bits_float(o + (1u << 23)) - bits_float(113u << 23) : bits_float(o);
  return bits_float(float_bits(f) | sign);
}

// Round-to-nearest-even float -> bfloat16; NaN stays a (quiet) NaN.
QRMS_HD bf16_t to_bf16(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  return bf16_t{uint16_t((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded)};
}

// Round-to-nearest-even float -> IEEE half, with subnormals, overflow to inf,
// NaN to a quiet NaN; selects instead of branches (see to_float). Normal
// results round by adding a bias to the bits; subnormal ones by a float
// addition of 0.5, which leaves the 10 half bits at the bottom of the
// mantissa, rounded to nearest even by the addition itself.
QRMS_HD half_t to_half(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  const uint32_t special = a > 0x7f800000u ? 0x7e00u : 0x7c00u;         // nan, or inf (also on overflow)
  const uint32_t subnormal = float_bits(bits_float(a) + 0.5f) - 0x3f000000u;
  const uint32_t normal = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13;   // exponent -112, rounding bias
  const uint32_t h = a >= 0x47800000u ? special : (a < 0x38800000u ? subnormal : normal);
  return half_t{uint16_t(sign | h)};
}

template <typename T> QRMS_HD T from_float(float f);
template <> QRMS_HD float from_float<float>(float f) { return f; }
template <> QRMS_HD bf16_t from_float<bf16_t>(float f) { return to_bf16(f); }
template <> QRMS_HD half_t from_float<half_t>(float f) { return to_half(f); }

// ---- stochastic rounding -------------------------------------------------

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
// 3", SC 2011; the generator of cuRAND and Random123): 4 counter words and
// 2 key words in, 4 random words out, no state. Products in 64-bit integers
// on both backends, so the CPU and the GPU give the same bits.
struct Philox4 {
  uint32_t v[4];
};
QRMS_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c0, p1 = uint64_t(0xCD9E8D57u) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The random word for element i of a parameter at optimizer step `step`:
// key = seed, counter = (i, stream, step). Depends on nothing else (not the
// thread count, chunking or backend), so a rerun gives the same bits.
QRMS_HD uint32_t rounding_bits(uint64_t seed, int64_t step, uint32_t stream, int64_t i) {
  const uint64_t ui = uint64_t(i), us = uint64_t(step);
  return philox4x32_10(uint32_t(ui), uint32_t(ui >> 32) ^ (stream << 16), uint32_t(us), uint32_t(us >> 32),
                       uint32_t(seed), uint32_t(seed >> 32))
      .v[0];
}

// Unbiased stochastic rounding of f to a 16-bit dtype with the random word
// r: f rounds away from zero to the next representable value with
// probability (|f| - lo) / ulp, where lo is f truncated toward zero, else to
// lo; so E[result] = f. The probability is exact (the dropped bits against
// as many bits of r) except for float16 subnormals, where it is exact to
// 2^-24 of an ulp. NaN, infinities and magnitudes at or beyond the largest
// finite value round to nearest (never to an infinity by chance).
template <typename T> QRMS_HD T round_stochastic(float f, uint32_t r);
template <> QRMS_HD float round_stochastic<float>(float f, uint32_t) { return f; }
template <> QRMS_HD bf16_t round_stochastic<bf16_t>(float f, uint32_t r) {
  const uint32_t u = float_bits(f), a = u & 0x7fffffffu;
  if (!(a < 0x7f7f0000u)) return to_bf16(f);
  const uint32_t up = (a & 0xffffu) > (r >> 16) ? 1u : 0u;
  return bf16_t{uint16_t(((u >> 16) & 0x8000u) | ((a >> 16) + up))};
}
template <> QRMS_HD half_t round_stochastic<half_t>(float f, uint32_t r) {
  const uint32_t u = float_bits(f), a = u & 0x7fffffffu;
  if (!(a < 0x477fe000u)) return to_half(f);  // 65504, the largest finite half
  uint32_t h;
  if (a >= 0x38800000u) {  // normal half: 13 dropped bits; +1 carries into the exponent
    h = uint32_t(to_half(bits_float(a & ~0x1fffu)).bits) + ((a & 0x1fffu) > (r >> 19) ? 1u : 0u);
  } else {  // subnormal half: multiples of 2^-24
    const float q = bits_float(a) * 16777216.0f;
    const float whole = floorf(q);
    h = uint32_t(whole) + (q - whole > float(r >> 8) * 5.9604644775390625e-8f ? 1u : 0u);
  }
  return half_t{uint16_t(((u >> 16) & 0x8000u) | h)};
}

// ---- the RMSprop update ----------------------------------------------------

// Per-tensor hyper-parameters as the kernels read them.
struct Hyper {
  float lr, alpha, eps, weight_decay, momentum, max_unorm;
  uint16_t skip_zeros;
  uint16_t stream;  // stochastic rounding: the parameter's index (mod 2^16), so tensors draw different bits
};

// The gradient as the update sees it: times the caller's unscale factor
// (loss scaling; 1 when none is set, which leaves every value as it is).
QRMS_HD float grad_in(float graw, float unscale) { return graw * unscale; }

// Whether skip_zeros leaves this element untouched.
QRMS_HD bool skipped(const Hyper &h, float graw) { return (h.skip_zeros != 0) & (graw == 0.0f); }

// One element of SPEC 3. `s` and `b` hold the old square average and
// momentum on entry and the new ones on return; `u` gets the unscaled
// update. Returns false when skip_zeros leaves the element untouched (then
// s and b keep their values and u is 0). Written with selects rather than
// branches so that the CPU loop over a block vectorises; every operation is
// the same float32 operation either way.
QRMS_HD bool rms_element(const Hyper &h, float p, float graw, float gnorm_scale, float &s, float &b,
                         float &u) {
  const bool skip = skipped(h, graw);
  float g = graw * gnorm_scale;
  g = h.weight_decay > 0.0f ? g + h.weight_decay * p : g;
  const float s_new = h.alpha * s + (1.0f - h.alpha) * (g * g);
  float u_new = g / (sqrtf(s_new) + h.eps);
  const float b_new = h.momentum * b + u_new;
  const bool mom = h.momentum > 0.0f;
  u_new = mom ? b_new : u_new;
  s = skip ? s : s_new;
  b = (skip | !mom) ? b : b_new;
  u = skip ? 0.0f : u_new;
  return !skip;
}

// The new parameter value, before rounding to its dtype.
QRMS_HD float apply_update(float p, float lr, float update_scale, float u) {
  return p - lr * update_scale * u;
}

// max_unorm: the factor applied to this tensor's update, from the sums of
// squares of the unscaled update and of the parameter (SPEC 3).
QRMS_HD float update_scale(float max_unorm, float eps, float u_sumsq, float p_sumsq) {
  if (max_unorm <= 0.0f) return 1.0f;
  const float unorm = sqrtf(u_sumsq);
  const float limit = max_unorm * sqrtf(p_sumsq) + eps;
  return unorm > limit ? limit / unorm : 1.0f;
}

// Percentile clipping (SPEC 3): record this step's squared norm q in the
// 100-entry history and return gnorm_scale. `sorted_hist` is filled with the
// history in ascending order by the caller's sort of `hist` after this
// function's first half (record_gnorm), then clip_scale reads it.
QRMS_HD void record_gnorm(float *hist, int64_t step, float q) {
  if (step == 1) {
    for (int i = 0; i < kGnormHistory; ++i) hist[i] = q;
  } else {
    hist[step % kGnormHistory] = q;
  }
}

// The order of the sorted history: ascending, NaN after every number (as
// torch.sort), so that both backends sort a history holding NaN norms the
// same way and every entry has one rank.
QRMS_HD bool gnorm_less(float a, float b) {
  return a < b || (b != b && a == a);
}

QRMS_HD float clip_scale(const float *hist, const float *sorted_hist, int64_t step, int percentile) {
  const float current = sqrtf(hist[step % kGnormHistory]);
  const float clip = sqrtf(sorted_hist[percentile]);
  return current > clip ? clip / current : 1.0f;
}

// ---- 8-bit quantization ----------------------------------------------------

// Largest index lo < 255 with qmap[lo] <= x, by binary search in the
// ascending 256-entry map (called for qmap[0] < x < qmap[255] only).
struct BinarySearch {
  const float *qmap;
  QRMS_HD int operator()(float x) const {
    int lo = 0, hi = 255;          // invariant: qmap[lo] <= x < qmap[hi]
    while (hi - lo > 1) {
      const int mid = (lo + hi) >> 1;
      if (qmap[mid] <= x) lo = mid; else hi = mid;
    }
    return lo;
  }
};

// Index of the code nearest to x in the ascending 256-entry map, with
// find_low(x) giving the largest index lo < 255 with qmap[lo] <= x (by
// binary search, or the CPU's table): the nearest of qmap[lo] and
// qmap[lo + 1], ties to the lower code; then the sign rule of SPEC 4: a
// nonzero value never gets a code of the other sign or zero's sign flipped;
// it moves one step toward its own sign. The tie is arithmetic on a
// comparison, not a branch (a coin flip for a predictor); this form measured
// fastest on the CPU (docs/performance.md).
// N: the map's size (256; 16 for the 4-bit maps).
template <class FindLow, int N = 256>
QRMS_HD uint8_t nearest_code(const float *qmap, float x, const FindLow &find_low) {
  int c;
  if (!(x > qmap[0])) {          // also catches NaN: store the lowest code
    c = 0;
  } else if (x >= qmap[N - 1]) {
    c = N - 1;
  } else {
    const int lo = find_low(x);
    c = lo + int(!(x - qmap[lo] <= qmap[lo + 1] - x));
  }
  const float q = qmap[c];
  if ((x < 0.0f) != (q < 0.0f))  // rare; for a coin-flip sign, the tests below would mispredict
    c += (x > 0.0f && q < 0.0f && c < N - 1) - (x < 0.0f && q >= 0.0f && c > 0);
  return uint8_t(c);
}

QRMS_HD uint8_t quantize_nearest(const float *qmap, float x) { return nearest_code(qmap, x, BinarySearch{qmap}); }

// max that keeps NaN (std::max and fmaxf drop it): a NaN in a block makes
// its absmax NaN, so the whole block reads back as NaN, as 32-bit state
// would propagate it. Both backends reduce with this.
QRMS_HD float nan_max(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return b > a ? b : a;
}

// Code for value v in a block (or tensor) of scale `absmax`; a zero scale
// stores the code of 0.0. find_low as for nearest_code (by default the
// binary search).
template <class FindLow>
QRMS_HD uint8_t quantize_scaled(const float *qmap, float v, float absmax, uint8_t zero_code, const FindLow &find_low) {
  return absmax > 0.0f ? nearest_code(qmap, v / absmax, find_low) : zero_code;
}
QRMS_HD uint8_t quantize_scaled(const float *qmap, float v, float absmax, uint8_t zero_code) {
  return quantize_scaled(qmap, v, absmax, zero_code, BinarySearch{qmap});
}

QRMS_HD float dequantize(const float *qmap, uint8_t code, float absmax) { return qmap[code] * absmax; }

// Code of 0.0 in an ascending map of N entries (the first entry that is >= 0).
template <int N = 256>
QRMS_HD uint8_t zero_code(const float *qmap) {
  int c = 0;
  while (c < N - 1 && qmap[c] < 0.0f) ++c;
  return uint8_t(c);
}

// ---- the constant-time quantizer of the dynamic maps ------------------------
//
// bitsandbytes' dynamic maps (SPEC 4) are 0, 1 and, per decade k = 0..D-1,
// n_k = 2^(k+e) evenly spaced magnitudes 10^(k-D) * (1 + (j + 0.5) * 9 / n_k)
// (D = 7; e = 0 signed, with the negatives too; e = 1 unsigned). Number the
// magnitudes of one sign 0 (zero), 1, 2, ... ascending: in decade k,
// t = a * mul[k] + add[k] puts magnitude K of the map at t ~= K, so int(t) is
// the magnitude just below |x| or, within rounding of a map value, one off;
// the code is then decided by one threshold: the smallest |x| of that sign
// whose code is the next magnitude up. The thresholds are those of
// nearest_code itself (ties, sign rule), found once per map by bisection
// (dynamic_threshold), so the coder gives its codes bit for bit
// (tests/test_quant_sweep.cpp: every float in [-1, 1] and around every
// midpoint). Maps of another shape keep nearest_code with a search.

constexpr int kMaxDecades = 7;  // the 8-bit maps use all 7; each costs the CPU loop a compare and two blends

struct DynamicCoder {
  float edge[kMaxDecades];              // lower edge of decade k (k >= 1); +inf past the last decade
  float mul[kMaxDecades], add[kMaxDecades];
  float up[2 * 256];                    // [256 * (x < 0) + L]: smallest |x| with a magnitude above L; NaN: none
  int32_t top[2];                       // largest L per sign
  int32_t zero;                         // code of 0.0
  int32_t is_signed;
};

// Shape of a dynamic map: D decades of 2^(k+e) magnitudes.
struct DynamicShape {
  int32_t is_signed, decades, extra;
  QRMS_HD int magnitudes() const { return ((1 << decades) - 1) << extra; }  // between 0 and 1, one sign
  QRMS_HD int zero() const { return is_signed ? magnitudes() : 0; }
};

QRMS_HD DynamicShape dynamic_shape(int is_signed) { return DynamicShape{is_signed, 7, is_signed ? 0 : 1}; }

// 10^-p for 0 <= p < 32, in float (within a few ulp; only the shape check
// and the coder's guess use it, and both tolerate far more).
QRMS_HD float pow10_neg(int p) {
  float r = 1.0f;
  for (int i = 0; i < p; ++i) r *= 0.1f;
  return r;
}

// The ideal value of magnitude K (0: zero, magnitudes() + 1: one).
QRMS_HD float dynamic_magnitude(const DynamicShape &sh, int K) {
  if (K == 0) return 0.0f;
  if (K > sh.magnitudes()) return 1.0f;
  const int kk = K - 1 + (1 << sh.extra);  // in [2^(k+e), 2^(k+e+1)) for decade k
  int msb = 0;
  while ((kk >> (msb + 1)) != 0) ++msb;
  const int k = msb - sh.extra, n = 1 << msb, j = kk - n;
  return pow10_neg(sh.decades - k) * (1.0f + (float(j) + 0.5f) * 9.0f / float(n));
}

// Whether qmap[code] is the value of that code in a map of this shape (to
// 1e-5 relative: torch's float32 linspace moves entries by a few ulp).
QRMS_HD bool dynamic_entry_ok(const DynamicShape &sh, const float *qmap, int code) {
  const int z = sh.zero();
  if (!sh.is_signed && code == 0) return qmap[0] == 0.0f;
  const float ideal = code >= z ? dynamic_magnitude(sh, code - z) : -dynamic_magnitude(sh, z - code);
  const float d = qmap[code] - ideal;
  return (d < 0.0f ? -d : d) <= 1e-5f * (ideal < 0.0f ? -ideal : ideal);  // false for NaN
}

// The coder's decade table and limits (everything but the thresholds).
QRMS_HD void dynamic_params(DynamicCoder &d, const DynamicShape &sh) {
  for (int k = 0; k < kMaxDecades; ++k) {
    const bool used = k < sh.decades;
    const float n = float(1 << (used ? k + sh.extra : 0));
    const float scale = pow10_neg(used ? sh.decades - k : 0);
    const float offset = float((((1 << k) - 1) << sh.extra) + 1);
    d.edge[k] = k == 0 ? 0.0f : (used ? scale : INFINITY);
    d.mul[k] = used ? n / (9.0f * scale) : 0.0f;
    d.add[k] = used ? offset - 0.5f - n / 9.0f : 0.0f;
  }
  const int m = sh.magnitudes();
  d.top[0] = m;                          // magnitudes 0 .. m + 1 (one)
  d.top[1] = sh.is_signed ? m - 1 : 0;   // 0 .. m; unsigned: zero only
  d.zero = sh.zero();
  d.is_signed = sh.is_signed;
}

// Magnitude index of a code of this shape's map, on the side of sign s.
QRMS_HD int dynamic_index(const DynamicShape &sh, int code) {
  const int m = code - sh.zero();
  return m < 0 ? -m : m;
}

// d.up[256 * s + L]: the smallest |x| (of sign s) that nearest_code maps to a
// magnitude above L, by bisection over the float bit patterns of [0, inf];
// NaN when none. Monotone because nearest_code is (the sweep checks it).
QRMS_HD void dynamic_threshold(DynamicCoder &d, const DynamicShape &sh, const float *qmap, int s, int L) {
  auto above = [&](uint32_t bits) {
    const float a = bits_float(bits);
    return dynamic_index(sh, quantize_nearest(qmap, s ? -a : a)) > L;
  };
  uint32_t lo = 0, hi = 0x7f800000u;  // invariant: !above(lo), above(hi)
  if (L > d.top[s] || !above(hi)) {
    d.up[256 * s + L] = NAN;
    return;
  }
  while (hi - lo > 1) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (above(mid)) hi = mid; else lo = mid;
  }
  d.up[256 * s + L] = bits_float(hi);
}

// The code nearest_code gives x, for a map the coder was built for. Written
// without branches or loops that depend on x (the decade loop runs a fixed
// count), so the CPU vectorises it and GPU lanes never diverge; its one
// memory read is the threshold.
QRMS_HD uint8_t dynamic_code(const DynamicCoder &d, float x) {
  const float a = x < 0.0f ? -x : x;
  const int s = x < 0.0f;
  float m = d.mul[0], c = d.add[0];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 1; k < kMaxDecades; ++k) {
    const bool in = a >= d.edge[k];
    m = in ? d.mul[k] : m;
    c = in ? d.add[k] : c;
  }
  const float t = a * m + c;                 // >= 0.38 for every a >= 0; inf for inf; NaN for NaN
  const float top = float(s ? d.top[1] : d.top[0]);
  const int lo = int(t < top ? t : top);     // NaN and inf: top
  const int mag = lo + int(a >= d.up[256 * s + lo]);
  const int code = s ? d.zero - mag : d.zero + mag;
  return uint8_t(x == x ? code : 0);         // NaN: code 0, as nearest_code
}

// Code for v in a block of scale absmax, as quantize_scaled.
QRMS_HD uint8_t quantize_scaled(const DynamicCoder &d, float v, float absmax) {
  return absmax > 0.0f ? dynamic_code(d, v / absmax) : uint8_t(d.zero);
}

// ---- 4-bit block-wise state ---------------------------------------------------
//
// Two codes per byte, element 2i in the low nibble of byte i and 2i + 1 in
// the high one (an odd tensor's last high nibble is 0), one float absmax per
// block of 128 elements. Each buffer has its own 16-entry map; value =
// map[code] * absmax, and a code is the nearest one of s / absmax with the
// 8-bit rule (nearest_code: ties to the lower code, the sign rule).

constexpr int64_t kBlockSize4 = 128;
constexpr int kCodes4 = 16;

struct Map4 {
  float v[kCodes4];
};

// Square average: (c + 1) / 16. No code is zero: a small square average
// next to a large one in its block reads back as absmax / 16, never as 0,
// which would make g / (sqrt(s) + eps) explode (the zero-point problem of
// 4-bit state; Li, Chen and Zhu, NeurIPS 2023).
QRMS_HD Map4 square_map4() {
  Map4 m;
  for (int c = 0; c < kCodes4; ++c) m.v[c] = float(c + 1) * 0.0625f;
  return m;
}

// Momentum: bitsandbytes' create_dynamic_map(signed=True,
// max_exponent_bits=3, total_bits=4) in float32, as qrms::dynamic_map(true, 4)
// computes it (tests/test_update4.cpp checks that they agree bit for bit).
QRMS_HD Map4 momentum_map4() {
  return Map4{{-0x1.c66666p-1f, -0x1.533334p-1f, -0x1.cp-2f, -0x1.b33332p-3f, -0x1.3d70a4p-4f, -0x1.0a3d72p-5f,
               -0x1.6872bp-8f, 0.0f, 0x1.6872bp-8f, 0x1.0a3d72p-5f, 0x1.3d70a4p-4f, 0x1.b33332p-3f, 0x1.cp-2f,
               0x1.533334p-1f, 0x1.c66666p-1f, 1.0f}};
}

// find_low of nearest_code for a 16-entry map: how many of map[1..14] are <= x.
struct LinearSearch4 {
  const float *map;
  QRMS_HD int operator()(float x) const {
    int lo = 0;
    for (int k = 1; k < kCodes4 - 1; ++k) lo += int(map[k] <= x);
    return lo;
  }
};

// nearest_code of a 16-entry map (the rule; Coder4 is its fast form).
QRMS_HD uint8_t nearest_code4(const float *map, float x) {
  return nearest_code<LinearSearch4, kCodes4>(map, x, LinearSearch4{map});
}

// The floats in order as integers: 0 is -inf, 0x7f800000 -0.0, 0x7f800001
// +0.0, kOrderedTop +inf.
constexpr uint32_t kOrderedTop = 0xff000001u;
QRMS_HD float ordered_float(uint32_t k) {
  return k <= 0x7f800000u ? bits_float(0x80000000u | (0x7f800000u - k)) : bits_float(k - 0x7f800001u);
}

// A 16-entry map's quantizer as 15 thresholds: nearest_code4 is monotone in
// x (ties and the sign rule included, and -0.0 codes as +0.0), so its code
// of x is the number of thresholds t[k] <= x, where t[k] is the smallest
// float whose code is above k (NaN compares false everywhere: code 0, as
// nearest_code). quantize4 counts all 15 with no read that depends on x
// (the CPU vectorises it); quantize4_grouped, the GPU's, needs 6 compares.
// The sweep checks both on every float.
struct Coder4 {
  float t[kCodes4 - 1];
  int32_t zero;  // what a zero (or NaN) scale stores: the code of the smallest non-negative value
};

// t[k] of map's coder, by bisection over the ordered floats (code(-inf) is
// 0 <= k and code(+inf) is 15 > k).
QRMS_HD float coder4_threshold(const float *map, int k) {
  uint32_t lo = 0, hi = kOrderedTop;
  while (hi - lo > 1) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (nearest_code4(map, ordered_float(mid)) > k) hi = mid; else lo = mid;
  }
  return ordered_float(hi);
}

QRMS_HD Coder4 coder4(const Map4 &map) {
  Coder4 c;
  for (int k = 0; k < kCodes4 - 1; ++k) c.t[k] = coder4_threshold(map.v, k);
  c.zero = zero_code<kCodes4>(map.v);
  return c;
}

// Code of v in a 4-bit block of scale absmax: nearest_code4(map, v / absmax);
// a zero (or NaN) scale stores c.zero.
QRMS_HD uint8_t quantize4(const Coder4 &c, float v, float absmax) {
  if (!(absmax > 0.0f)) return uint8_t(c.zero);
  const float x = v / absmax;
  int code = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 0; k < kCodes4 - 1; ++k) code += int(x >= c.t[k]);
  return uint8_t(code);
}

// The same code with 6 compares instead of 15 (the GPU's store): the
// thresholds ascend, so the number g of t[3], t[7], t[11] that are <= x
// leaves only t[4g], t[4g + 1], t[4g + 2] to compare (every t[k] with
// k < 4g is <= t[4g - 1] <= x, every one from 4g + 3 on is >= t[4g + 3] > x).
// The read of those three depends on x; the four groups lie in different
// shared-memory banks. NaN compares false everywhere: code 0, as above.
QRMS_HD uint8_t quantize4_grouped(const Coder4 &c, float v, float absmax) {
  if (!(absmax > 0.0f)) return uint8_t(c.zero);
  const float x = v / absmax;
  const int g = int(x >= c.t[3]) + int(x >= c.t[7]) + int(x >= c.t[11]);
  const float *t = c.t + 4 * g;
  return uint8_t(4 * g + int(x >= t[0]) + int(x >= t[1]) + int(x >= t[2]));
}

// Code of element i of a packed 4-bit buffer.
QRMS_HD uint8_t code4(const uint8_t *codes, int64_t i) { return uint8_t((codes[i >> 1] >> ((i & 1) * 4)) & 15); }

// The byte holding codes lo (even element) and hi (odd element).
QRMS_HD uint8_t pack4(uint8_t lo, uint8_t hi) { return uint8_t(lo | (hi << 4)); }

}  // namespace math
}  // namespace qrms
