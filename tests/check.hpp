// Catch2 helpers shared by the tests: tolerances, whole-vector checks that
// report the first mismatch with one assertion, and a runner that steps an
// optimizer and checks every step against tests/reference.hpp.
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "reference.hpp"

namespace qtest {

using qref::Dt;

// Index of the first element whose bytes differ; -1 when the two are
// identical, -2 when their sizes differ. Checking it instead of `a == b`
// keeps Catch from printing whole buffers when they differ.
template <class T>
int64_t first_difference(const std::vector<T> &a, const std::vector<T> &b) {
  if (a.size() != b.size()) return -2;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return static_cast<int64_t>(i);
  return -1;
}

#define CHECK_SAME(a, b) CHECK(::qtest::first_difference((a), (b)) == -1)

// bitsandbytes' tolerances: float32 |a - b| <= 1e-6 + 1e-5 |b|; 16-bit
// dtypes: one unit in the last place of the dtype.
inline bool param_close(Dt d, float lib, float ref) {
  if (std::isnan(lib) || std::isnan(ref)) return false;
  const double a = lib, b = ref;
  if (d == Dt::F32) return std::fabs(a - b) <= 1e-6 + 1e-5 * std::fabs(b);
  return std::fabs(a - b) <= qref::ulp(d, std::max(std::fabs(a), std::fabs(b)));
}

inline std::string describe(const char *what, size_t bad, size_t n, size_t first, double lib, double ref) {
  std::ostringstream os;
  os.precision(9);
  os << what << ": " << bad << " of " << n << " elements differ; first at " << first << ": library " << lib
     << ", reference " << ref;
  return os.str();
}

// Params after a step against the reference, and untouched elements
// (skip_zeros) bit for bit unchanged.
inline void check_params(const char *what, Dt d, const std::vector<float> &lib, const qref::StepOut &ref,
                         const std::vector<float> &before) {
  REQUIRE(lib.size() == ref.p.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < lib.size(); ++i) {
    const bool ok = ref.touched[i] ? param_close(d, lib[i], ref.p[i]) : (lib[i] == before[i]);
    if (!ok && bad++ == 0) first = i;
  }
  INFO(describe(what, bad, lib.size(), first, bad ? lib[first] : 0.0, bad ? ref.p[first] : 0.0));
  CHECK(bad == 0);
}

// 32-bit state: |lib - ref| <= abs_tol + rel_tol |ref|.
inline void check_state32(const char *what, const std::vector<float> &lib, const std::vector<float> &ref,
                          double abs_tol, double rel_tol) {
  REQUIRE(lib.size() == ref.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < lib.size(); ++i) {
    const double a = lib[i], b = ref[i];
    if (!(std::fabs(a - b) <= abs_tol + rel_tol * std::fabs(b)) && bad++ == 0) first = i;
  }
  INFO(describe(what, bad, lib.size(), first, bad ? lib[first] : 0.0, bad ? ref[first] : 0.0));
  CHECK(bad == 0);
}

// 8-bit state read back dequantized (`lib`) against the reference's new,
// unquantized state `ref`: per block of `blocksize` (the tensor's size for
// one scale per tensor) absmax = max |ref|, and each element must hold the
// value of the nearest code of ref / absmax. `rel_tol` admits the
// neighbouring code only where ref / absmax lies that close to the midpoint
// of two codes (float rounding differences between the two computations).
// map_size: 256, or 16 for 4-bit state (blocksize 128, each buffer its own map).
inline void check_state8(const char *what, const float *qmap, const std::vector<float> &lib,
                         const std::vector<float> &ref, int64_t blocksize, double rel_tol, int map_size = 256) {
  REQUIRE(lib.size() == ref.size());
  const int64_t n = static_cast<int64_t>(ref.size());
  size_t bad = 0, first = 0;
  double first_expected = 0.0;
  for (int64_t b0 = 0; b0 < n; b0 += blocksize) {
    const int64_t b1 = std::min(n, b0 + blocksize);
    float absmax = 0.0f;
    for (int64_t i = b0; i < b1; ++i) absmax = std::max(absmax, std::fabs(ref[static_cast<size_t>(i)]));
    for (int64_t i = b0; i < b1; ++i) {
      const size_t k = static_cast<size_t>(i);
      bool ok = false;
      double expected = 0.0;
      if (absmax == 0.0f) {
        ok = lib[k] == 0.0f;
        expected = 0.0;
      } else {
        const float x = ref[k] / absmax;
        auto matches = [&](int c) {
          const double v = static_cast<double>(qmap[c]) * static_cast<double>(absmax);
          return std::fabs(static_cast<double>(lib[k]) - v) <= 1e-5 * std::fabs(v);
        };
        const int nearest = qref::nearest_code(qmap, x, map_size);
        expected = static_cast<double>(qmap[nearest]) * static_cast<double>(absmax);
        ok = matches(nearest);
        if (!ok)
          for (int c : qref::acceptable_codes(qmap, x, rel_tol, map_size)) ok = ok || matches(c);
      }
      if (!ok && bad++ == 0) {
        first = k;
        first_expected = expected;
      }
    }
  }
  INFO(describe(what, bad, lib.size(), first, bad ? lib[first] : 0.0, first_expected));
  CHECK(bad == 0);
}

// Gradient values N(0, scale) with about 10% exact zeros (so that
// skip_zeros matters), rounded to the dtype.
inline void fill_grad(qref::Tensor &g, std::mt19937 &rng, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::uniform_int_distribution<int> pick(0, 9);
  for (int64_t i = 0; i < g.size(); ++i) g.set(i, pick(rng) == 0 ? 0.0f : normal(rng));
}

inline void fill_normal(qref::Tensor &t, std::mt19937 &rng, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  for (int64_t i = 0; i < t.size(); ++i) t.set(i, normal(rng));
}

// One trained tensor: its param and grad, what state layout the optimizer
// must have chosen for it, and the reference's bookkeeping.
struct Trainee {
  qref::Tensor p, g;
  qref::Hyper h;
  bool bits8 = false;       // expected 8-bit state
  bool bits4 = false;       // expected 4-bit state (blocks of 128, the maps of qref::square_map4 / dynamic_map(true, 4))
  int64_t blocksize = 256;  // 8-bit: 256, or numel for one scale per tensor
  qref::Clip clip;
  int64_t steps = 0;
  bool has_grad = true;
  float unscale = 1.0f;  // loss scaling: the optimizer multiplies each gradient by it
  const float *smap = nullptr;  // 8-bit square average's map (nullptr: the run's qmap)

