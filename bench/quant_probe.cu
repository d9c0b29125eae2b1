// Kernels that only quantize, for scripts/sass-report.sh: the SASS of their
// loops is the per-element cost of each quantizer on its own (the update
// kernels mix it with loads, the update and the stores). Not linked into
// anything.
#include "device.cuh"

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

}  // namespace gpu
}  // namespace qrms
