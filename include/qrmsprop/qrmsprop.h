/*
 * qrmsprop: RMSprop with 32-bit and 8-bit quantized state, on the CPU and on
 * CUDA devices, behind a plain C99 ABI.
 *
 * Stability rules
 *  - Function names, constants and their values are never renamed or
 *    renumbered; new ones are appended.
 *  - Structs that begin with `struct_size` may grow at their end. A caller
 *    built against an older header passes its smaller struct_size and the
 *    library gives the missing fields their defaults. A struct_size smaller
 *    than the first published struct is QRMS_ERROR_INVALID_ARGUMENT. A
 *    struct_size larger than this library's struct is accepted only when the
 *    extra bytes are all zero (fields this version does not know must be
 *    left at their zero default), else INVALID_ARGUMENT.
 *  - No C++ exception ever crosses this interface. Every function that can
 *    fail returns a qrms_status_t; on failure qrms_last_error() returns a
 *    message for the calling thread naming the argument and the rule.
 *  - A failing call changes nothing: the optimizer stays as it was.
 *
 * Pointers: param, grad and state pointers are owned by the caller (params,
 * grads) or by the library (state); all must live on the device the call
 * names. "Device pointer" below means a host pointer for QRMS_DEVICE_CPU.
 */
#ifndef QRMSPROP_QRMSPROP_H
#define QRMSPROP_QRMSPROP_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define QRMS_API __declspec(dllexport)
#elif defined(__GNUC__)
#define QRMS_API __attribute__((visibility("default")))
#else
#define QRMS_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define QRMS_VERSION_MAJOR 0
#define QRMS_VERSION_MINOR 1
#define QRMS_VERSION_PATCH 0
#define QRMS_VERSION_NUMBER (QRMS_VERSION_MAJOR * 10000 + QRMS_VERSION_MINOR * 100 + QRMS_VERSION_PATCH)

typedef int32_t qrms_status_t;
#define QRMS_SUCCESS 0
#define QRMS_ERROR_INVALID_ARGUMENT 1
#define QRMS_ERROR_NOT_IMPLEMENTED 2
#define QRMS_ERROR_DEVICE 3
#define QRMS_ERROR_OUT_OF_MEMORY 4
#define QRMS_ERROR_BAD_STATE 5
#define QRMS_ERROR_INTERNAL 6

typedef int32_t qrms_dtype_t;
#define QRMS_FLOAT32 0
#define QRMS_FLOAT16 1
#define QRMS_BFLOAT16 2

typedef int32_t qrms_device_t;
#define QRMS_DEVICE_CPU 0
#define QRMS_DEVICE_CUDA 1

typedef int32_t qrms_variant_t;
#define QRMS_RMSPROP 0
#define QRMS_RMSPROP_8BIT 1
#define QRMS_RMSPROP_32BIT 2
#define QRMS_RMSPROP_4BIT 3  /* optim_bits 4: 4-bit block-wise state (docs/guide.md) */

/* Which state buffer qrms_optimizer_read_state returns. */
#define QRMS_STATE_SQUARE_AVG 0
#define QRMS_STATE_MOMENTUM 1

/* Same ABI as cudaStream_t; NULL is the default stream. Ignored on the CPU. */
typedef struct CUstream_st *qrms_stream_t;

/* MAJOR*10000 + MINOR*100 + PATCH of the loaded library. */
QRMS_API uint32_t qrms_version(void);
/* A static, never NULL, description of a status ("unknown status" if unknown). */
QRMS_API const char *qrms_status_string(qrms_status_t status);
/* The calling thread's last failure message; "" if none. Valid until the
 * thread's next failing qrms call. */
QRMS_API const char *qrms_last_error(void);
/* Number of CUDA devices; 0 without CUDA support in this build or without devices. */
QRMS_API int32_t qrms_cuda_device_count(void);
/* Threads the CPU backend uses (>= 1). Results do not depend on it.
 * n <= 0 restores the default (hardware concurrency, or QRMS_NUM_THREADS).
 * Errors: INVALID_ARGUMENT for n > 1024 (the setting is then unchanged). */