  Trainee(Dt d, int64_t n, std::mt19937 &rng) : p(d, n), g(d, n) { fill_normal(p, rng, 1.0f); }
};

struct RunStats {
  int clipped = 0;  // steps where percentile clipping scaled the gradient
  int scaled = 0;   // steps where max_unorm scaled the update
  int skipped = 0;  // elements skip_zeros left untouched
};

// Gradient magnitudes per step: a jump at step 3 and 5 makes percentile
// clipping act.
inline float grad_scale_for(int k) {
  static const float scales[] = {1.0f, 0.5f, 3.0f, 1.0f, 10.0f, 0.7f};
  return scales[k % 6];
}

// Steps `opt` `steps` times with fresh gradients and checks each step of
// every tensor against the reference, starting from the library's own
// previous params and state so that errors do not compound. Opt provides
// step(), read_state(i, which) -> std::vector<float>, get_step(i).
template <class Opt>
RunStats run_and_check(Opt &opt, std::vector<Trainee> &ts, const float *qmap, int steps, std::mt19937 &rng,
                       int first_k = 0) {
  RunStats st;
  const std::vector<float> sq4 = qref::square_map4(), mom4 = qref::momentum_map4();
  for (int k = first_k; k < first_k + steps; ++k) {
    std::vector<std::vector<float>> p0(ts.size()), s0(ts.size()), b0(ts.size());
    for (size_t i = 0; i < ts.size(); ++i) {
      Trainee &t = ts[i];
      if (t.has_grad) fill_grad(t.g, rng, grad_scale_for(k));
      p0[i] = t.p.values();
      s0[i] = opt.read_state(static_cast<int64_t>(i), 0);
      if (t.h.momentum > 0.0f) b0[i] = opt.read_state(static_cast<int64_t>(i), 1);
    }
    opt.step();
    for (size_t i = 0; i < ts.size(); ++i) {
      Trainee &t = ts[i];
      INFO("step " << (k + 1) << ", tensor " << i << " (" << t.p.size() << " elements, "
                   << qref::dt_name(t.p.dtype()) << ", " << (t.bits4 ? "4-bit" : t.bits8 ? "8-bit" : "32-bit")
                   << " state)");
      const auto idx = static_cast<int64_t>(i);
      if (!t.has_grad) {
        CHECK_SAME(t.p.values(), p0[i]);
        CHECK(opt.get_step(idx) == t.steps);
        continue;
      }
      ++t.steps;
      CHECK(opt.get_step(idx) == t.steps);
      std::vector<float> g = t.g.values();
      for (float &x : g) x *= t.unscale;
      const float gscale = t.h.percentile < 100 ? t.clip.next(g, t.h.percentile) : 1.0f;
      if (gscale < 1.0f) ++st.clipped;
      const qref::StepOut ref = qref::step(t.h, t.p.dtype(), p0[i], g, s0[i], b0[i], gscale);
      if (ref.update_scale < 1.0f) ++st.scaled;
      for (bool touched : ref.touched) st.skipped += touched ? 0 : 1;
      check_params("params", t.p.dtype(), t.p.values(), ref, p0[i]);
      const std::vector<float> s = opt.read_state(idx, 0);
      if (t.bits4) {
        check_state8("square_avg (4-bit)", sq4.data(), s, ref.s, 128, 1e-5, 16);
      } else if (t.bits8) {
        check_state8("square_avg", t.smap ? t.smap : qmap, s, ref.s, t.blocksize, 1e-5);
      } else {
        check_state32("square_avg", s, ref.s, 1e-12, 2e-6);
      }
      if (t.h.momentum > 0.0f) {
        const std::vector<float> b = opt.read_state(idx, 1);
        if (t.bits4) {
          check_state8("momentum (4-bit)", mom4.data(), b, ref.b, 128, 1e-5, 16);
        } else if (t.bits8) {
          check_state8("momentum", qmap, b, ref.b, t.blocksize, 1e-5);
        } else {
          check_state32("momentum", b, ref.b, 1e-6, 1e-5);
        }
      }
    }
  }
  return st;
}

}  // namespace qtest
