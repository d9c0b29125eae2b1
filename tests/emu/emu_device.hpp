// What device code sees on the emulated device: the CUDA keywords, the
// built-in index variables, barriers, warp shuffles and votes, atomics,
// vector types, bit casts and the integer min/max of CUDA's headers.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "emu_exec.hpp"

#define QRMS_EMULATED_DEVICE 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __grid_constant__
#define __restrict__
// Blocks run one after another, so one static object per __shared__
// variable is the block's shared memory.
#define __shared__ static

#define threadIdx (::emu::cur().tid)
#define blockIdx (::emu::cur().block->idx)
#define blockDim (::emu::cur().block->dim)
#define gridDim (::emu::cur().block->grid)
constexpr int warpSize = 32;

#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncthreads_count(p) ::emu::syncthreads_count(__FILE__, __LINE__, (p))
#define __syncthreads_and(p) int(::emu::syncthreads_count(__FILE__, __LINE__, (p)) == ::emu::cur().block->nthreads)
#define __syncthreads_or(p) int(::emu::syncthreads_count(__FILE__, __LINE__, (p)) != 0)
#define __syncwarp(...) ::emu::syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_sync(mask, v, src, ...) ::emu::shfl("__shfl_sync", __FILE__, __LINE__, mask, v, ::emu::Shfl::Idx, src, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, v, m, ...) ::emu::shfl("__shfl_xor_sync", __FILE__, __LINE__, mask, v, ::emu::Shfl::Xor, m, ##__VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) ::emu::shfl("__shfl_down_sync", __FILE__, __LINE__, mask, v, ::emu::Shfl::Down, d, ##__VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) ::emu::shfl("__shfl_up_sync", __FILE__, __LINE__, mask, v, ::emu::Shfl::Up, d, ##__VA_ARGS__)
#define __ballot_sync(mask, p) ::emu::ballot("__ballot_sync", __FILE__, __LINE__, mask, p)
#define __any_sync(mask, p) (::emu::ballot("__any_sync", __FILE__, __LINE__, mask, p) != 0u)
#define __all_sync(mask, p) (::emu::ballot("__all_sync", __FILE__, __LINE__, mask, !(p)) == 0u)

// The kernel handle passed to cudaLaunchKernel (see cuda/device.cuh).
#define QRMS_KERNEL_HANDLE(...) (::emu::kernel_handle<&__VA_ARGS__>())

// ---- vector types -------------------------------------------------------------
// With their CUDA alignment, so UndefinedBehaviorSanitizer reports a
// misaligned vector access as the GPU would fault on it.
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
struct alignas(4) uchar4 { unsigned char x, y, z, w; };
struct alignas(2) uchar2 { unsigned char x, y; };

namespace emu {

inline unsigned lane_id() { return unsigned(cur().linear % 32); }

inline void syncwarp(const char *file, int line, unsigned mask = 0xffffffffu) {
  uint64_t all[32];
  warp_collective("__syncwarp", mask, 0, file, line, all);
}

enum class Shfl { Idx, Xor, Down, Up };

template <typename T>
T shfl(const char *op, const char *file, int line, unsigned mask, T v, Shfl mode, int arg, int width = 32) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
  if (width <= 0 || width > 32 || (width & (width - 1))) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "%s at %s:%d: width %d is not a power of two <= 32", op, file, line, width);
    cur().block->fail(cur().linear, buf);
  }
  uint64_t bits = 0, all[32];
  std::memcpy(&bits, &v, sizeof(T));
  warp_collective(op, mask, bits, file, line, all);
  const int lane = int(lane_id()), base = lane / width * width, sub = lane % width;
  int src = lane;
  switch (mode) {
    case Shfl::Idx: src = base + ((arg % width) + width) % width; break;
    case Shfl::Xor: src = (sub ^ arg) < width ? base + (sub ^ arg) : lane; break;
    case Shfl::Down: src = sub + arg < width ? lane + arg : lane; break;
    case Shfl::Up: src = sub - arg >= 0 ? lane - arg : lane; break;
  }
  if (!(mask >> src & 1u)) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%s at %s:%d: lane %d reads lane %d, which is not in mask 0x%08x", op, file, line,
                  lane, src, mask);
    cur().block->fail(cur().linear, buf);
  }
  T out;
  std::memcpy(&out, &all[src], sizeof(T));
  return out;
}

inline unsigned ballot(const char *op, const char *file, int line, unsigned mask, bool p) {
  uint64_t all[32];
  warp_collective(op, mask, p ? 1 : 0, file, line, all);
  unsigned r = 0;
  for (int l = 0; l < 32; ++l)
    if (all[l]) r |= 1u << l;
  return r;
}

// ---- atomics (compare-and-swap loops, so OS threads are safe) ----------------

template <typename T, typename F>
T atomic_update(T *p, F f) {
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  T next = f(old);
  while (!__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) next = f(old);
  return old;
}

}  // namespace emu

template <typename T>
T atomicAdd(T *p, T v) {
  return emu::atomic_update(p, [v](T a) { return T(a + v); });
}
template <typename T>
T atomicSub(T *p, T v) {
  return emu::atomic_update(p, [v](T a) { return T(a - v); });
}
template <typename T>
T atomicMax(T *p, T v) {
  return emu::atomic_update(p, [v](T a) { return a < v ? v : a; });
}
template <typename T>
T atomicMin(T *p, T v) {
  return emu::atomic_update(p, [v](T a) { return v < a ? v : a; });
}
template <typename T>
T atomicExch(T *p, T v) {
  return emu::atomic_update(p, [v](T) { return v; });
}
template <typename T>
T atomicOr(T *p, T v) {
  return emu::atomic_update(p, [v](T a) { return T(a | v); });
}
template <typename T>
T atomicAnd(T *p, T v) {
  return emu::atomic_update(p, [v](T a) { return T(a & v); });
}
template <typename T>
T atomicCAS(T *p, T expected, T desired) {
  __atomic_compare_exchange(p, &expected, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return expected;
}

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <typename T>
T __ldg(const T *p) {
  return *p;
}

// ---- bit casts and integer helpers --------------------------------------------

inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned int u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline int __float_as_int(float f) { return int(__float_as_uint(f)); }
inline float __int_as_float(int i) { return __uint_as_float(unsigned(i)); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline unsigned __activemask() { return emu::cur().block->lanes_of(emu::cur().linear / 32); }

// CUDA's global min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline int max(int a, int b) { return a < b ? b : a; }
inline unsigned max(unsigned a, unsigned b) { return a < b ? b : a; }
inline long max(long a, long b) { return a < b ? b : a; }
inline unsigned long max(unsigned long a, unsigned long b) { return a < b ? b : a; }
inline long long max(long long a, long long b) { return a < b ? b : a; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a < b ? b : a; }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
using std::isfinite;
using std::isinf;
using std::isnan;