QRMS_API qrms_status_t qrms_set_num_threads(int32_t n);
QRMS_API int32_t qrms_get_num_threads(void);

/* ------------------------------------------------------------------------ */
/* Optimizer configuration (SPEC section 2). */
typedef struct qrms_config {
  size_t struct_size; /* sizeof(qrms_config) */
  float lr, alpha, eps, weight_decay, momentum;
  int32_t centered, optim_bits;
  int64_t min_8bit_size;
  int32_t percentile_clipping, block_wise;
  float max_unorm;
  int32_t skip_zeros;
  /* ---- appended in 0.1 after the first published struct (which ends at
   * skip_zeros); a smaller struct_size leaves it at its default, 0. ---- */
  int32_t skip_nonfinite; /* 1: a step whose gradients (after the unscale factor) hold any
                             inf or NaN changes nothing, for every parameter, and sets the
                             found-inf flag. Optimizer-wide: ignored in per-parameter configs. */
  /* ---- appended later in 0.1 (issue 15); a smaller struct_size leaves them 0. ---- */
  int32_t reserved0;           /* never read: the tail padding of the layout above (72 bytes),
                                  which its callers may leave uninitialised */
  uint64_t seed;               /* key of the stochastic rounding generator (any value). */
  int32_t stochastic_rounding; /* 1: the final rounding of a float16 / bfloat16 parameter is
                                  unbiased-stochastic instead of to nearest even (float32 parameters
                                  are unaffected); the random bits come from Philox4x32-10 keyed by
                                  seed, the parameter's step and index and the element's index, so
                                  results are reproducible, independent of the thread count and the
                                  same on the CPU and a GPU. Optimizer-wide: ignored in
                                  per-parameter configs. */
  /* ---- appended later in 0.1 (issue 15); a smaller struct_size leaves it 0. ---- */
  int32_t reserved1; /* never read: the tail padding of the layout above (88 bytes),
                        which its callers may leave uninitialised */
  int32_t state_map; /* QRMS_MAP_*: the map of 8-bit square-average state. QRMS_MAP_UNSIGNED
                        spends all 256 codes on the non-negative square average (about twice
                        the resolution of the default signed map, whose results are those of
                        bitsandbytes); the momentum buffer keeps the signed map; 32-bit and
                        4-bit state (fixed maps) are unaffected. Per parameter. Bytes after it are tail padding
                        (a later field starts at sizeof of this layout). */
} qrms_config;

/* Values of qrms_config.state_map. */
#define QRMS_MAP_SIGNED 0
#define QRMS_MAP_UNSIGNED 1

/* Fills *cfg with the defaults: lr 1e-2, alpha 0.99, eps 1e-8, weight_decay 0,
 * momentum 0, centered 0, optim_bits 32, min_8bit_size 4096,
 * percentile_clipping 100, block_wise 1, max_unorm 0, skip_zeros 0,
 * skip_nonfinite 0, stochastic_rounding 0, seed 0, state_map QRMS_MAP_SIGNED.
 * Writes at most `size` bytes (the caller's sizeof(qrms_config)) and sets struct_size to what it wrote: the smaller of
 * `size` and this library's struct. size below the first published struct
 * (64 bytes) is INVALID_ARGUMENT. FFI bindings call this one with the size of
 * the struct they declare. */
QRMS_API qrms_status_t qrms_config_init_sized(qrms_config *cfg, size_t size);
/* The exported qrms_config_init writes exactly the first published struct
 * (64 bytes, up to skip_zeros; struct_size 64) because a caller built
 * against that header has no more. Code compiled against this header calls
 * it through the macro below, which passes its own sizeof. NULL is ignored. */
QRMS_API void qrms_config_init(qrms_config *cfg);
#define qrms_config_init(cfg) ((void)qrms_config_init_sized((cfg), sizeof *(cfg)))

