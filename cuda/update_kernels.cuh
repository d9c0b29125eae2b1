// The multi-tensor update kernels of SPEC 3, templated on the param/grad
// dtype T and the state kind K only; every option (momentum, weight decay,
// skip_zeros, clipping, max_unorm) is a runtime value of the tensor's
// TensorMeta. Each kind's instantiations live in their own .cu file
// (update_32bit.cu, update_blockwise8.cu, update_tensor8.cu,
// update_blockwise4.cu) so they compile in parallel.
//
// Walk: the grid strides over the global chunks of the launch table; block b
// takes chunks b, b + gridDim.x, ... Thread t of a block owns elements
// [chunk * 2048 + 8t, +8) of its chunk's tensor, so warp w owns exactly the
// quantization block chunk * 8 + w (4-bit: its half-warps own the blocks of
// 128 chunk * 16 + 2w and + 2w + 1).
#pragma once

#include <cub/block/block_reduce.cuh>

#include "device.cuh"

namespace qrms {
namespace gpu {

// Advances `ti` to the tensor that owns global chunk c (c only grows).
QRMS_DEV int owner(const int64_t *chunk_start, int64_t c, int ti) {
  while (c >= chunk_start[ti + 1]) ++ti;
  return ti;
}

// ---- the update pass -------------------------------------------------------

// What the update pass keeps in shared memory for state kind K: the
// quantizer of the square average (index 0) and of the momentum buffer (1),
// each with its map. Every thread of the block must call load(); `built`:
// UpdateBatch::quant.
template <StateKind K>
struct UpdateShared {  // the 8-bit kinds
  Quantizer q[2];
  QRMS_DEV void load(const float *qmap, const float *momentum_qmap, const Quantizer *const (&built)[2]) {
    load_quantizer(qmap, built[0], q[0]);
    load_quantizer(momentum_qmap, built[1], q[1]);
  }
  QRMS_DEV const float *map(int i) const { return q[i].qmap; }
  QRMS_DEV const Quantizer &coder(int i) const { return q[i]; }
};

template <>
struct UpdateShared<StateKind::Blockwise4> {  // the two fixed maps and their coders
  math::Map4 maps4[2];
  math::Coder4 coders4[2];
  QRMS_DEV void load(const float *, const float *, const Quantizer *const (&)[2]) { load_maps4(maps4, &coders4); }
  QRMS_DEV const float *map(int i) const { return maps4[i].v; }
  QRMS_DEV const math::Coder4 &coder(int i) const { return coders4[i]; }
};

template <>
struct UpdateShared<StateKind::Float32> {  // nothing to keep
  QRMS_DEV void load(const float *, const float *, const Quantizer *const (&)[2]) {}
  QRMS_DEV const float *map(int) const { return nullptr; }
  QRMS_DEV int coder(int) const { return 0; }
};

// One thread's elements [i0, i0 + 8) of tensor m: dequantize s (and b),
// rms_element, P -= lr * update_scale * u, store P and the new state
// (Blockwise8: new absmax per block; Tensor8: quantized against new_max1
// found by reduce_kernel). Block-wise: all 32 lanes of the warp call it.
// `sr`, `seed`: stochastic rounding of the parameters and its key.
// (bench/quant_probe.cu calls it with a TensorMeta of constant options, so
// that scripts/sass-report.sh can count the common path's instructions.)
template <typename T, StateKind K>
QRMS_DEV void update8(const TensorMeta &m, int64_t i0, float unscale, bool sr, uint64_t seed,
                      const UpdateShared<K> &sh) {
  const math::Hyper h = m.hp;
  const bool mom = h.momentum > 0.0f;
  const bool vec = m.vec != 0;
  const float gscale = m.gnorm_scale ? *m.gnorm_scale : 1.0f;
  const float uscale = h.max_unorm > 0.0f ? math::update_scale(h.max_unorm, h.eps, m.unorm[0], m.unorm[1]) : 1.0f;
  const int64_t step = sr && m.step ? *m.step : 0;

  T p[kVec], g[kVec];
  float s[kVec], b[kVec] = {};
  load8(static_cast<const T *>(m.param), i0, m.n, vec, p);
  load8(static_cast<const T *>(m.grad), i0, m.n, vec, g);
  load_state<K>(m.state1, m.scale1, sh.map(0), i0, m.n, vec, s);
  if (mom) load_state<K>(m.state2, m.scale2, sh.map(1), i0, m.n, vec, b);

#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const float pf = math::to_float(p[j]);
    float u;
    // An element skip_zeros leaves untouched keeps its stored bits.
    if (math::rms_element(h, pf, math::grad_in(math::to_float(g[j]), unscale), gscale, s[j], b[j], u)) {
      const float v = math::apply_update(pf, h.lr, uscale, u);
      p[j] = sr ? math::round_stochastic<T>(v, math::rounding_bits(seed, step, h.stream, i0 + j)) : math::from_float<T>(v);
    }
  }

