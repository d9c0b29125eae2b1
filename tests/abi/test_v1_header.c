/* A program built against the first published header (tests/abi/qrmsprop_v1.h,
 * whose qrms_config ends at skip_zeros) run against the current library.
 * Every struct and buffer it passes has GUARD bytes after it; after each call
 * every guard must be intact: the library writes nothing past what the caller
 * has. It calls every function of that header, and the later functions that
 * write into a caller's struct or buffer, with the first header's structs.
 * Exit 0 when all guards and statuses are right, 1 otherwise. */
#include "qrmsprop_v1.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Functions added after the first header that write into caller memory,
 * declared as a program of that time would see them (its qrms_config). */
qrms_status_t qrms_config_init_sized(qrms_config *cfg, size_t size);
qrms_status_t qrms_optimizer_get_param_config(qrms_optimizer_t opt, int64_t index, qrms_config *cfg);
qrms_status_t qrms_optimizer_param_info(qrms_optimizer_t opt, int64_t index, int64_t *numel_out,
                                        qrms_dtype_t *dtype_out, int32_t *state_bits_out);
qrms_status_t qrms_optimizer_found_inf(qrms_optimizer_t opt, const int32_t **flag_out);
qrms_status_t qrms_optimizer_read_found_inf(qrms_optimizer_t opt, int32_t *found_out);

#define GUARD 64
#define GUARD_BYTE 0xA5
#define MAX_REGIONS 64
#define N 1000 /* elements of each tensor: 4 blocks of 256, the last partial */

typedef struct {
  unsigned char *base;
  size_t size;
  const char *what;
} region_t;

static region_t regions[MAX_REGIONS];
static int n_regions = 0;
static int failures = 0;

/* size zeroed bytes followed by GUARD guard bytes, checked after every call. */
static void *guarded(size_t size, const char *what) {
  unsigned char *p;
  if (n_regions == MAX_REGIONS) {
    fprintf(stderr, "too many regions\n");
    exit(1);
  }
  p = (unsigned char *)malloc(size + GUARD);
  if (p == NULL) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
  memset(p, 0, size);
  memset(p + size, GUARD_BYTE, GUARD);
  regions[n_regions].base = p;
  regions[n_regions].size = size;
  regions[n_regions].what = what;
  ++n_regions;
  return p;
}

static void check_guards(const char *call) {
  int r;
  size_t i;
  for (r = 0; r < n_regions; ++r)
    for (i = 0; i < GUARD; ++i)
      if (regions[r].base[regions[r].size + i] != GUARD_BYTE) {
        fprintf(stderr, "FAIL: %s wrote past %s (%lu bytes): guard byte %lu is 0x%02x\n", call, regions[r].what,
                (unsigned long)regions[r].size, (unsigned long)i, regions[r].base[regions[r].size + i]);
        ++failures;
        memset(regions[r].base + regions[r].size, GUARD_BYTE, GUARD); /* report each overrun once */
        break;
      }
}

static void expect_status(const char *call, qrms_status_t got, qrms_status_t want) {
  if (got != want) {
    fprintf(stderr, "FAIL: %s returned %d (%s), expected %d: %s\n", call, (int)got, qrms_status_string(got), (int)want,
                qrms_last_error());
    ++failures;
  }
  check_guards(call);
}

static void expect(const char *what, int ok) {
  if (!ok) {
    fprintf(stderr, "FAIL: %s\n", what);
    ++failures;
  }
}

/* A call returning a status that must be `want`, then the guard check. */
#define CALL(want, expr) expect_status(#expr, (expr), (want))
/* A call returning anything else (void, a value), then the guard check. */
#define CALL_VOID(expr) ((void)(expr), check_guards(#expr))

static void fill(float *x, int n, float v) {
  int i;
  for (i = 0; i < n; ++i) x[i] = v;
}