/* ------------------------------------------------------------------------ */
/* Optimizer objects. */
typedef struct qrms_optimizer_s *qrms_optimizer_t;

/* Creates an optimizer. variant QRMS_RMSPROP uses cfg->optim_bits;
 * QRMS_RMSPROP_8BIT, QRMS_RMSPROP_32BIT and QRMS_RMSPROP_4BIT fix it to 8,
 * 32 and 4. cfg may be NULL for the defaults. Errors: INVALID_ARGUMENT (out
 * NULL, bad variant, bad config), NOT_IMPLEMENTED (alpha == 0, centered,
 * optim_bits not 4/8/32, 4-bit with block_wise 0),
 * DEVICE (no such device, no CUDA support). */
QRMS_API qrms_status_t qrms_optimizer_create(qrms_optimizer_t *out, qrms_variant_t variant,
                                             const qrms_config *cfg, qrms_device_t device,
                                             int32_t device_index);
/* device_index selects the CUDA device (-1: the calling thread's current
 * device); it is ignored for QRMS_DEVICE_CPU. */
/* Frees the optimizer and its state. NULL is fine. */
QRMS_API void qrms_optimizer_destroy(qrms_optimizer_t opt);
/* Registers a parameter of numel elements and allocates its state (zeros).
 * grad may be NULL (set it later). *index_out (may be NULL) gets its index,
 * 0, 1, 2, ... in call order. Errors: INVALID_ARGUMENT (NULL or misaligned
 * param, numel <= 0, bad dtype), DEVICE (pointer not on the optimizer's
 * device), OUT_OF_MEMORY. */
QRMS_API qrms_status_t qrms_optimizer_add_param(qrms_optimizer_t opt, void *param, const void *grad,
                                                qrms_dtype_t dtype, int64_t numel,
                                                int64_t *index_out);
/* Sets (or with NULL clears) the gradient pointer of parameter `index`. */
QRMS_API qrms_status_t qrms_optimizer_set_grad(qrms_optimizer_t opt, int64_t index, const void *grad);
/* Gives parameter `index` its own configuration (bitsandbytes'
 * override_config). Changing the state layout (precision, momentum
 * buffer) is allowed only before the parameter's first step. */
QRMS_API qrms_status_t qrms_optimizer_set_param_config(qrms_optimizer_t opt, int64_t index,
                                                       const qrms_config *cfg);
/* Copies the configuration parameter `index` uses (its own, or the
 * optimizer's) into *cfg, writing at most cfg->struct_size bytes; set
 * cfg->struct_size = sizeof(qrms_config) first. Optimizer-wide fields
 * (skip_nonfinite, stochastic_rounding, seed) are the optimizer's, also after
 * set_param_config and load. To override a few fields of one parameter:
 * get, change those fields, set. */
QRMS_API qrms_status_t qrms_optimizer_get_param_config(qrms_optimizer_t opt, int64_t index, qrms_config *cfg);
/* Sets the learning rate of every parameter, own configs included. */
QRMS_API qrms_status_t qrms_optimizer_set_lr(qrms_optimizer_t opt, float lr);
/* One step for every parameter whose grad is not NULL. On CUDA it only
 * enqueues work on `stream` (no host synchronisation, no allocation). */
QRMS_API qrms_status_t qrms_optimizer_step(qrms_optimizer_t opt, qrms_stream_t stream);
/* Loss scaling. Every gradient is multiplied by *unscale (a float on the
 * optimizer's device, read by each step on the device, so it may change
 * between steps without a call) before clipping, the non-finite check and
 * the update. NULL removes the factor. */
QRMS_API qrms_status_t qrms_optimizer_set_grad_unscale(qrms_optimizer_t opt, const float *unscale);
/* The optimizer's found-inf flag: an int32 on its device that every step of
 * an optimizer created with skip_nonfinite sets to 1 when that step was
 * skipped for an inf/NaN gradient and to 0 when it ran. Readable on the
 * device without a host synchronisation; valid as long as the optimizer. */
