// Helpers of the GPU tests: device buffers, deterministic inputs, dtype
// conversions (the element math of src/element.hpp), comparisons.
#pragma once

#include <cuda_runtime.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "element.hpp"
#include "qrmsprop/qrmsprop.hpp"

namespace gputest {

#define CUDA_REQUIRE(expr)                           \
  do {                                               \
    const cudaError_t err_ = (expr);                 \
    INFO(#expr << ": " << cudaGetErrorString(err_)); \
    REQUIRE(err_ == cudaSuccess);                    \
  } while (0)

// cudaMalloc'd bytes, freed on scope exit.
class DevBuf {
 public:
  DevBuf() = default;
  explicit DevBuf(size_t bytes) : bytes_(bytes) { CUDA_REQUIRE(cudaMalloc(&p_, bytes ? bytes : 1)); }
  ~DevBuf() {
    if (p_) cudaFree(p_);
  }
  DevBuf(const DevBuf &) = delete;
  DevBuf &operator=(const DevBuf &) = delete;
  DevBuf(DevBuf &&o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; }
  DevBuf &operator=(DevBuf &&o) noexcept {
    std::swap(p_, o.p_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  template <typename T = void>
  T *get() const {
    return static_cast<T *>(p_);
  }
  uint8_t *bytes() const { return static_cast<uint8_t *>(p_); }
  size_t size() const { return bytes_; }

 private:
  void *p_ = nullptr;
  size_t bytes_ = 0;
};

inline size_t dtype_size(qrms::Dtype d) {
  return d == qrms::Dtype::Float32 ? 4 : 2;
}

inline const char *dtype_name(qrms::Dtype d) {
  switch (d) {
    case qrms::Dtype::Float32:
      return "float32";
    case qrms::Dtype::Float16:
      return "float16";
    case qrms::Dtype::BFloat16:
      return "bfloat16";
  }
  return "?";
}

// Element i of a raw dtype array as float / from float (round to nearest even).
inline float get_elem(qrms::Dtype d, const void *p, int64_t i) {
  switch (d) {
    case qrms::Dtype::Float32:
      return static_cast<const float *>(p)[i];
    case qrms::Dtype::Float16:
      return qrms::math::to_float(static_cast<const qrms::math::half_t *>(p)[i]);
    case qrms::Dtype::BFloat16:
      return qrms::math::to_float(static_cast<const qrms::math::bf16_t *>(p)[i]);
  }
  return 0.0f;
}

inline void set_elem(qrms::Dtype d, void *p, int64_t i, float v) {
  switch (d) {
    case qrms::Dtype::Float32:
      static_cast<float *>(p)[i] = v;
      break;
    case qrms::Dtype::Float16:
      static_cast<qrms::math::half_t *>(p)[i] = qrms::math::to_half(v);
      break;
    case qrms::Dtype::BFloat16:
      static_cast<qrms::math::bf16_t *>(p)[i] = qrms::math::to_bf16(v);
      break;
  }
}

// Deterministic host data of a dtype: uniform in [-scale, scale], with a
// fraction of exact zeros.
inline std::vector<uint8_t> random_tensor(qrms::Dtype d, int64_t n, uint32_t seed, float scale,
                                          double zero_fraction = 0.0) {
  std::vector<uint8_t> out(static_cast<size_t>(n) * dtype_size(d));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  for (int64_t i = 0; i < n; ++i) {
    float v = uni(rng) * scale;
    if (coin(rng) < zero_fraction) v = 0.0f;
    set_elem(d, out.data(), i, v);
  }
  return out;
}

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// How two arrays differ. exact: bits must match; otherwise count elements
// beyond a relative 1e-4 and track the largest absolute difference.
struct Diff {
  int64_t n = 0, mismatches = 0, first_bad = -1;
  double max_abs_diff = 0, max_abs = 0;
  float a_bad = 0, b_bad = 0;
  double fraction() const { return n ? double(mismatches) / double(n) : 0.0; }
  std::string str() const {
    std::ostringstream os;
    os << mismatches << "/" << n << " differ (max |diff| " << max_abs_diff << ", max |value| " << max_abs << ")";
    if (first_bad >= 0) os << ", first at " << first_bad << ": " << a_bad << " vs " << b_bad;
    return os.str();
  }
};

template <typename GetA, typename GetB>
Diff compare(int64_t n, bool exact, const GetA &a, const GetB &b) {
  Diff d;
  d.n = n;
  for (int64_t i = 0; i < n; ++i) {
    const float x = a(i), y = b(i);
    const double diff = std::fabs(double(x) - double(y));
    d.max_abs = std::max(d.max_abs, std::fabs(double(x)));
    d.max_abs_diff = std::max(d.max_abs_diff, diff);
    const bool bad = exact ? bits_of(x) != bits_of(y)
                           : !(diff <= 1e-4 * std::max(std::fabs(double(x)), std::fabs(double(y))) + 1e-30);
    if (bad) {
      if (d.first_bad < 0) {
        d.first_bad = i;
        d.a_bad = x;
        d.b_bad = y;
      }
      ++d.mismatches;
    }
  }
  return d;
}

inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace gputest
