// The core layer: stateless operations on raw pointers, one implementation
// per backend (src/cpu_backend.cpp, cuda/cuda_backend.cu). Nothing here knows
// about optimizer objects; the class layer (src/optimizer.cpp) and the C ABI
// (capi/) call these.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "element.hpp"
#include "qrmsprop/qrmsprop.hpp"

namespace qrms {
namespace core {

// How a tensor's state is stored.
enum class StateKind : int32_t {
  Float32 = 0,      // s, b: n floats
  Blockwise8 = 1,   // s, b: n codes + ceil(n/256) absmax floats
  Tensor8 = 2,      // s, b: n codes + 2 floats {max1, new_max1}
  Blockwise4 = 3,   // s, b: ceil(n/2) bytes of 4-bit codes + ceil(n/128) absmax floats
};

// One tensor of a (multi-tensor) update. All pointers are device pointers.
struct TensorUpdate {
  void *param = nullptr;
  const void *grad = nullptr;
  int64_t n = 0;
  void *state1 = nullptr;          // square average: float* or uint8_t* codes
  void *state2 = nullptr;          // momentum buffer, nullptr when hp.momentum == 0
  float *scale1 = nullptr;         // 8-bit: absmax per block, or {max1, new_max1}
  float *scale2 = nullptr;         // the same for the momentum buffer
  const float *gnorm_scale = nullptr;  // nullptr means 1
  float *unorm = nullptr;          // 2 floats of scratch when hp.max_unorm > 0
  int64_t *step = nullptr;         // steps taken; the writing pass adds 1 (nullptr: no counter)
  // Sharded steps: where the read-only pass stores max |s_new| and max |b_new|
  // (per-tensor 8-bit) for the cross-rank reduction, and where the writing
  // pass takes new_max1 from. nullptr: scale1[1] and scale2[1] directly.
  float *new_max = nullptr;
  math::Hyper hp{};
};

// One tensor of a (multi-tensor) percentile clipping pass.
struct ClipJob {
  const void *grad = nullptr;
  int64_t n = 0;
  float *gnorm_vec = nullptr;      // 100 floats
  int64_t *step = nullptr;         // steps taken before this one; this step is *step + 1
  bool advance = false;            // also store *step + 1 (when no update pass counts the step)
  int32_t percentile = 100;
  float *gnorm_scale = nullptr;    // output
  float *sumsq = nullptr;          // sharded steps: the squared norm, partial (Read) then reduced (Write)
};

// One gradient of a non-finite check.
struct GradRef {
  const void *grad = nullptr;
  int64_t n = 0;
};

// Which part of update/clip a call runs. A sharded step runs Read for every
// group, reduces the figures it produced across ranks, then runs Write.
//   Read:  changes nothing but the figures: clip's sumsq, update's unorm sums
//          and new_max (per-tensor maxima);
//   Write: the rest, from those figures;
//   All:   both, as one process holding whole tensors does.
enum class Pass : int32_t { All = 0, Read = 1, Write = 2 };

// What every pass of one optimizer step reads besides its tensors.
struct StepControl {
  const float *grad_unscale = nullptr;  // device float multiplying every gradient first; nullptr: 1
  const int32_t *skip = nullptr;        // device flag: while *skip != 0 a pass changes nothing
  Pass pass = Pass::All;
  // Stochastic rounding of 16-bit parameters (float32 ones ignore it), keyed
  // by seed, the tensor's step (the one this pass takes), hp.stream and the
  // element index (math::rounding_bits).
  bool stochastic_round = false;
  uint64_t seed = 0;
  // The momentum buffers' map (8-bit kinds; 256 device floats); nullptr:
  // update's qmap, the square averages' map.
  const float *momentum_qmap = nullptr;
};

// Stream-ordered helpers around a cross-rank all-reduce of device floats.
enum class SlotOp : int32_t {
  EncodeMax = 0,  // v[n+i] = isnan(v[i]) ? 1 : 0, then v[i] = isnan(v[i]) ? 0 : v[i]
  DecodeMax = 1,  // v[i] = v[n+i] > 0 ? NaN : v[i]  (after a max of all 2n values)
  FromFlag = 2,   // v[0] = *flag != 0 ? 1 : 0
  ToFlag = 3,     // *flag = v[0] > 0 ? 1 : 0
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;

  // Zero-filled memory on the backend's device. Throws OutOfMemoryError.
  virtual void *alloc(size_t bytes) = 0;
  virtual void free(void *p) noexcept = 0;
  // Synchronous copies between host and device memory (not used by step).
  virtual void to_host(void *dst, const void *src, size_t bytes) = 0;
  virtual void from_host(void *dst, const void *src, size_t bytes) = 0;
  // Throws DeviceError when p is not memory of this backend's device.
  virtual void check_pointer(const void *p, const char *what) = 0;

