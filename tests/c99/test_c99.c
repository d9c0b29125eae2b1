/* A pure C99 user of qrmsprop.h (built with -std=c99 -pedantic -Werror):
 * fits a linear model y = W x + b with every variant and checks that the
 * loss falls; also exercises statuses, messages and save / load from C. */
#include <qrmsprop/qrmsprop.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_SAMPLES 256
#define N_IN 64
#define N_OUT 8

static int failures = 0;

#define EXPECT(cond)                                                   \
  do {                                                                 \
    if (!(cond)) {                                                     \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

#define OK(call)                                                                             \
  do {                                                                                       \
    qrms_status_t st_ = (call);                                                              \
    if (st_ != QRMS_SUCCESS) {                                                               \
      fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #call, qrms_status_string(st_), \
              qrms_last_error());                                                            \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)

static uint32_t rng_state = 12345u;
static float uniform(void) { /* xorshift32 in [-1, 1) */
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 17;
  rng_state ^= rng_state << 5;
  return (float)((double)rng_state / 2147483648.0 - 1.0);
}

static float X[N_SAMPLES][N_IN], Y[N_SAMPLES][N_OUT];

static void make_data(void) {
  static float w_true[N_OUT][N_IN], b_true[N_OUT];
  int i, o, k;
  for (o = 0; o < N_OUT; ++o) {
    for (k = 0; k < N_IN; ++k) w_true[o][k] = uniform();
    b_true[o] = uniform();
  }
  for (i = 0; i < N_SAMPLES; ++i) {
    for (k = 0; k < N_IN; ++k) X[i][k] = uniform();
    for (o = 0; o < N_OUT; ++o) {
      float y = b_true[o];
      for (k = 0; k < N_IN; ++k) y += w_true[o][k] * X[i][k];
      Y[i][o] = y;
    }
  }
}

/* Mean squared error; fills the gradients when gw / gb are not NULL. */
static float loss_and_grad(const float *w, const float *b, float *gw, float *gb) {
  double loss = 0.0;
  int i, o, k;
  if (gw) memset(gw, 0, sizeof(float) * N_OUT * N_IN);
  if (gb) memset(gb, 0, sizeof(float) * N_OUT);
  for (i = 0; i < N_SAMPLES; ++i) {
    for (o = 0; o < N_OUT; ++o) {
      float pred = b[o], err;
      for (k = 0; k < N_IN; ++k) pred += w[o * N_IN + k] * X[i][k];
      err = pred - Y[i][o];
      loss += (double)err * err;
      if (gw) {
        for (k = 0; k < N_IN; ++k) gw[o * N_IN + k] += 2.0f * err * X[i][k] / (float)N_SAMPLES;
        gb[o] += 2.0f * err / (float)N_SAMPLES;
      }
    }
  }
  return (float)(loss / N_SAMPLES);
}

struct run_case {
  const char *name;
  qrms_variant_t variant;
  int32_t block_wise;
  float momentum;
};

static void train(const struct run_case *rc) {
  static float w[N_OUT * N_IN], b[N_OUT], gw[N_OUT * N_IN], gb[N_OUT];
  qrms_config cfg;
  qrms_optimizer_t opt = NULL;
  int64_t index = -1, steps = 0, bytes = 0;
  float first, last = 0.0f;
  int step, k;

  for (k = 0; k < N_OUT * N_IN; ++k) w[k] = 0.1f * uniform();
  for (k = 0; k < N_OUT; ++k) b[k] = 0.0f;

  qrms_config_init(&cfg);
  cfg.lr = 0.01f;
  cfg.min_8bit_size = 0; /* make these small tensors 8-bit in the 8-bit variants */
  cfg.block_wise = rc->block_wise;
  cfg.momentum = rc->momentum;
  OK(qrms_optimizer_create(&opt, rc->variant, &cfg, QRMS_DEVICE_CPU, 0));
  OK(qrms_optimizer_add_param(opt, w, gw, QRMS_FLOAT32, N_OUT * N_IN, &index));
  EXPECT(index == 0);
  OK(qrms_optimizer_add_param(opt, b, gb, QRMS_FLOAT32, N_OUT, &index));
  EXPECT(index == 1);
  OK(qrms_optimizer_state_bytes(opt, &bytes));

  first = loss_and_grad(w, b, gw, gb);
  for (step = 0; step < 400; ++step) {
    OK(qrms_optimizer_step(opt, NULL));
    last = loss_and_grad(w, b, gw, gb);
    if (step == 200) OK(qrms_optimizer_set_lr(opt, 0.003f)); /* a schedule */
  }
  OK(qrms_optimizer_get_step(opt, 0, &steps));
  EXPECT(steps == 400);
  printf("%-28s loss %9.5f -> %9.6f, state %lld bytes\n", rc->name, first, last, (long long)bytes);
  EXPECT(last < 0.02f * first);
  EXPECT(last == last); /* not NaN */
  qrms_optimizer_destroy(opt);
}

static void check_basics(void) {
  qrms_config cfg;
  qrms_optimizer_t opt = NULL;
  float map[256];
  float p[300], g[300];
  unsigned char *blob;
  size_t size = 0, written = 0;
  int k;

  EXPECT(qrms_version() == QRMS_VERSION_NUMBER);
  EXPECT(strcmp(qrms_status_string(QRMS_SUCCESS), "unknown status") != 0);
  EXPECT(strcmp(qrms_status_string(99), "unknown status") == 0);
  EXPECT(qrms_cuda_device_count() >= 0);

  qrms_config_init(&cfg);
  cfg.alpha = 0.0f;
  EXPECT(qrms_optimizer_create(&opt, QRMS_RMSPROP, &cfg, QRMS_DEVICE_CPU, 0) == QRMS_ERROR_NOT_IMPLEMENTED);
  EXPECT(strstr(qrms_last_error(), "RMSprop with alpha==0.0 is not supported!") != NULL);
  qrms_config_init(&cfg);
  cfg.lr = -1.0f;
  EXPECT(qrms_optimizer_create(&opt, QRMS_RMSPROP_8BIT, &cfg, QRMS_DEVICE_CPU, 0) == QRMS_ERROR_INVALID_ARGUMENT);
  EXPECT(strstr(qrms_last_error(), "Invalid learning rate: ") != NULL);

  OK(qrms_dynamic_map(1, map));
  EXPECT(map[0] < -0.99f && map[127] == 0.0f && map[255] == 1.0f);

  /* save / load from C */
  qrms_config_init(&cfg);
  cfg.min_8bit_size = 0;
  OK(qrms_optimizer_create(&opt, QRMS_RMSPROP_8BIT, &cfg, QRMS_DEVICE_CPU, 0));
  for (k = 0; k < 300; ++k) {
    p[k] = uniform();
    g[k] = uniform();
  }
  OK(qrms_optimizer_add_param(opt, p, g, QRMS_FLOAT32, 300, NULL));
  OK(qrms_optimizer_step(opt, NULL));
  OK(qrms_optimizer_save(opt, NULL, 0, &size));
  EXPECT(size > 300);
  blob = (unsigned char *)malloc(size);
  EXPECT(qrms_optimizer_save(opt, blob, size - 1, &written) == QRMS_ERROR_INVALID_ARGUMENT);
  OK(qrms_optimizer_save(opt, blob, size, &written));
  EXPECT(written == size);
  blob[size / 2] ^= 1u;
  EXPECT(qrms_optimizer_load(opt, blob, size) == QRMS_ERROR_BAD_STATE);
  blob[size / 2] ^= 1u;
  OK(qrms_optimizer_load(opt, blob, size));
  free(blob);
  qrms_optimizer_destroy(opt);
  qrms_optimizer_destroy(NULL);
}

int main(void) {
  static const struct run_case cases[] = {
      {"RMSprop (32-bit)", QRMS_RMSPROP, 1, 0.0f},
      {"RMSprop32bit", QRMS_RMSPROP_32BIT, 1, 0.0f},
      {"RMSprop8bit block-wise", QRMS_RMSPROP_8BIT, 1, 0.0f},
      {"RMSprop8bit per-tensor", QRMS_RMSPROP_8BIT, 0, 0.0f},
      {"RMSprop8bit momentum 0.5", QRMS_RMSPROP_8BIT, 1, 0.5f},
      {"RMSprop32bit momentum 0.5", QRMS_RMSPROP_32BIT, 1, 0.5f},
      {"RMSprop4bit momentum 0.5", QRMS_RMSPROP_4BIT, 1, 0.5f},
  };
  size_t i;
  make_data();
  check_basics();
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) train(&cases[i]);
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("all C99 checks passed\n");
  return 0;
}