QRMS_API qrms_status_t qrms_optimizer_found_inf(qrms_optimizer_t opt, const int32_t **flag_out);
/* The same flag copied to the host (synchronises with the device). */
QRMS_API qrms_status_t qrms_optimizer_read_found_inf(qrms_optimizer_t opt, int32_t *found_out);
/* Steps taken by parameter `index` (steps skipped by skip_nonfinite do not
 * count). The counter lives on the device: this synchronises. */
QRMS_API qrms_status_t qrms_optimizer_get_step(qrms_optimizer_t opt, int64_t index, int64_t *step_out);
/* Copies state `which` (QRMS_STATE_*) of parameter `index`, dequantized, to
 * the host buffer `out` of numel floats. Synchronises with the device.
 * INVALID_ARGUMENT for the momentum buffer of a parameter without one. */
QRMS_API qrms_status_t qrms_optimizer_read_state(qrms_optimizer_t opt, int64_t index, int32_t which,
                                                 float *out);
/* Bytes of state the optimizer holds on its device. */
QRMS_API qrms_status_t qrms_optimizer_state_bytes(qrms_optimizer_t opt, int64_t *bytes_out);
/* Serialises all state (see docs/state-format.md). buffer NULL with
 * capacity 0 only reports the size in *size_out; a smaller capacity is
 * INVALID_ARGUMENT and writes nothing. */
QRMS_API qrms_status_t qrms_optimizer_save(qrms_optimizer_t opt, void *buffer, size_t capacity,
                                           size_t *size_out);
/* Restores what save wrote. The whole blob is checked first; a bad one is
 * BAD_STATE and leaves the optimizer exactly as it was. */
QRMS_API qrms_status_t qrms_optimizer_load(qrms_optimizer_t opt, const void *buffer, size_t size);
/* Number of parameters added so far. */
QRMS_API qrms_status_t qrms_optimizer_param_count(qrms_optimizer_t opt, int64_t *count_out);
/* What parameter `index` is: its numel, dtype and state precision (4, 8 or
 * 32 bits). Any output pointer may be NULL. */
QRMS_API qrms_status_t qrms_optimizer_param_info(qrms_optimizer_t opt, int64_t index, int64_t *numel_out,
                                                 qrms_dtype_t *dtype_out, int32_t *state_bits_out);

/* ------------------------------------------------------------------------ */
/* Sharded optimizers (docs/distributed.md): each rank of a data-parallel job
 * holds a slice of every (flattened) parameter and steps only that slice. */

/* Registers this rank's elements [offset, offset + numel) of a logical
 * tensor of global_numel elements; numel may be 0 (then param and grad may
 * be NULL, and the shard takes part in every step). Every rank adds the same
 * logical parameters, with the same dtype, in the same order. The state kind
 * follows global_numel (min_8bit_size applies to it, so every rank picks the
 * same), and for 8-bit block-wise state offset is a multiple of 256, for
 * 4-bit state of 128 (no quantization block spans two ranks). qrms_optimizer_add_param(...) is
 * the same as numel == global_numel, offset == 0. Errors: as add_param, and
 * INVALID_ARGUMENT for a shard outside [0, global_numel) or a misplaced
 * block-wise offset. */
QRMS_API qrms_status_t qrms_optimizer_add_param_shard(qrms_optimizer_t opt, void *param, const void *grad,
                                                      qrms_dtype_t dtype, int64_t numel, int64_t global_numel,
                                                      int64_t offset, int64_t *index_out);
/* Where parameter `index` lies in its logical tensor. Either output may be NULL. */
QRMS_API qrms_status_t qrms_optimizer_shard_info(qrms_optimizer_t opt, int64_t index, int64_t *global_numel_out,
                                                 int64_t *offset_out);

typedef int32_t qrms_reduce_op_t;
#define QRMS_REDUCE_SUM 0
#define QRMS_REDUCE_MAX 1

