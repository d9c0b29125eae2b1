// Device helpers shared by the kernel files: 8-element loads and stores
// (vectorized when the tensor allows it), state access per StateKind, the
// quantization map in shared memory, and warp / block reductions.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "launch.hpp"

namespace qrms {
namespace gpu {

using core::StateKind;

#define QRMS_DEV __device__ __forceinline__

// What cudaLaunchKernel takes for kernel f. The emulated device
// (tests/emu/) defines its own, which also records f's signature and name.
#ifndef QRMS_KERNEL_HANDLE
#define QRMS_KERNEL_HANDLE(...) reinterpret_cast<const void *>(&__VA_ARGS__)
#endif

// ---- 8 consecutive elements per thread -------------------------------------

// Elements [i0, i0 + 8) of p, those at or past n replaced by T{}. `vec`: the
// base pointer allows one aligned vector access per thread (16 bytes for
// 2- and 4-byte types, 8 bytes for codes; i0 is a multiple of 8).
template <typename T>
QRMS_DEV void load8(const T *p, int64_t i0, int64_t n, bool vec, T (&v)[kVec]) {
  if (vec && i0 + kVec <= n) {
    using W = std::conditional_t<(sizeof(T) * kVec >= 16), uint4, uint2>;
    constexpr int kWords = int(sizeof(T) * kVec / sizeof(W));
    W w[kWords];
#pragma unroll
    for (int k = 0; k < kWords; ++k) w[k] = reinterpret_cast<const W *>(p + i0)[k];
    memcpy(v, w, sizeof(v));
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[j] = i0 + j < n ? p[i0 + j] : T{};
  }
}

template <typename T>
QRMS_DEV void store8(T *p, int64_t i0, int64_t n, bool vec, const T (&v)[kVec]) {
  if (vec && i0 + kVec <= n) {
    using W = std::conditional_t<(sizeof(T) * kVec >= 16), uint4, uint2>;
    constexpr int kWords = int(sizeof(T) * kVec / sizeof(W));
    W w[kWords];
    memcpy(w, v, sizeof(v));
#pragma unroll
    for (int k = 0; k < kWords; ++k) reinterpret_cast<W *>(p + i0)[k] = w[k];
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      if (i0 + j < n) p[i0 + j] = v[j];
  }
}

// ---- the quantization map ----------------------------------------------------

// Copies the 256-entry map into shared memory and finds the code of 0.0.
// Every thread of the block must call it.
QRMS_DEV void load_qmap(const float *qmap_global, float *qmap, uint8_t &zero) {
  for (int i = int(threadIdx.x); i < 256; i += int(blockDim.x)) qmap[i] = qmap_global[i];
  __syncthreads();
  if (threadIdx.x == 0) zero = math::zero_code(qmap);
  __syncthreads();
}

// What the quantizing kernels keep in shared memory: the map (dequantizing,
// and the search for maps without a coder) and the dynamic maps' coder.
struct Quantizer {
  float qmap[256];
  math::DynamicCoder coder;
  uint8_t zero;
  int32_t dynamic;  // the map has a dynamic map's shape: codes come from `coder`
};

// Fills q from the map in global memory: the map, and the coder when the map
// has the shape of a dynamic map (the same checks and thresholds as the
// CPU's build_dynamic_coder, its work spread over the block). Every thread of
// the block must call it.
QRMS_DEV void load_quantizer(const float *qmap_global, Quantizer &q) {
  load_qmap(qmap_global, q.qmap, q.zero);
  int shape = -1;
  for (const int is_signed : {1, 0}) {
    bool ok = true;
    for (int c = int(threadIdx.x); c < 256; c += int(blockDim.x))
      ok = ok && math::dynamic_entry_ok(math::dynamic_shape(is_signed), q.qmap, c);
    if (__syncthreads_and(ok)) {
      shape = is_signed;
      break;
    }
  }
  if (threadIdx.x == 0) {
    q.dynamic = shape >= 0;
    if (shape >= 0) math::dynamic_params(q.coder, math::dynamic_shape(shape));
  }
  __syncthreads();
  if (shape >= 0) {
    for (int i = int(threadIdx.x); i < 512; i += int(blockDim.x))
      math::dynamic_threshold(q.coder, math::dynamic_shape(shape), q.qmap, i / 256, i % 256);
    __syncthreads();
  }
}

// Copies a quantizer word by word over the block (shared or global memory
// on either side). Every thread of the block must call it; dst is whole
// after the next __syncthreads.
QRMS_DEV void copy_quantizer(const Quantizer &src, Quantizer &dst) {
  static_assert(sizeof(Quantizer) % sizeof(uint32_t) == 0, "a Quantizer is copied in 32-bit words");
  const uint32_t *s = reinterpret_cast<const uint32_t *>(&src);
  uint32_t *d = reinterpret_cast<uint32_t *>(&dst);
  for (int i = int(threadIdx.x); i < int(sizeof(Quantizer) / sizeof(uint32_t)); i += int(blockDim.x)) d[i] = s[i];
}

// q from `built` (the map's quantizer built beforehand, in global memory)
// when given, else built from the map as load_quantizer does. Every thread
// of the block must call it.
QRMS_DEV void load_quantizer(const float *qmap_global, const Quantizer *built, Quantizer &q) {
  if (!built) {
    load_quantizer(qmap_global, q);
    return;
  }
  copy_quantizer(*built, q);
  __syncthreads();
}

// The two 16-entry maps of 4-bit state into shared memory: [0] the square
// average's, [1] the momentum buffer's; with `coders`, their quantizers too
// (thread k < 30 finds threshold k % 15 of map k / 15). Every thread of the
// block must call it.
QRMS_DEV void load_maps4(math::Map4 (&maps)[2], math::Coder4 (*coders)[2] = nullptr) {
  const int t = int(threadIdx.x);
  if (t < math::kCodes4) {
    maps[0].v[t] = math::square_map4().v[t];
    maps[1].v[t] = math::momentum_map4().v[t];
  }
  __syncthreads();
  if (!coders) return;
  constexpr int kT = math::kCodes4 - 1;
  if (t < 2 * kT) (*coders)[t / kT].t[t % kT] = math::coder4_threshold(maps[t / kT].v, t % kT);
  if (t < 2) (*coders)[t].zero = math::zero_code<math::kCodes4>(maps[t].v);
  __syncthreads();
}

// The search for maps without a coder, out of line: it keeps the update
// loops' code and registers those of the coder.
static __device__ __noinline__ uint8_t quantize_search(const Quantizer &q, float v, float a) {
  return math::quantize_scaled(q.qmap, v, a, q.zero);
}

// Code for v in a block of scale a (SPEC 4), by the coder or the search.
QRMS_DEV uint8_t quantize(const Quantizer &q, float v, float a) {
  return q.dynamic ? math::quantize_scaled(q.coder, v, a) : quantize_search(q, v, a);
}

// The same for a thread's 8 values of one block, choosing between coder and
// search once for the 8 (the choice is uniform over the block).
QRMS_DEV void quantize8(const Quantizer &q, const float (&v)[kVec], float a, uint8_t (&c)[kVec]) {
  if (q.dynamic) {
#pragma unroll
    for (int j = 0; j < kVec; ++j) c[j] = math::quantize_scaled(q.coder, v[j], a);
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) c[j] = quantize_search(q, v[j], a);
  }
}

// ---- state of one thread's 8 elements ----------------------------------------

// The old state as floats (SPEC 4: value = qmap[code] * scale; 4-bit state:
// qmap is the buffer's 16-entry map, and the thread's 8 codes are 4 bytes).
template <StateKind K>
QRMS_DEV void load_state(const void *state, const float *scale, const float *qmap, int64_t i0, int64_t n, bool vec,
                         float (&s)[kVec]) {
  if constexpr (K == StateKind::Float32) {
    load8(static_cast<const float *>(state), i0, n, vec, s);
  } else if constexpr (K == StateKind::Blockwise4) {
    const uint8_t *codes = static_cast<const uint8_t *>(state) + i0 / 2;
    uint8_t c[kVec / 2];
    if (vec && i0 + kVec <= n) {
      const uint32_t w = *reinterpret_cast<const uint32_t *>(codes);
      memcpy(c, &w, sizeof(c));
    } else {
#pragma unroll
      for (int k = 0; k < kVec / 2; ++k) c[k] = i0 + 2 * k < n ? codes[k] : uint8_t(0);
    }
    const float a = i0 < n ? scale[i0 / math::kBlockSize4] : 0.0f;  // a block past n has no absmax
#pragma unroll
    for (int j = 0; j < kVec; ++j) s[j] = math::dequantize(qmap, uint8_t((c[j / 2] >> (4 * (j & 1))) & 15), a);
  } else {
    uint8_t c[kVec];
    load8(static_cast<const uint8_t *>(state), i0, n, vec, c);
    const float a = K == StateKind::Blockwise8 ? scale[i0 / math::kBlockSize] : scale[0];
#pragma unroll
    for (int j = 0; j < kVec; ++j) s[j] = math::dequantize(qmap, c[j], a);
  }
}

// Max over each group of `Lanes` consecutive lanes (32: the warp), returned
// to every lane of the group; all 32 lanes must call it (max is exact: any
// order gives the bits of the CPU's sequential max).
template <int Lanes = 32>
QRMS_DEV float warp_max(float v) {
#pragma unroll
  for (int offset = Lanes / 2; offset > 0; offset >>= 1) v = math::nan_max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The new state back to memory. Blockwise8: the calling warp holds one whole
// quantization block (all 32 lanes must call), computes its absmax over the
// elements below n and stores it. Tensor8: quantizes against new_max1 = scale[1].
// Blockwise4: the same per half-warp (a block of 128) with q the 4-bit coder;
// a code past n is 0 (an odd tensor's last high nibble). q: the kind's
// quantizer (Quantizer for 8-bit state, math::Coder4 for 4-bit, unused for
// 32-bit).
template <StateKind K, typename Q>
QRMS_DEV void store_state(void *state, float *scale, const Q &q, int64_t i0, int64_t n, bool vec,
                          const float (&s)[kVec]) {
  if constexpr (K == StateKind::Float32) {
    (void)q;
    store8(static_cast<float *>(state), i0, n, vec, s);
  } else if constexpr (K == StateKind::Blockwise4) {
    float m = 0.0f;
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      if (i0 + j < n) m = math::nan_max(m, fabsf(s[j]));
    const float a = warp_max<16>(m);
    if (threadIdx.x % 16 == 0 && i0 < n) scale[i0 / math::kBlockSize4] = a;
    uint8_t c[kVec / 2];
#pragma unroll
    for (int k = 0; k < kVec / 2; ++k) {
      const uint8_t lo = math::quantize4_grouped(q, s[2 * k], a);
      const uint8_t hi = i0 + 2 * k + 1 < n ? math::quantize4_grouped(q, s[2 * k + 1], a) : uint8_t(0);
      c[k] = math::pack4(lo, hi);
    }
    uint8_t *codes = static_cast<uint8_t *>(state) + i0 / 2;
    if (vec && i0 + kVec <= n) {
      uint32_t w;
      memcpy(&w, c, sizeof(w));
      *reinterpret_cast<uint32_t *>(codes) = w;
    } else {
#pragma unroll
      for (int k = 0; k < kVec / 2; ++k)
        if (i0 + 2 * k < n) codes[k] = c[k];
    }
  } else {
    float a;
    if constexpr (K == StateKind::Blockwise8) {
      float m = 0.0f;
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        if (i0 + j < n) m = math::nan_max(m, fabsf(s[j]));
      a = warp_max(m);
      if (threadIdx.x % 32 == 0) scale[i0 / math::kBlockSize] = a;
    } else {
      a = scale[1];
    }
    uint8_t c[kVec];
    quantize8(q, s, a, c);
    store8(static_cast<uint8_t *>(state), i0, n, vec, c);
  }
}

// Largest non-negative float into *dst (float bits of non-negative values
// order like unsigned integers).
QRMS_DEV void atomic_max_nonneg(float *dst, float v) {
  atomicMax(reinterpret_cast<unsigned int *>(dst), __float_as_uint(v));
}

}  // namespace gpu
}  // namespace qrms
