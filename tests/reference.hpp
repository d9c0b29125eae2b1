// A plain scalar reference of torch.optim.RMSprop (centered=False), of
// the 8-bit quantizer and of the state blob's checksum, written from SPEC sections 3-4 without the library's
// code: no src/ header is included here. 16-bit rounding is done in double
// arithmetic (frexp / nearbyint / ldexp), a different technique from the
// library's bit manipulation, so the two check each other.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace qref {

// Same values as QRMS_FLOAT32 / QRMS_FLOAT16 / QRMS_BFLOAT16.
enum class Dt : int32_t { F32 = 0, F16 = 1, BF16 = 2 };

inline const char *dt_name(Dt d) { return d == Dt::F32 ? "float32" : d == Dt::F16 ? "float16" : "bfloat16"; }

// ---- 16-bit formats -------------------------------------------------------

struct Format {
  int precision;      // significand bits, hidden bit included
  int min_exp;        // exponent of the smallest subnormal
  double max_finite;  // largest finite value
};

inline Format format_of(Dt d) {
  switch (d) {
    case Dt::F16: return {11, -24, 65504.0};
    case Dt::BF16: return {8, -133, std::ldexp(255.0, 120)};
    case Dt::F32: break;
  }
  return {24, -149, static_cast<double>(FLT_MAX)};
}

// Exponent of the spacing of representable values of `d` around |x|.
inline int quantum_exp(Dt d, double x) {
  const Format f = format_of(d);
  if (x == 0.0) return f.min_exp;
  int e = 0;
  std::frexp(x, &e);  // |x| = m * 2^e, m in [0.5, 1): the leading bit is 2^(e-1)
  return std::max(e - f.precision, f.min_exp);
}

// One unit in the last place of `d` at |x|.
inline double ulp(Dt d, double x) { return std::ldexp(1.0, quantum_exp(d, std::fabs(x))); }

// Round-to-nearest-even of a float to dtype `d`, returned exactly as a double.
// nearbyint honours the current rounding mode, which is to-nearest-even.
inline double round_to(Dt d, float x) {
  if (d == Dt::F32 || std::isnan(x) || std::isinf(x) || x == 0.0f) return static_cast<double>(x);
  const int qe = quantum_exp(d, static_cast<double>(x));
  const double r = std::ldexp(std::nearbyint(std::ldexp(static_cast<double>(x), -qe)), qe);
  if (std::fabs(r) > format_of(d).max_finite) return std::copysign(std::numeric_limits<double>::infinity(), r);
  return r;
}

// Bits of an exactly representable value.
inline uint16_t encode16(Dt d, double v) {
  if (d == Dt::BF16) {
    const float f = static_cast<float>(v);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return static_cast<uint16_t>(u >> 16);
  }
  const uint16_t sign = std::signbit(v) ? 0x8000u : 0u;
  const double a = std::fabs(v);
  if (std::isnan(v)) return 0x7e00u;
  if (std::isinf(v)) return static_cast<uint16_t>(sign | 0x7c00u);
  if (a < std::ldexp(1.0, -14)) return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::ldexp(a, 24)));
  int e = 0;
  const double m = std::frexp(a, &e);  // a = m * 2^e
  const unsigned biased = static_cast<unsigned>(e - 1 + 15);
  const unsigned mant = static_cast<unsigned>((m * 2.0 - 1.0) * 1024.0);
  return static_cast<uint16_t>(sign | (biased << 10) | mant);
}

inline double decode16(Dt d, uint16_t h) {
  if (d == Dt::BF16) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return static_cast<double>(f);
  }
  const double sign = (h & 0x8000u) ? -1.0 : 1.0;
  const int e = (h >> 10) & 0x1f;
  const int m = h & 0x3ff;
  if (e == 31) return m ? std::numeric_limits<double>::quiet_NaN() : sign * std::numeric_limits<double>::infinity();
  if (e == 0) return sign * std::ldexp(static_cast<double>(m), -24);
  return sign * std::ldexp(static_cast<double>(1024 + m), e - 25);
}

// n elements of dtype `d` in 4-byte aligned storage (so that data() + 1 byte
// is a misaligned pointer for every dtype).
class Tensor {
 public:
  Tensor() = default;
  Tensor(Dt d, int64_t n) : dt_(d), n_(n), words_(static_cast<size_t>(n) + 1, 0u) {}
  Dt dtype() const { return dt_; }
  int64_t size() const { return n_; }
  void *data() { return words_.data(); }
  const void *data() const { return words_.data(); }

