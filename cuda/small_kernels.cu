// The small kernels around the update passes (zeroing accumulators, the
// Tensor8 max1 := new_max1 swap), percentile clipping, and block-wise
// quantize / dequantize of arbitrary block size.
#include <cub/block/block_reduce.cuh>
#include <cuda/functional>

#include "device.cuh"

namespace qrms {
namespace gpu {

namespace {

// max that keeps NaN, as the CPU backend reduces.
struct NanMax {
  __device__ float operator()(float a, float b) const { return math::nan_max(a, b); }
};

// ---- around the update ------------------------------------------------------

// Zeroes the accumulators the pre-pass adds into (PrepMode): {sum u^2,
// sum P^2} of every max_unorm tensor and, for Tensor8, new_max1 of s and b;
// or, in a sharded step's writing pass, takes the reduced maxima. With
// stochastic rounding it also counts the step (in the pass All or Read), so
// that every block of the update kernel reads the same step as its key.
__global__ void update_prep_kernel_impl(const __grid_constant__ UpdateBatch args, int mode) {
  if (args.skip && *args.skip) return;
  for (int i = int(threadIdx.x); i < args.count; i += int(blockDim.x)) {
    const TensorMeta &m = args.t[i];
    if (mode == kPrepTakeMax) {
      if (m.new_max) {
        m.scale1[1] = m.new_max[0];
        if (m.scale2) m.scale2[1] = m.new_max[1];
      }
      continue;
    }
    if (mode == kPrepZeroMax) {
      float *nm = m.new_max ? m.new_max : m.scale1 + 1;
      nm[0] = 0.0f;
      if (m.scale2) (m.new_max ? m.new_max[1] : m.scale2[1]) = 0.0f;
    }
    if (m.hp.max_unorm > 0.0f) {
      m.unorm[0] = 0.0f;
      m.unorm[1] = 0.0f;
    }
    if (args.stochastic_round && m.step) ++*m.step;
  }
}

// Tensor8: new_max1 becomes max1 for the next step.
__global__ void tensor8_finalize_kernel_impl(const __grid_constant__ UpdateBatch args, int /*unused*/) {
  if (args.skip && *args.skip) return;
  for (int i = int(threadIdx.x); i < args.count; i += int(blockDim.x)) {
    const TensorMeta &m = args.t[i];
    m.scale1[0] = m.scale1[1];
    if (m.scale2) m.scale2[0] = m.scale2[1];
  }
}

// ---- percentile clipping ----------------------------------------------------

// gnorm_scale of each job is the accumulator of q = sum(float(G)^2).
__global__ void clip_prep_kernel_impl(const __grid_constant__ ClipBatch args) {
  if (args.skip && *args.skip) return;
  for (int i = int(threadIdx.x); i < args.count; i += int(blockDim.x)) *args.j[i].acc = 0.0f;
}

// q of every job: products in float, sums in double (as the CPU backend),
// one block partial per tensor run of the grid-stride walk, atomically added.
template <typename T>
__global__ void __launch_bounds__(kThreads) clip_norm_kernel_impl(const __grid_constant__ ClipBatch args) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  if (args.skip && *args.skip) return;
  const float unscale = args.grad_unscale ? *args.grad_unscale : 1.0f;
  double acc = 0.0;
  int cur = -1, ti = 0;
  for (int64_t c = blockIdx.x; c < args.total_chunks; c += gridDim.x) {
    while (c >= args.chunk_start[ti + 1]) ++ti;
    if (ti != cur) {  // uniform over the block
      if (cur >= 0) {
        const double total = Reduce(tmp).Sum(acc);
        if (threadIdx.x == 0) atomicAdd(args.j[cur].acc, float(total));
        __syncthreads();
      }
      acc = 0.0;
      cur = ti;
    }
    const ClipMeta &m = args.j[ti];
    const int64_t i0 = (c - args.chunk_start[ti]) * kChunk + int64_t(threadIdx.x) * kVec;
    if (i0 >= m.n) continue;
    T g[kVec];
    load8(static_cast<const T *>(m.grad), i0, m.n, m.vec != 0, g);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float x = math::grad_in(math::to_float(g[j]), unscale);  // 0 past n
      acc += double(x * x);
    }
  }
  if (cur >= 0) {
    const double total = Reduce(tmp).Sum(acc);
    if (threadIdx.x == 0) atomicAdd(args.j[cur].acc, float(total));
  }
}

// One block per job: step += 1, record q in the history, sort a copy, write
// the scale (SPEC 3), all in shared memory.
static_assert(kClipThreads >= math::kGnormHistory, "one thread per history entry");

__global__ void __launch_bounds__(kClipThreads) clip_finalize_kernel_impl(const __grid_constant__ ClipBatch args) {
  if (args.skip && *args.skip) return;
  const ClipMeta &m = args.j[blockIdx.x];
  __shared__ float hist[math::kGnormHistory], sorted[math::kGnormHistory];
  __shared__ int64_t step;
  const int t = int(threadIdx.x);
  if (t < math::kGnormHistory) hist[t] = m.gnorm_vec[t];
  if (t == 0) {
    step = *m.step + 1;
    if (m.advance) *m.step = step;
  }
  __syncthreads();
  if (t == 0) math::record_gnorm(hist, step, *m.acc);
  __syncthreads();
  // Rank sort in math::gnorm_less order: entry t goes after every entry
  // before it in that order and every equivalent one (equal, or both NaN)
  // with a lower index, so the ranks are a permutation, NaN entries included.
  int rank = 0;
  float v = 0.0f;
  if (t < math::kGnormHistory) {
    v = hist[t];
    for (int k = 0; k < math::kGnormHistory; ++k) {
      const float w = hist[k];
      rank += (math::gnorm_less(w, v) || (!math::gnorm_less(v, w) && k < t)) ? 1 : 0;
    }
    m.gnorm_vec[t] = v;
  }
  if (t < math::kGnormHistory) sorted[rank] = v;
  __syncthreads();
  if (t == 0) *m.gnorm_scale = math::clip_scale(hist, sorted, step, m.percentile);
}

// ---- non-finite gradients ----------------------------------------------------

// *found = 1 when any element of the listed gradients (times the unscale
// factor) is inf or NaN. Every writer stores the same value; the store is
// atomic because concurrent plain stores are a data race in CUDA's memory
// model (and a ThreadSanitizer report on the emulated device).
template <typename T>
__global__ void __launch_bounds__(kThreads) finite_kernel_impl(const __grid_constant__ ClipBatch args,
                                                               int32_t *found) {
  const float unscale = args.grad_unscale ? *args.grad_unscale : 1.0f;
  bool bad = false;
  int ti = 0;
  for (int64_t c = blockIdx.x; c < args.total_chunks; c += gridDim.x) {
    while (c >= args.chunk_start[ti + 1]) ++ti;
    const ClipMeta &m = args.j[ti];
    const int64_t i0 = (c - args.chunk_start[ti]) * kChunk + int64_t(threadIdx.x) * kVec;
    if (i0 >= m.n) continue;
    T g[kVec];
    load8(static_cast<const T *>(m.grad), i0, m.n, m.vec != 0, g);
#pragma unroll
    for (int j = 0; j < kVec; ++j) bad |= !isfinite(math::grad_in(math::to_float(g[j]), unscale));
  }
  if (bad) atomicExch(found, int32_t(1));
}

// ---- quantize / dequantize ----------------------------------------------------

// One block per quantization block (grid-stride): absmax = max |in|, then
// the nearest code of in / absmax (SPEC 4).
__global__ void __launch_bounds__(kThreads)
    quantize_blockwise_kernel_impl(const float *qmap_global, const float *in, uint8_t *codes, float *absmax, int64_t n,
                                   int64_t blocksize) {
  __shared__ Quantizer quant;
  __shared__ float block_absmax;
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  load_quantizer(qmap_global, quant);

  const int64_t nblocks = (n + blocksize - 1) / blocksize;
  for (int64_t blk = blockIdx.x; blk < nblocks; blk += gridDim.x) {
    const int64_t b0 = blk * blocksize, b1 = min(n, b0 + blocksize);
    float m = 0.0f;
    for (int64_t i = b0 + threadIdx.x; i < b1; i += kThreads) m = math::nan_max(m, fabsf(in[i]));
    const float a = Reduce(tmp).Reduce(m, NanMax{});
    if (threadIdx.x == 0) {
      block_absmax = a;
      absmax[blk] = a;
    }
    __syncthreads();
    const float scale = block_absmax;
    for (int64_t i = b0 + threadIdx.x; i < b1; i += kThreads)
      codes[i] = quantize(quant, in[i], scale);
    __syncthreads();  // tmp and block_absmax are reused
  }
}

__global__ void __launch_bounds__(kThreads)
    dequantize_blockwise_kernel_impl(const float *qmap_global, const uint8_t *codes, const float *absmax, float *out,
                                     int64_t n, int64_t blocksize) {
  __shared__ float qmap[256];
  __shared__ uint8_t zero;
  load_qmap(qmap_global, qmap, zero);
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
    out[i] = math::dequantize(qmap, codes[i], absmax[i / blocksize]);
}

// The map's quantizer, built once by one block and stored for the update
// kernels to copy (CudaBackend::prepare_map).
__global__ void __launch_bounds__(kThreads) build_quantizer_kernel_impl(const float *qmap_global, Quantizer *out) {
  __shared__ Quantizer quant;
  load_quantizer(qmap_global, quant);
  copy_quantizer(quant, *out);
}

}  // namespace