  // qmap (256 device floats) keeps its values while this backend lives, and
  // later updates pass it again: a backend may derive once what it needs
  // from the map (the CUDA backend builds its quantizer, which every block
  // of every update launch would otherwise build). Synchronous, at setup
  // time; updates with maps never prepared stay correct.
  virtual void prepare_map(const float *qmap) { (void)qmap; }

  // Stream-ordered zeroing of device memory.
  virtual void zero(void *p, size_t bytes, void *stream) = 0;

  // Every tensor in `tensors` has state kind `kind` and params/grads of
  // `dtype`. qmap: 256 device floats (8-bit kinds only), the map of the square
  // averages (of the momentum buffers too unless ctl.momentum_qmap); 4-bit
  // state uses the fixed maps of math::square_map4 and math::momentum_map4.
  virtual void update(StateKind kind, Dtype dtype, const TensorUpdate *tensors, size_t count,
                      const float *qmap, const StepControl &ctl, void *stream) = 0;
  // Percentile clipping for `count` gradients of `dtype`.
  virtual void clip(Dtype dtype, const ClipJob *jobs, size_t count, const StepControl &ctl, void *stream) = 0;
  // Sets *found = 1 (device int32) when any element of the gradients, times
  // *grad_unscale when given, is inf or NaN; leaves it as it is otherwise.
  virtual void check_finite(Dtype dtype, const GradRef *grads, size_t count, const float *grad_unscale,
                            int32_t *found, void *stream) = 0;

  // See SlotOp; v holds n floats (2n for the max encodings).
  virtual void slots(SlotOp op, float *v, int64_t n, int32_t *flag, void *stream) = 0;

  virtual void quantize_blockwise(const float *qmap, const float *in, uint8_t *codes, float *absmax,
                                  int64_t n, int64_t blocksize, void *stream) = 0;
  virtual void dequantize_blockwise(const float *qmap, const uint8_t *codes, const float *absmax,
                                    float *out, int64_t n, int64_t blocksize, void *stream) = 0;
};

std::unique_ptr<Backend> make_cpu_backend();
// Throws DeviceError when CUDA support is not built in or the device does not
// exist. device_index -1 means the caller's current CUDA device (used by the
// core C entry points, which work on whatever device is current).
std::unique_ptr<Backend> make_cuda_backend(int device_index);
int cuda_device_count() noexcept;
// The CUDA device whose (non-managed) device memory p is, or -1 for any other
// pointer and in builds without CUDA. Lets the CPU backend refuse GPU memory.
int cuda_pointer_device(const void *p) noexcept;

// Vector loops of the CPU backend: baseline x86-64 (SSE2) or AVX2, chosen
// at load time (AVX2, with F16C, when the CPU has both, unless
// QRMS_CPU_SIMD=baseline).
// Results are the same bits either way; tests switch with set_cpu_simd,
// which returns what is now used (AVX2 only where the CPU has it).
enum class CpuSimd : int32_t { Baseline = 0, Avx2 = 1 };
CpuSimd set_cpu_simd(CpuSimd want);
// float16 <-> float as the CPU loops in use convert parameters (F16C on the
// AVX2 path), for the tests: same bits as math::to_half / math::to_float
// (except that a signalling NaN may come out quiet).
void cpu_halves_to_floats(const math::half_t *in, float *out, int64_t n);
void cpu_floats_to_halves(const float *in, math::half_t *out, int64_t n);
// The 8-bit coder of the CPU loops in use, for the tests: codes[k] =
// math::quantize_scaled(coder, s[k], a) for k < len.
void cpu_encode(const math::DynamicCoder &coder, const float *s, float a, uint8_t *codes, int64_t len);

// The CPU backend's thread count (>= 1); n <= 0 restores the default.
void set_cpu_threads(int n);
int cpu_threads();

// Size of the first published qrms_config (it ends with skip_zeros): the
// smallest struct_size accepted.
constexpr size_t kConfigV1Size = offsetof(qrms_config, skip_zeros) + sizeof(int32_t);

// "1 parameter", "2 parameters": the one way messages state a count.
std::string counted(int64_t n, const char *noun);

// Number of 256-element blocks of an n-element tensor.
inline int64_t num_blocks(int64_t n) { return n / math::kBlockSize + (n % math::kBlockSize != 0); }
// Number of 128-element blocks (4-bit state).
inline int64_t num_blocks4(int64_t n) { return n / math::kBlockSize4 + (n % math::kBlockSize4 != 0); }

}  // namespace core
}  // namespace qrms
