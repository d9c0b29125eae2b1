// Shared by the CPU and GPU benchmarks: the variants, the byte model of
// docs/performance.md (DESIGN "Performance" table) and small JSON helpers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "qrmsprop/qrmsprop.h"

namespace qrms_bench {

// How a variant stores the state of a tensor.
enum class Variant : int { Bits32 = 0, Blockwise8 = 1, Tensor8 = 2, Blockwise4 = 3 };

inline const char *variant_name(Variant v) {
  switch (v) {
    case Variant::Bits32: return "32bit";
    case Variant::Blockwise8: return "8bit_blockwise";
    case Variant::Tensor8: return "8bit_tensor";
    case Variant::Blockwise4: return "4bit_blockwise";
  }
  return "?";
}

inline const char *dtype_name(qrms_dtype_t d) {
  switch (d) {
    case QRMS_FLOAT32: return "f32";
    case QRMS_FLOAT16: return "f16";
    case QRMS_BFLOAT16: return "bf16";
    default: return "?";
  }
}

inline int64_t dtype_size(qrms_dtype_t d) { return d == QRMS_FLOAT32 ? 4 : 2; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The minimum bytes one step must move for one tensor of n elements (reads +
// writes), SPEC/DESIGN: param read and written, grad read, each state buffer
// (square average, and the momentum buffer when momentum > 0) read and
// written: 4 + 4 bytes (32-bit) or 1 + 1 byte plus its scales (8-bit:
// ceil(n/256) absmax floats block-wise, {max1, new_max1} per tensor; 4-bit:
// ceil(n/2) bytes of codes and ceil(n/128) absmax floats). A tensor below
// min_8bit_size keeps 32-bit state in the 8-bit and 4-bit variants.
//
// For the per-tensor 8-bit variant this is the single-pass floor. The SPEC
// algorithm needs a first pass that reads grad and state (and param with
// weight decay) to find new_max1 before the second pass can quantize, so its
// achievable fraction is below 1 by construction; two_pass_bytes() counts it.
inline int64_t step_bytes(Variant v, qrms_dtype_t dtype, bool momentum, int64_t n, int64_t min_8bit_size = 4096) {
  const int64_t ps = dtype_size(dtype);
  const int64_t buffers = momentum ? 2 : 1;
  int64_t b = n * (3 * ps);  // param r+w, grad r
  if (v == Variant::Bits32 || n < min_8bit_size) return b + buffers * n * 8;
  if (v == Variant::Blockwise4) return b + buffers * (ceil_div(n, 2) + ceil_div(n, 128) * 4) * 2;
  b += buffers * n * 2;      // codes r+w
  if (v == Variant::Blockwise8) b += buffers * ceil_div(n, 256) * 4 * 2;
  else b += buffers * 4 * 4;  // {max1, new_max1} read and written
  return b;
}

// Bytes of the per-tensor 8-bit variant including its max-finding pre-pass
// (grad and codes read again; no weight decay in the benchmarks).
inline int64_t two_pass_bytes(Variant v, qrms_dtype_t dtype, bool momentum, int64_t n,
                              int64_t min_8bit_size = 4096) {
  int64_t b = step_bytes(v, dtype, momentum, n, min_8bit_size);
  if (v == Variant::Tensor8 && n >= min_8bit_size) b += n * dtype_size(dtype) + (momentum ? 2 : 1) * n;
  return b;
}

// The items of a comma-separated command-line value.
inline std::vector<std::string> split(const std::string &s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

// The variants and dtypes named (as variant_name and dtype_name spell them)
// in a comma-separated command-line value; the first name that is neither
// goes to `unknown`.
inline std::vector<Variant> variants_named(const std::string &value, std::string &unknown) {
  std::vector<Variant> out;
  for (const std::string &s : split(value)) {
    bool found = false;
    for (Variant v : {Variant::Bits32, Variant::Blockwise8, Variant::Tensor8, Variant::Blockwise4}) {
      if (s == variant_name(v)) {
        out.push_back(v);
        found = true;
      }
    }
    if (!found && unknown.empty()) unknown = s;
  }
  return out;
}

inline std::vector<qrms_dtype_t> dtypes_named(const std::string &value, std::string &unknown) {
  std::vector<qrms_dtype_t> out;
  for (const std::string &s : split(value)) {
    bool found = false;
    for (qrms_dtype_t d : {QRMS_FLOAT32, QRMS_BFLOAT16, QRMS_FLOAT16}) {
      if (s == dtype_name(d)) {
        out.push_back(d);
        found = true;
      }
    }
    if (!found && unknown.empty()) unknown = s;
  }
  return out;
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// Minimal JSON object writer: one line per case, keys in insertion order.
class JsonLine {
 public:
  JsonLine &str(const char *key, const std::string &value) {
    add_key(key);
    s_ += '"';
    for (char c : value) {
      if (c == '"' || c == '\\') s_ += '\\';
      if (static_cast<unsigned char>(c) < 0x20) c = ' ';
      s_ += c;
    }
    s_ += '"';
    return *this;
  }
  JsonLine &integer(const char *key, int64_t value) {
    add_key(key);
    s_ += std::to_string(value);
    return *this;
  }
  JsonLine &boolean(const char *key, bool value) {
    add_key(key);
    s_ += value ? "true" : "false";
    return *this;
  }
  JsonLine &number(const char *key, double value) {
    add_key(key);
    if (!std::isfinite(value)) {
      s_ += "null";
    } else {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.6g", value);
      s_ += buf;
    }
    return *this;
  }
  void print(FILE *f = stdout) const {
    std::fprintf(f, "{%s}\n", s_.c_str());
    std::fflush(f);
  }

 private:
  void add_key(const char *key) {
    if (!s_.empty()) s_ += ", ";
    s_ += '"';
    s_ += key;
    s_ += "\": ";
  }
  std::string s_;
};

}  // namespace qrms_bench
