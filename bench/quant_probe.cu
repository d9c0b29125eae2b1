// Kernels for scripts/sass-report.sh, not linked into anything. The
// quantizer probes only quantize: the SASS of their loops is the
// per-element cost of each quantizer on its own (the update kernels mix it
// with loads, the update and the stores). The common-path probes run the
// update pass's own element code (update8) on a tensor whose options are
// constants, so that the SASS of their loops is what a plain step executes.
#include <cstdint>

#include "update_kernels.cuh"

namespace qrms {
namespace gpu {

// The rule before the coder: nearest_code with the binary search in shared memory.
__global__ void __launch_bounds__(kThreads) probe_search_kernel(const float *qmap_global, const float *in, uint8_t *out,
                                                                int64_t n, float absmax) {
  __shared__ float qmap[256];
  __shared__ uint8_t zero;
  load_qmap(qmap_global, qmap, zero);
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads)
    out[i] = math::quantize_scaled(qmap, in[i], absmax, zero);
}

// The dynamic maps' coder alone (the update kernels also carry the search
// for other maps, on a branch that is uniform over the block).
__global__ void __launch_bounds__(kThreads) probe_coder_kernel(const float *qmap_global, const float *in, uint8_t *out,
                                                               int64_t n, float absmax) {
  __shared__ Quantizer quant;
  load_quantizer(qmap_global, quant);
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads)
    out[i] = math::quantize_scaled(quant.coder, in[i], absmax);
}

// An empty loop of the same shape: its instructions are the walk, not the quantizer.
__global__ void __launch_bounds__(kThreads) probe_copy_kernel(const float *, const float *in, uint8_t *out, int64_t n,
                                                              float absmax) {
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads)
    out[i] = uint8_t(in[i] * absmax);
}

// The update pass on its common path: full, aligned chunks (vector access,
// n at INT64_MAX so that the bounds tests fold), no weight decay,
// skip_zeros, clipping, max_unorm, loss scale or stochastic rounding, and
// momentum only with Mom. The maps are read and checked as in the update
// kernel, so the search for maps without a coder stays behind its branch.
// The constants also fold the selects rms_element applies on every element
// of the update kernel (weight decay, skip_zeros, momentum): about 6-10
// instructions per element it does not count. Run-time options here would
// not model the kernel better: nvcc then versions this loop four ways.
template <typename T, StateKind K, bool Mom>
__global__ void __launch_bounds__(kThreads, 4)
    probe_common_kernel(T *param, const T *grad, void *state1, float *scale1, void *state2, float *scale2,
                        const float *qmap, int64_t total_chunks, float lr, float alpha, float eps) {
  __shared__ UpdateShared<K> sh;
  const Quantizer *const built[2] = {nullptr, nullptr};
  sh.load(qmap, qmap, built);
  TensorMeta m{};
  m.param = param;
  m.grad = grad;
  m.state1 = state1;
  m.scale1 = scale1;
  m.state2 = state2;
  m.scale2 = scale2;
  m.n = INT64_MAX;
  m.hp = math::Hyper{lr, alpha, eps, 0.0f, Mom ? 0.9f : 0.0f, 0.0f, 0, 0};
  m.vec = 1;
  for (int64_t c = blockIdx.x; c < total_chunks; c += gridDim.x)
    update8<T, K>(m, c * kChunk + int64_t(threadIdx.x) * kVec, 1.0f, false, 0, sh);
}

#define QRMS_PROBE_COMMON(T, K)                                                                                  \
  template __global__ void probe_common_kernel<T, K, false>(T *, const T *, void *, float *, void *, float *,     \
                                                            const float *, int64_t, float, float, float);         \
  template __global__ void probe_common_kernel<T, K, true>(T *, const T *, void *, float *, void *, float *,      \
                                                           const float *, int64_t, float, float, float);
#define QRMS_PROBE_COMMON_KIND(K)       \
  QRMS_PROBE_COMMON(float, K)           \
  QRMS_PROBE_COMMON(math::half_t, K)    \
  QRMS_PROBE_COMMON(math::bf16_t, K)
QRMS_PROBE_COMMON_KIND(StateKind::Float32)
QRMS_PROBE_COMMON_KIND(StateKind::Blockwise8)
QRMS_PROBE_COMMON_KIND(StateKind::Tensor8)
QRMS_PROBE_COMMON_KIND(StateKind::Blockwise4)

}  // namespace gpu
}  // namespace qrms