/* The collectives a sharded step needs, supplied by the caller (or by an
 * adapter: qrmsprop_mpi.h, qrmsprop_nccl.h). Size-first: later versions
 * append fields. */
typedef struct qrms_comm {
  size_t struct_size;     /* sizeof(qrms_comm) */
  int32_t rank;           /* this process, 0 <= rank < world_size */
  int32_t world_size;     /* >= 1 */
  qrms_device_t device;   /* where `data` lives: the optimizer's device */
  int32_t device_index;   /* its CUDA device (ignored for the CPU) */
  void *user;             /* passed to all_reduce as it is */
  /* In-place all-reduce of `count` floats at `data` (device memory), op
   * QRMS_REDUCE_SUM or QRMS_REDUCE_MAX, ordered on `stream` (CUDA) without
   * waiting for it. Every rank calls it the same number of times with the
   * same count and op. Returns QRMS_SUCCESS, or a status the step returns. */
  qrms_status_t (*all_reduce)(void *user, float *data, int64_t count, qrms_reduce_op_t op,
                              qrms_stream_t stream);
} qrms_comm;

/* Sets the communicator (copied; NULL removes it). With one, each step
 * reduces across ranks what needs the whole tensor (the found-inf flag of
 * skip_nonfinite, percentile-clipping norms, max_unorm norms, per-tensor
 * 8-bit maxima), so every rank computes the same scales: at most 4
 * all-reduces per step, all before the step writes anything. A shard that
 * needs one of these steps only with a comm set. save records comm's rank
 * and world size. Errors: INVALID_ARGUMENT (struct_size, rank, world_size,
 * all_reduce NULL), DEVICE (comm on another device than the optimizer). */
QRMS_API qrms_status_t qrms_optimizer_set_comm(qrms_optimizer_t opt, const qrms_comm *comm);

/* Merges the save blobs of all ranks of a sharded optimizer (count blobs,
 * any order) into the blob of one unsharded optimizer, which loads into an
 * optimizer of whole tensors, or into a sharded optimizer of any world size
 * (each rank takes its slices). out NULL with capacity 0 only reports the
 * size in *size_out; a smaller capacity is INVALID_ARGUMENT and writes
 * nothing. BAD_STATE for a bad blob, a missing or doubled rank, blobs of
 * different optimizers, or shards that do not tile their tensors. */
QRMS_API qrms_status_t qrms_state_merge(const void *const *blobs, const size_t *sizes, int32_t count, void *out,
                                        size_t capacity, size_t *size_out);

/* ------------------------------------------------------------------------ */
/* Quantization. */

/* bitsandbytes' create_dynamic_map(signed, 7, 8): 256 ascending values. */
QRMS_API qrms_status_t qrms_dynamic_map(int32_t is_signed, float out[256]);
/* codes[i] = nearest code of in[i] / absmax[i / blocksize], with absmax per
 * block = max |in| over the block. blocksize > 0. qmap: 256 ascending floats
 * on the device. */
QRMS_API qrms_status_t qrms_quantize_blockwise(qrms_device_t device, const float *qmap, const float *in,
                                               uint8_t *codes, float *absmax, int64_t n,
                                               int64_t blocksize, qrms_stream_t stream);
/* out[i] = qmap[codes[i]] * absmax[i / blocksize]. */
QRMS_API qrms_status_t qrms_dequantize_blockwise(qrms_device_t device, const float *qmap,
                                                 const uint8_t *codes, const float *absmax, float *out,
                                                 int64_t n, int64_t blocksize, qrms_stream_t stream);

/* ------------------------------------------------------------------------ */
/* Core update entry points on raw pointers (no optimizer object).
 *
 * Common arguments:
 *  device       where every pointer lives (the current CUDA device for CUDA).
 *  param, grad  n elements of `dtype`.
 *  hp           hyper-parameters, validated as for the optimizer.
 *  gnorm_scale  NULL (scale 1) or a device float written by
 *               qrms_percentile_clipping.
 *  unorm        NULL when hp->max_unorm == 0; else a device scratch of 2
 *               floats (sum of squares of the update and of the param).
 *  stream       the CUDA stream (ignored on the CPU), always last.
 * The momentum buffer arguments must be NULL exactly when hp->momentum == 0.
 * param and grad are aligned to their element size, float buffers to 4
 * bytes (INVALID_ARGUMENT otherwise); codes need no alignment.
 */