  float get(int64_t i) const {
    if (dt_ == Dt::F32) return reinterpret_cast<const float *>(words_.data())[i];
    return static_cast<float>(decode16(dt_, reinterpret_cast<const uint16_t *>(words_.data())[i]));
  }
  // Stores x rounded to the dtype.
  void set(int64_t i, float x) {
    if (dt_ == Dt::F32) {
      reinterpret_cast<float *>(words_.data())[i] = x;
    } else {
      reinterpret_cast<uint16_t *>(words_.data())[i] = encode16(dt_, round_to(dt_, x));
    }
  }
  std::vector<float> values() const {
    std::vector<float> v(static_cast<size_t>(n_));
    for (int64_t i = 0; i < n_; ++i) v[static_cast<size_t>(i)] = get(i);
    return v;
  }
  bool same_bits(const Tensor &o) const { return dt_ == o.dt_ && n_ == o.n_ && words_ == o.words_; }

 private:
  Dt dt_ = Dt::F32;
  int64_t n_ = 0;
  std::vector<uint32_t> words_;
};

// ---- the update (SPEC 3) ----------------------------------------------------

struct Hyper {
  float lr = 1e-2f, alpha = 0.99f, eps = 1e-8f, weight_decay = 0.0f, momentum = 0.0f, max_unorm = 0.0f;
  bool skip_zeros = false;
  int32_t percentile = 100;
};

// Percentile clipping history of one parameter.
struct Clip {
  std::vector<float> hist = std::vector<float>(100, 0.0f);
  int64_t step = 0;

  // Records this step's gradient and returns gnorm_scale.
  float next(const std::vector<float> &g, int32_t percentile) {
    ++step;
    double q = 0.0;
    for (float x : g) q += static_cast<double>(x) * static_cast<double>(x);
    const float qf = static_cast<float>(q);
    if (step == 1) {
      std::fill(hist.begin(), hist.end(), qf);
    } else {
      hist[static_cast<size_t>(step % 100)] = qf;
    }
    std::vector<float> sorted = hist;
    std::sort(sorted.begin(), sorted.end());
    const float current = std::sqrt(hist[static_cast<size_t>(step % 100)]);
    const float clip = std::sqrt(sorted[static_cast<size_t>(percentile)]);
    return current > clip ? clip / current : 1.0f;
  }
};

struct StepOut {
  std::vector<float> p;  // new params, rounded to the dtype
  std::vector<float> s;  // new square average (not quantized)
  std::vector<float> b;  // new momentum buffer (empty without momentum)
  std::vector<bool> touched;
  float update_scale = 1.0f;
};

// One step of torch.optim.RMSprop for one tensor. p, g: the values of the
// params and grads (already of the dtype); s0, b0: the state before the step
// (b0 empty when momentum == 0).
inline StepOut step(const Hyper &h, Dt dt, const std::vector<float> &p, const std::vector<float> &g,
                    const std::vector<float> &s0, const std::vector<float> &b0, float gnorm_scale) {
  const size_t n = p.size();
  StepOut out;
  out.s = s0;
  out.b = b0;
  out.touched.assign(n, false);
  std::vector<float> u(n, 0.0f);
  const float one_minus_alpha = 1.0f - h.alpha;
  for (size_t i = 0; i < n; ++i) {
    if (h.skip_zeros && g[i] == 0.0f) continue;
    float grad = g[i] * gnorm_scale;
    if (h.weight_decay > 0.0f) grad = grad + h.weight_decay * p[i];  // torch: grad.add(p, alpha=wd)
    const float s = h.alpha * s0[i] + one_minus_alpha * grad * grad;  // square_avg.mul_(a).addcmul_(g, g, 1-a)
    float upd = grad / (std::sqrt(s) + h.eps);                         // avg = sqrt(s) + eps
    if (h.momentum > 0.0f) {
      const float b = h.momentum * b0[i] + upd;                      // buf.mul_(m).add_(grad / avg)
      out.b[i] = b;
      upd = b;
    }
    out.s[i] = s;
    u[i] = upd;
    out.touched[i] = true;
  }
  if (h.max_unorm > 0.0f) {
    double uu = 0.0, pp = 0.0;
    for (size_t i = 0; i < n; ++i) {
      uu += static_cast<double>(u[i]) * static_cast<double>(u[i]);
      pp += static_cast<double>(p[i]) * static_cast<double>(p[i]);
    }
    const float unorm = std::sqrt(static_cast<float>(uu));
    const float limit = h.max_unorm * std::sqrt(static_cast<float>(pp)) + h.eps;
    if (unorm > limit) out.update_scale = limit / unorm;
  }
  out.p = p;
  for (size_t i = 0; i < n; ++i)
    if (out.touched[i]) out.p[i] = static_cast<float>(round_to(dt, p[i] - h.lr * out.update_scale * u[i]));
  return out;
}

// ---- 8-bit quantization (SPEC 4) -------------------------------------------

// Index of the map's 0.0.
inline int zero_code(const float *qmap) {
  for (int c = 0; c < 256; ++c)
    if (qmap[c] == 0.0f) return c;
  return -1;
}