int main(void) {
  qrms_config *cfg = (qrms_config *)guarded(sizeof(qrms_config), "qrms_config (first layout, 64 bytes)");
  qrms_config *own = (qrms_config *)guarded(sizeof(qrms_config), "qrms_config of get_param_config");
  qrms_optimizer_t *opt = (qrms_optimizer_t *)guarded(sizeof(qrms_optimizer_t), "optimizer handle");
  float *param = (float *)guarded(N * sizeof(float), "param");
  float *grad = (float *)guarded(N * sizeof(float), "grad");
  float *param2 = (float *)guarded(N * sizeof(float), "second param");
  int64_t *index = (int64_t *)guarded(sizeof(int64_t), "index_out");
  int64_t *step = (int64_t *)guarded(sizeof(int64_t), "step_out");
  int64_t *bytes = (int64_t *)guarded(sizeof(int64_t), "bytes_out");
  int64_t *count = (int64_t *)guarded(sizeof(int64_t), "count_out");
  int64_t *numel = (int64_t *)guarded(sizeof(int64_t), "numel_out");
  qrms_dtype_t *dtype = (qrms_dtype_t *)guarded(sizeof(qrms_dtype_t), "dtype_out");
  int32_t *bits = (int32_t *)guarded(sizeof(int32_t), "state_bits_out");
  const int32_t **flag = (const int32_t **)guarded(sizeof(const int32_t *), "flag_out");
  int32_t *found = (int32_t *)guarded(sizeof(int32_t), "found_out");
  float *state = (float *)guarded(N * sizeof(float), "read_state out");
  size_t *blob_size = (size_t *)guarded(sizeof(size_t), "size_out");
  float *qmap = (float *)guarded(256 * sizeof(float), "dynamic map");
  uint8_t *codes = (uint8_t *)guarded(N, "codes");
  float *absmax = (float *)guarded(4 * sizeof(float), "absmax (4 blocks)");
  float *dequant = (float *)guarded(N * sizeof(float), "dequantized");
  qrms_update_params *hp = (qrms_update_params *)guarded(sizeof(qrms_update_params), "qrms_update_params");
  float *square_avg = (float *)guarded(N * sizeof(float), "square_avg");
  float *momentum = (float *)guarded(N * sizeof(float), "momentum_buf");
  uint8_t *mom_codes = (uint8_t *)guarded(N, "momentum codes");
  float *mom_absmax = (float *)guarded(4 * sizeof(float), "momentum absmax");
  float *tensor_max = (float *)guarded(2 * sizeof(float), "square_avg max");
  float *mom_max = (float *)guarded(2 * sizeof(float), "momentum max");
  float *gnorm_vec = (float *)guarded(100 * sizeof(float), "gnorm_vec");
  int64_t *clip_step = (int64_t *)guarded(sizeof(int64_t), "clipping step");
  float *gnorm_scale = (float *)guarded(sizeof(float), "gnorm_scale");
  float *unorm = (float *)guarded(2 * sizeof(float), "unorm");
  unsigned char *blob;
  int threads;

  fill(param, N, 1.0f);
  fill(param2, N, 1.0f);
  fill(grad, N, 0.5f);

  /* Library. */
  CALL_VOID(qrms_version());
  expect("qrms_version is 0.x", qrms_version() / 10000 == 0);
  CALL_VOID(qrms_status_string(QRMS_ERROR_BAD_STATE));
  CALL_VOID(qrms_last_error());
  CALL_VOID(qrms_cuda_device_count());
  threads = qrms_get_num_threads();
  CALL_VOID(qrms_get_num_threads());
  CALL(QRMS_SUCCESS, qrms_set_num_threads(2));
  CALL(QRMS_SUCCESS, qrms_set_num_threads(threads));

  /* Configuration: the exported init fills this header's whole struct. */
  CALL_VOID(qrms_config_init(cfg));
  expect("qrms_config_init sets struct_size to the first struct's 64", cfg->struct_size == sizeof(qrms_config));
  expect("qrms_config_init sets the defaults", cfg->lr == 1e-2f && cfg->optim_bits == 32 && cfg->block_wise == 1 &&
                                                   cfg->min_8bit_size == 4096 && cfg->percentile_clipping == 100);
  CALL(QRMS_SUCCESS, qrms_config_init_sized(cfg, sizeof(qrms_config)));
  expect("qrms_config_init_sized sets struct_size to the caller's size", cfg->struct_size == sizeof(qrms_config));
  cfg->min_8bit_size = 0;
  cfg->momentum = 0.5f;

  /* Optimizer. */
  CALL(QRMS_SUCCESS, qrms_optimizer_create(opt, QRMS_RMSPROP_8BIT, cfg, QRMS_DEVICE_CPU, 0));
  CALL(QRMS_SUCCESS, qrms_optimizer_add_param(*opt, param, grad, QRMS_FLOAT32, N, index));
  expect("first index is 0", *index == 0);
  CALL(QRMS_SUCCESS, qrms_optimizer_add_param(*opt, param2, NULL, QRMS_FLOAT32, N, index));
  expect("second index is 1", *index == 1);
  CALL(QRMS_SUCCESS, qrms_optimizer_set_grad(*opt, 1, grad));
  cfg->optim_bits = 32;
  CALL(QRMS_SUCCESS, qrms_optimizer_set_param_config(*opt, 1, cfg));
  CALL(QRMS_SUCCESS, qrms_optimizer_set_lr(*opt, 2e-2f));
  CALL(QRMS_SUCCESS, qrms_optimizer_step(*opt, NULL));
  expect("the step moved the param", param[0] < 1.0f && param[N - 1] < 1.0f && param2[0] < 1.0f);
  CALL(QRMS_SUCCESS, qrms_optimizer_get_step(*opt, 0, step));
  expect("one step taken", *step == 1);
  CALL(QRMS_SUCCESS, qrms_optimizer_read_state(*opt, 0, QRMS_STATE_SQUARE_AVG, state));
  CALL(QRMS_SUCCESS, qrms_optimizer_read_state(*opt, 1, QRMS_STATE_MOMENTUM, state));
  CALL(QRMS_SUCCESS, qrms_optimizer_state_bytes(*opt, bytes));
  expect("state bytes > 0", *bytes > 0);
  CALL(QRMS_SUCCESS, qrms_optimizer_param_count(*opt, count));
  expect("two parameters", *count == 2);
  CALL(QRMS_SUCCESS, qrms_optimizer_save(*opt, NULL, 0, blob_size));
  blob = (unsigned char *)guarded(*blob_size, "state blob");
  CALL(QRMS_ERROR_INVALID_ARGUMENT, qrms_optimizer_save(*opt, blob, *blob_size - 1, blob_size));
  CALL(QRMS_SUCCESS, qrms_optimizer_save(*opt, blob, *blob_size, blob_size));
  CALL(QRMS_SUCCESS, qrms_optimizer_load(*opt, blob, *blob_size));
  CALL(QRMS_ERROR_BAD_STATE, qrms_optimizer_load(*opt, blob, *blob_size - 1));

  /* Later functions that write into the caller's struct or buffers. */
  own->struct_size = sizeof(qrms_config);
  CALL(QRMS_SUCCESS, qrms_optimizer_get_param_config(*opt, 1, own));
  expect("get_param_config keeps struct_size and gives the override",
         own->struct_size == sizeof(qrms_config) && own->optim_bits == 32 && own->lr == 2e-2f);
  CALL(QRMS_SUCCESS, qrms_optimizer_param_info(*opt, 0, numel, dtype, bits));
  expect("param_info", *numel == N && *dtype == QRMS_FLOAT32 && *bits == 8);
  CALL(QRMS_SUCCESS, qrms_optimizer_found_inf(*opt, flag));
  CALL(QRMS_SUCCESS, qrms_optimizer_read_found_inf(*opt, found));
  expect("no inf found", *found == 0);
  CALL_VOID(qrms_optimizer_destroy(*opt));
  CALL_VOID(qrms_optimizer_destroy(NULL));

  /* Quantization. */
  CALL(QRMS_SUCCESS, qrms_dynamic_map(1, qmap));
  CALL(QRMS_SUCCESS, qrms_quantize_blockwise(QRMS_DEVICE_CPU, qmap, param, codes, absmax, N, 256, NULL));
  CALL(QRMS_SUCCESS, qrms_dequantize_blockwise(QRMS_DEVICE_CPU, qmap, codes, absmax, dequant, N, 256, NULL));

  /* Core entry points. */
  CALL_VOID(qrms_update_params_init(hp));
  expect("qrms_update_params_init sets struct_size", hp->struct_size == sizeof(qrms_update_params));
  CALL(QRMS_SUCCESS, qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, param, grad, square_avg, NULL, N, hp, NULL,
                                       NULL, NULL));
  hp->momentum = 0.5f;
  hp->max_unorm = 1.0f;
  CALL(QRMS_SUCCESS, qrms_percentile_clipping(QRMS_DEVICE_CPU, QRMS_FLOAT32, grad, N, gnorm_vec, clip_step, 95,
                                              gnorm_scale, NULL));
  CALL(QRMS_SUCCESS, qrms_update_32bit(QRMS_DEVICE_CPU, QRMS_FLOAT32, param, grad, square_avg, momentum, N, hp,
                                       gnorm_scale, unorm, NULL));
  CALL(QRMS_SUCCESS, qrms_update_8bit_blockwise(QRMS_DEVICE_CPU, QRMS_FLOAT32, param, grad, codes, absmax, mom_codes,
                                                mom_absmax, qmap, N, hp, gnorm_scale, unorm, NULL));
  CALL(QRMS_SUCCESS, qrms_update_8bit_tensor(QRMS_DEVICE_CPU, QRMS_FLOAT32, param, grad, codes, tensor_max, mom_codes,
                                             mom_max, qmap, N, hp, gnorm_scale, unorm, NULL));

  while (n_regions > 0) free(regions[--n_regions].base);
  if (failures) {
    fprintf(stderr, "%d failure(s)\n", failures);
    return 1;
  }
  printf("first header: every guard of %d bytes intact after every call\n", GUARD);
  return 0;
}