  store8(static_cast<T *>(m.param), i0, m.n, vec, p);
  store_state<K>(m.state1, m.scale1, sh.coder(0), i0, m.n, vec, s);
  if (mom) store_state<K>(m.state2, m.scale2, sh.coder(1), i0, m.n, vec, b);
}

// The first element of thread's warp (block-wise kinds: the warp computes
// its block's absmax together, so it goes on as a whole while its first
// element exists) or of the thread (otherwise), for the thread's i0.
template <StateKind K>
QRMS_DEV int64_t first_element(int64_t i0) {
  return K == StateKind::Blockwise8 || K == StateKind::Blockwise4 ? i0 - int64_t(threadIdx.x % 32) * kVec : i0;
}

// The update pass (SPEC 3) over every chunk of the launch table. At least 4
// blocks per SM (at most 64 registers): without the bound the f32 8-bit and
// 4-bit and the f16 per-tensor kernels took 73-77 registers (3 blocks); with
// it they keep at most 24 bytes on the stack (scripts/sass-report.sh).
template <typename T, StateKind K>
__global__ void __launch_bounds__(kThreads, 4) update_kernel_impl(const __grid_constant__ UpdateBatch args) {
  __shared__ UpdateShared<K> sh;
  if (args.skip && *args.skip) return;
  sh.load(args.qmap, args.momentum_qmap, args.quant);
  const float unscale = args.grad_unscale ? *args.grad_unscale : 1.0f;

  int ti = 0;
  for (int64_t c = blockIdx.x; c < args.total_chunks; c += gridDim.x) {
    ti = owner(args.chunk_start, c, ti);
    const TensorMeta &m = args.t[ti];
    // The block of the tensor's first chunk counts the step (no other thread
    // reads the counter during this kernel); with stochastic rounding the
    // prep kernel has counted it and every block reads it.
    if (c == args.chunk_start[ti] && threadIdx.x == 0 && m.step && !args.stochastic_round) ++*m.step;
    const int64_t i0 = (c - args.chunk_start[ti]) * kChunk + int64_t(threadIdx.x) * kVec;
    if (first_element<K>(i0) >= m.n) continue;
    update8<T, K>(m, i0, unscale, args.stochastic_round != 0, args.seed, sh);
  }
}

// ---- the read-only pre-pass ------------------------------------------------

// What the pre-pass collects per tensor: sums of squares of the unscaled
// update and of the parameter (max_unorm), and max |s_new|, max |b_new|
// (Tensor8's new_max1).
struct Partial {
  double u_sumsq, p_sumsq;
  float max1, max2;
};

struct CombinePartial {
  QRMS_DEV Partial operator()(const Partial &a, const Partial &b) const {
    return Partial{a.u_sumsq + b.u_sumsq, a.p_sumsq + b.p_sumsq, math::nan_max(a.max1, b.max1), math::nan_max(a.max2, b.max2)};
  }
};

using PartialReduce = cub::BlockReduce<Partial, kThreads>;

// Combines the block's partials of tensor m and adds them to its accumulators
// (zeroed by update_prep_kernel). Every thread of the block must call it.
template <StateKind K>
QRMS_DEV void flush_partial(const TensorMeta &m, const Partial &acc, typename PartialReduce::TempStorage &tmp) {
  const Partial total = PartialReduce(tmp).Reduce(acc, CombinePartial{});
  if (threadIdx.x == 0) {
    if constexpr (K == StateKind::Tensor8) {
      atomic_max_nonneg(m.new_max ? m.new_max : m.scale1 + 1, total.max1);
      if (m.scale2) atomic_max_nonneg(m.new_max ? m.new_max + 1 : m.scale2 + 1, total.max2);
    }
    if (m.hp.max_unorm > 0.0f) {
      atomicAdd(m.unorm, float(total.u_sumsq));
      atomicAdd(m.unorm + 1, float(total.p_sumsq));
    }
  }
  __syncthreads();  // tmp is reused by the next flush
}

// The same element math as update_kernel_impl without writing anything:
// for max_unorm (any kind) and for Tensor8's new_max1 = max |s_new|.
// Partials stay in registers while the block's chunks belong to one tensor
// and are flushed when the tensor changes, so a tensor gets about one atomic
// per block, not one per chunk.
template <typename T, StateKind K>
__global__ void __launch_bounds__(kThreads) reduce_kernel_impl(const __grid_constant__ UpdateBatch args) {
  __shared__ float qmap[256], bqmap[256];  // 8-bit: the square average's map, the momentum buffer's
  __shared__ uint8_t zero, bzero;
  __shared__ math::Map4 maps4[2];  // 4-bit: the same two, fixed
  __shared__ typename PartialReduce::TempStorage tmp;
  if (args.skip && *args.skip) return;
  if constexpr (K == StateKind::Blockwise8 || K == StateKind::Tensor8) {
    load_qmap(args.qmap, qmap, zero);
    load_qmap(args.momentum_qmap, bqmap, bzero);
  }
  if constexpr (K == StateKind::Blockwise4) load_maps4(maps4);
  const float *map1 = K == StateKind::Blockwise4 ? maps4[0].v : qmap;
  const float *map2 = K == StateKind::Blockwise4 ? maps4[1].v : bqmap;
  const float unscale = args.grad_unscale ? *args.grad_unscale : 1.0f;

  Partial acc{0.0, 0.0, 0.0f, 0.0f};
  int cur = -1, ti = 0;
  for (int64_t c = blockIdx.x; c < args.total_chunks; c += gridDim.x) {
    ti = owner(args.chunk_start, c, ti);
    if (ti != cur) {  // uniform over the block
      if (cur >= 0) flush_partial<K>(args.t[cur], acc, tmp);
      acc = Partial{0.0, 0.0, 0.0f, 0.0f};
      cur = ti;
    }
    const TensorMeta &m = args.t[ti];
    const int64_t i0 = (c - args.chunk_start[ti]) * kChunk + int64_t(threadIdx.x) * kVec;
    if (i0 >= m.n) continue;

    const math::Hyper h = m.hp;
    const bool mom = h.momentum > 0.0f;
    const bool vec = m.vec != 0;
    const float gscale = m.gnorm_scale ? *m.gnorm_scale : 1.0f;

    T p[kVec], g[kVec];
    float s[kVec], b[kVec] = {};
    load8(static_cast<const T *>(m.param), i0, m.n, vec, p);
    load8(static_cast<const T *>(m.grad), i0, m.n, vec, g);
    load_state<K>(m.state1, m.scale1, map1, i0, m.n, vec, s);
    if (mom) load_state<K>(m.state2, m.scale2, map2, i0, m.n, vec, b);

    float u_sumsq = 0.0f, p_sumsq = 0.0f;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if (i0 + j >= m.n) break;
      const float pf = math::to_float(p[j]);
      float u;
      math::rms_element(h, pf, math::grad_in(math::to_float(g[j]), unscale), gscale, s[j], b[j], u);  // u = 0 when skipped
      u_sumsq += u * u;
      p_sumsq += pf * pf;
      acc.max1 = math::nan_max(acc.max1, fabsf(s[j]));
      if (mom) acc.max2 = math::nan_max(acc.max2, fabsf(b[j]));
    }
    acc.u_sumsq += u_sumsq;
    acc.p_sumsq += p_sumsq;
  }
  if (cur >= 0) flush_partial<K>(args.t[cur], acc, tmp);
}

template <typename T, StateKind K>
const void *update_kernel() {
  return QRMS_KERNEL_HANDLE(update_kernel_impl<T, K>);
}
template <typename T, StateKind K>
const void *reduce_kernel() {
  return QRMS_KERNEL_HANDLE(reduce_kernel_impl<T, K>);
}

#define QRMS_INSTANTIATE_UPDATE(K)                       \
  template const void *update_kernel<float, K>();        \
  template const void *update_kernel<math::half_t, K>(); \
  template const void *update_kernel<math::bf16_t, K>(); \
  template const void *reduce_kernel<float, K>();        \
  template const void *reduce_kernel<math::half_t, K>(); \
  template const void *reduce_kernel<math::bf16_t, K>();

}  // namespace gpu
}  // namespace qrms