typedef struct qrms_update_params {
  size_t struct_size; /* sizeof(qrms_update_params) */
  float lr, alpha, eps, weight_decay, momentum;
  float max_unorm;
  int32_t skip_zeros;
} qrms_update_params;

/* Defaults of section 2 (lr 1e-2, alpha 0.99, eps 1e-8, the rest 0). */
QRMS_API void qrms_update_params_init(qrms_update_params *hp);

/* 32-bit state: square_avg and momentum_buf are n floats each. */
QRMS_API qrms_status_t qrms_update_32bit(qrms_device_t device, qrms_dtype_t dtype, void *param,
                                         const void *grad, float *square_avg, float *momentum_buf,
                                         int64_t n, const qrms_update_params *hp,
                                         const float *gnorm_scale, float *unorm,
                                         qrms_stream_t stream);
/* 8-bit block-wise state (blocks of 256): codes are n bytes, absmax
 * ceil(n/256) floats, qmap the signed dynamic map (256 floats on the device). */
QRMS_API qrms_status_t qrms_update_8bit_blockwise(qrms_device_t device, qrms_dtype_t dtype, void *param,
                                                  const void *grad, uint8_t *square_avg_codes,
                                                  float *square_avg_absmax, uint8_t *momentum_codes,
                                                  float *momentum_absmax, const float *qmap, int64_t n,
                                                  const qrms_update_params *hp,
                                                  const float *gnorm_scale, float *unorm,
                                                  qrms_stream_t stream);
/* 8-bit per-tensor state: codes are n bytes; *_max are 2 floats each,
 * {max1, new_max1}: the step computes new_max1 = max |s_new|, quantizes
 * against it and then stores it into max1 for the next step. */
QRMS_API qrms_status_t qrms_update_8bit_tensor(qrms_device_t device, qrms_dtype_t dtype, void *param,
                                               const void *grad, uint8_t *square_avg_codes,
                                               float *square_avg_max, uint8_t *momentum_codes,
                                               float *momentum_max, const float *qmap, int64_t n,
                                               const qrms_update_params *hp,
                                               const float *gnorm_scale, float *unorm,
                                               qrms_stream_t stream);
/* 4-bit block-wise state (blocks of 128), as a QRMS_RMSPROP_4BIT optimizer
 * keeps it: codes are ceil(n/2) bytes, two per byte (element 2i in the low
 * nibble of byte i, 2i + 1 in the high one), absmax ceil(n/128) floats. The
 * maps are fixed (docs/guide.md), so there is no qmap. */
QRMS_API qrms_status_t qrms_update_4bit_blockwise(qrms_device_t device, qrms_dtype_t dtype, void *param,
                                                  const void *grad, uint8_t *square_avg_codes,
                                                  float *square_avg_absmax, uint8_t *momentum_codes,
                                                  float *momentum_absmax, int64_t n,
                                                  const qrms_update_params *hp,
                                                  const float *gnorm_scale, float *unorm,
                                                  qrms_stream_t stream);
/* Percentile clipping: `step` is a device int64 counting the steps already
 * taken; it is incremented, then gnorm_vec (100 device floats, squared
 * norms) is updated and *gnorm_scale (device float) written. percentile in
 * 0..99. All on the device, no host synchronisation. */
QRMS_API qrms_status_t qrms_percentile_clipping(qrms_device_t device, qrms_dtype_t dtype, const void *grad,
                                                int64_t n, float *gnorm_vec, int64_t *step,
                                                int32_t percentile, float *gnorm_scale,
                                                qrms_stream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* QRMSPROP_QRMSPROP_H */