const void *update_prep_kernel() {
  return QRMS_KERNEL_HANDLE(update_prep_kernel_impl);
}
const void *tensor8_finalize_kernel() {
  return QRMS_KERNEL_HANDLE(tensor8_finalize_kernel_impl);
}
const void *clip_prep_kernel() {
  return QRMS_KERNEL_HANDLE(clip_prep_kernel_impl);
}
template <typename T>
const void *clip_norm_kernel() {
  return QRMS_KERNEL_HANDLE(clip_norm_kernel_impl<T>);
}
template const void *clip_norm_kernel<float>();
template const void *clip_norm_kernel<math::half_t>();
template const void *clip_norm_kernel<math::bf16_t>();
const void *clip_finalize_kernel() {
  return QRMS_KERNEL_HANDLE(clip_finalize_kernel_impl);
}
template <typename T>
const void *finite_kernel() {
  return QRMS_KERNEL_HANDLE(finite_kernel_impl<T>);
}
template const void *finite_kernel<float>();
template const void *finite_kernel<math::half_t>();
template const void *finite_kernel<math::bf16_t>();
const void *quantize_blockwise_kernel() {
  return QRMS_KERNEL_HANDLE(quantize_blockwise_kernel_impl);
}
const void *dequantize_blockwise_kernel() {
  return QRMS_KERNEL_HANDLE(dequantize_blockwise_kernel_impl);
}
const void *build_quantizer_kernel() {
  return QRMS_KERNEL_HANDLE(build_quantizer_kernel_impl);
}
size_t quantizer_bytes() {
  return sizeof(Quantizer);
}

}  // namespace gpu
}  // namespace qrms