// The sign rule: a code whose value has the other sign than x moves one step
// toward x's sign (so a negative x never lands on 0.0). size: the map's
// entries (256; 16 for 4-bit state).
inline int sign_rule(const float *qmap, float x, int c, int size = 256) {
  if (x < 0.0f && qmap[c] >= 0.0f && c > 0) return c - 1;
  if (x > 0.0f && qmap[c] < 0.0f && c < size - 1) return c + 1;
  return c;
}

// Nearest code of x in the ascending map (distances measured exactly in
// double, ties to the lower code), then the sign rule.
inline int nearest_code(const float *qmap, float x, int size = 256) {
  const int hi = static_cast<int>(std::lower_bound(qmap, qmap + size, x) - qmap);  // first qmap[hi] >= x
  int best;
  if (hi == 0) {
    best = 0;
  } else if (hi == size) {
    best = size - 1;
  } else {
    const double below = static_cast<double>(x) - static_cast<double>(qmap[hi - 1]);
    const double above = static_cast<double>(qmap[hi]) - static_cast<double>(x);
    best = above < below ? hi : hi - 1;
  }
  return sign_rule(qmap, x, best, size);
}

// Codes acceptable for x when x itself is only known to a relative
// precision rel_tol: the nearest code, plus the neighbour when x is that
// close to the midpoint between them. rel_tol 0 gives just the nearest code.
inline std::vector<int> acceptable_codes(const float *qmap, float x, double rel_tol, int size = 256) {
  std::vector<int> out{nearest_code(qmap, x, size)};
  if (rel_tol <= 0.0) return out;
  double dist[256];
  double best = std::numeric_limits<double>::infinity();
  for (int c = 0; c < size; ++c) {
    dist[c] = std::fabs(static_cast<double>(x) - static_cast<double>(qmap[c]));
    best = std::min(best, dist[c]);
  }
  const double tol = 2.0 * rel_tol * std::fabs(static_cast<double>(x)) + 1e-30;
  for (int c = 0; c < size; ++c) {
    if (dist[c] > best + tol) continue;
    const int k = sign_rule(qmap, x, c, size);
    if (std::find(out.begin(), out.end(), k) == out.end()) out.push_back(k);
  }
  return out;
}

// Block-wise quantization of v (blocksize = v.size() for one scale per tensor).
struct Quantized {
  std::vector<uint8_t> codes;
  std::vector<float> absmax;
};

inline Quantized quantize(const float *qmap, const std::vector<float> &v, int64_t blocksize) {
  const int64_t n = static_cast<int64_t>(v.size());
  Quantized q;
  q.codes.resize(v.size());
  q.absmax.assign(static_cast<size_t>((n + blocksize - 1) / blocksize), 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    float &a = q.absmax[static_cast<size_t>(i / blocksize)];
    a = std::max(a, std::fabs(v[static_cast<size_t>(i)]));
  }
  const int zero = zero_code(qmap);
  for (int64_t i = 0; i < n; ++i) {
    const float a = q.absmax[static_cast<size_t>(i / blocksize)];
    const float x = v[static_cast<size_t>(i)];
    q.codes[static_cast<size_t>(i)] = static_cast<uint8_t>(a > 0.0f ? nearest_code(qmap, x / a) : zero);
  }
  return q;
}

// ---- 4-bit state -------------------------------------------------------------

// The maps of 4-bit state, written out independently of src/element.hpp:
// the square average's (c + 1) / 16 (no zero), the momentum buffer's the
// signed 4-bit dynamic map: bitsandbytes' create_dynamic_map(True, 3, 4)
// without its padding, as torch computes it in float32 (0.2125 is
// 0x1.b33332p-3 there, one ulp below the nearest float).
inline std::vector<float> square_map4() {
  std::vector<float> m(16);
  for (int c = 0; c < 16; ++c) m[static_cast<size_t>(c)] = static_cast<float>(c + 1) / 16.0f;
  return m;
}
inline std::vector<float> momentum_map4() {
  const std::vector<float> pos = {0x1.6872bp-8f, 0x1.0a3d72p-5f, 0x1.3d70a4p-4f, 0x1.b33332p-3f,
                                  0x1.cp-2f,     0x1.533334p-1f, 0x1.c66666p-1f};  // 0.0055 ... 0.8875
  std::vector<float> m;
  for (auto it = pos.rbegin(); it != pos.rend(); ++it) m.push_back(-*it);
  m.push_back(0.0f);
  m.insert(m.end(), pos.begin(), pos.end());
  m.push_back(1.0f);
  return m;
}

// ---- the saved state (docs/state-format.md) -----------------------------------

// The blob's checksum: FNV-1a 64 over every byte before it.
inline uint64_t fnv1a(const uint8_t *p, size_t n) {
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace qref
