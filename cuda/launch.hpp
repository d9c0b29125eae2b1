// What the CUDA backend's host code (cuda_backend.cu) and the kernel files
// share: the by-value launch tables of the multi-tensor kernels and the
// kernel handles. Plain C++ types only, so both sides see the same layout.
//
// Multi-tensor launches (apex multi_tensor_apply style): one launch covers up
// to kMaxTensors tensors. Each tensor is cut into chunks of kChunk elements;
// chunk_start[t] is the first global chunk of tensor t, so the grid walks the
// global chunks [0, total_chunks) with a grid-stride loop and finds each
// chunk's tensor by walking chunk_start forward. The table is per tensor, not
// per block, so one launch serves tensors of any size; only more than
// kMaxTensors tensors split a group into several launches.
#pragma once

#include <cstdint>

#include "core.hpp"

namespace qrms {
namespace gpu {

constexpr int kThreads = 256;                // threads per block of every multi-tensor kernel
constexpr int kVec = 8;                      // consecutive elements per thread
constexpr int64_t kChunk = kThreads * kVec;  // elements per chunk: 8 quantization blocks of 256
constexpr int kBlocksPerSm = 8;              // fallback when the occupancy query is missing
static_assert(kChunk % math::kBlockSize == 0, "chunks must hold whole quantization blocks");
static_assert(kVec * 32 == math::kBlockSize, "one warp covers one quantization block");

// Kernel parameters may take up to 32764 bytes on sm_70+ with CUDA 12.1+.
constexpr size_t kParamLimit = 32764;

// One tensor of an update launch.
struct TensorMeta {
  void *param;
  const void *grad;
  void *state1;   // float* (Float32) or uint8_t* codes
  void *state2;   // momentum buffer or nullptr
  float *scale1;  // Blockwise8: absmax per 256; Tensor8: {max1, new_max1}
  float *scale2;
  const float *gnorm_scale;  // nullptr: 1
  float *unorm;              // {sum u^2, sum P^2} when hp.max_unorm > 0
  int64_t *step;             // steps taken; the update kernel adds 1 (prep kernel with stochastic rounding)
  float *new_max;            // Tensor8 of a sharded step: the pre-pass's maxima (nullptr: scale1[1], scale2[1])
  int64_t n;
  math::Hyper hp;
  int32_t vec;  // 1: every pointer allows 8-element vector access
};

constexpr int kMaxTensors = 248;  // the largest that fits kParamLimit

struct Quantizer;  // device.cuh

struct UpdateBatch {
  const float *qmap;           // 256 device floats (8-bit kinds): the square averages' map
  const float *momentum_qmap;  // the momentum buffers' map (the same pointer when the maps are one)
  // The quantizers of qmap and momentum_qmap built once beforehand
  // (CudaBackend::prepare_map), which each block copies; nullptr: each block
  // builds its own from the map.
  const Quantizer *quant[2];
  const float *grad_unscale;  // every gradient times *grad_unscale (nullptr: 1)
  const int32_t *skip;        // while *skip != 0 (non-finite gradients) no kernel changes anything
  int64_t total_chunks;
  int32_t count;
  // 1: stochastic rounding of the (16-bit) params; then the prep kernel
  // advances the step counters, which the update kernel reads as its key.
  int32_t stochastic_round;
  uint64_t seed;
  int64_t chunk_start[kMaxTensors + 1];
  TensorMeta t[kMaxTensors];
};
static_assert(sizeof(UpdateBatch) + 16 <= kParamLimit, "update table exceeds the kernel parameter limit");

// One gradient of a percentile clipping launch.
struct ClipMeta {
  const void *grad;
  float *gnorm_vec;  // 100 floats
  int64_t *step;       // steps taken before this one
  float *gnorm_scale;  // the scale
  float *acc;          // accumulates q: gnorm_scale, or a sharded step's sum slot
  int64_t n;
  int32_t percentile;
  int32_t vec;
  int32_t advance;     // 1: also store *step + 1
  int32_t reserved;
};

constexpr int kMaxClipJobs = 448;
constexpr int kClipThreads = 128;  // clip_finalize_kernel: one block per job

struct ClipBatch {
  const float *grad_unscale;
  const int32_t *skip;
  int64_t total_chunks;
  int32_t count;
  int32_t reserved;
  int64_t chunk_start[kMaxClipJobs + 1];
  ClipMeta j[kMaxClipJobs];
};
static_assert(sizeof(ClipBatch) + 16 <= kParamLimit, "clip table exceeds the kernel parameter limit");

// What update_prep_kernel does to each tensor of its table.
enum PrepMode : int {
  kPrepZero = 0,        // zero the max_unorm sums
  kPrepZeroMax = 1,     // and Tensor8's new_max1 targets
  kPrepTakeMax = 2,     // sharded Write pass: scale[1] := new_max (the reduced maxima)
};

// Kernel handles for cudaLaunchKernel, defined (and instantiated) in the
// kernel files. Update kernels take (UpdateBatch); prep/finalize kernels
// (UpdateBatch, int mode); clip kernels (ClipBatch); slots_kernel
// (int op, float *v, int64_t n, int32_t *flag), op a core::SlotOp.
template <typename T, core::StateKind K>
const void *update_kernel();
template <typename T, core::StateKind K>
const void *reduce_kernel();
const void *update_prep_kernel();
const void *tensor8_finalize_kernel();
template <typename T>
const void *clip_norm_kernel();
const void *clip_prep_kernel();
const void *clip_finalize_kernel();
// (ClipBatch, int32_t *found): sets *found = 1 when a gradient holds inf/NaN.
template <typename T>
const void *finite_kernel();
// (qmap, in, codes, absmax, n, blocksize) and (qmap, codes, absmax, out, n, blocksize)
const void *quantize_blockwise_kernel();
const void *dequantize_blockwise_kernel();
// (qmap, Quantizer *out), one block: the map's quantizer into global memory
// (quantizer_bytes() of it).
const void *build_quantizer_kernel();
size_t quantizer_bytes();
const void *slots_kernel();

}  // namespace gpu
}  // namespace qrms
