/*
 * train_mlp: a small MLP trained with qrmsprop through its C ABI only.
 *
 * Task: three interleaved 2-D spirals (a classic non-linear toy problem),
 * generated from a fixed-seed PRNG. Model: 2 -> 128 (ReLU) -> 128 (ReLU) -> 3,
 * softmax cross-entropy; forward and backward written out by hand below.
 *
 * The same initial weights and the same minibatch order are trained four
 * times, with RMSprop32bit, RMSprop8bit (block-wise state), RMSprop8bit
 * with per-tensor state (block_wise = 0) and RMSprop4bit (4-bit state). With
 * the default min_8bit_size of 4096 only W2 (128 x 128 = 16384 elements) gets
 * 8-bit (or 4-bit) state; W1 (256), W3 (384) and the biases are smaller and
 * keep 32-bit state, as in bitsandbytes.
 *
 * Usage: train_mlp [--steps N] [--seed S] [--lr X] [--batch B]
 *                  [--weights f32|bf16|bf16-sr] [--state-map signed|unsigned]
 *                  [--device cpu|cuda] [--json|--quiet]
 *
 * --weights bf16 keeps the weights the optimizer updates in bfloat16 (no
 * float32 master copy; forward and backward read them widened to float and
 * the gradients are handed over as bfloat16), rounded to nearest;
 * bf16-sr the same with qrms_config.stochastic_rounding on.
 * --state-map unsigned puts the 8-bit square averages on the unsigned
 * dynamic map (qrms_config.state_map = QRMS_MAP_UNSIGNED).
 * Exit status: 0 when every variant ends below its initial loss, 1 when one
 * does not, 2 on a usage or library error.
 *
 * --device cuda exists only when the library was built with its CUDA backend
 * (the build defines QRMS_EXAMPLE_CUDA): the parameters and gradients then
 * live in cudaMalloc'd memory. Forward and backward still run on the host;
 * each step copies the gradients to the device, steps there and copies the
 * parameters back, which is enough to show the device path of the ABI.
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <qrmsprop/qrmsprop.h>

#ifdef QRMS_EXAMPLE_CUDA
#include <cuda_runtime_api.h>
#endif

/* ---- problem size ------------------------------------------------------- */

#define D_IN 2
#define H1 128
#define H2 128
#define N_CLASSES 3
#define N_TRAIN_PER_CLASS 300
#define N_TEST_PER_CLASS 100
#define N_TRAIN (N_CLASSES * N_TRAIN_PER_CLASS)
#define N_TEST (N_CLASSES * N_TEST_PER_CLASS)
#define MAX_BATCH 512
#define CURVE_POINTS 10
#define PI_F 3.14159265358979f

/* ---- errors --------------------------------------------------------------- */

/* Every qrms_* call that returns a status goes through CHECK: on failure it
 * prints the status and this thread's last error message (which names the
 * function and the rule), then leaves through the cleanup label. */
#define CHECK(call)                                                                    \
  do {                                                                                 \
    qrms_status_t st_ = (call);                                                        \
    if (st_ != QRMS_SUCCESS) {                                                         \
      fprintf(stderr, "train_mlp:%d: %s (%d): %s\n", __LINE__, qrms_status_string(st_), \
              (int)st_, qrms_last_error());                                            \
      goto fail;                                                                       \
    }                                                                                  \
  } while (0)

#ifdef QRMS_EXAMPLE_CUDA
#define CUDA_CHECK(call)                                                               \
  do {                                                                                 \
    cudaError_t ce_ = (call);                                                          \
    if (ce_ != cudaSuccess) {                                                          \
      fprintf(stderr, "train_mlp: %s failed: %s\n", #call, cudaGetErrorString(ce_));  \
      goto fail;                                                                       \
    }                                                                                  \
  } while (0)
#endif

/* ---- a small deterministic PRNG (splitmix64) -------------------------------- */

typedef struct {
  uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *r) {
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static float rng_uniform(rng_t *r) { return (float)(rng_next(r) >> 40) * (1.0f / 16777216.0f); }

/* Standard normal (Box-Muller). */
static float rng_normal(rng_t *r) {
  float u1 = rng_uniform(r), u2 = rng_uniform(r);
  if (u1 < 1e-7f) u1 = 1e-7f;
  return sqrtf(-2.0f * logf(u1)) * cosf(2.0f * PI_F * u2);
}

/* ---- data: three spirals ------------------------------------------------------ */

typedef struct {
  float x[N_TRAIN][D_IN];
  int y[N_TRAIN];
  int n;
} dataset_t;

static void make_spirals(dataset_t *d, int per_class, rng_t *r) {
  int c, i, k = 0;
  for (c = 0; c < N_CLASSES; ++c) {
    for (i = 0; i < per_class; ++i, ++k) {
      float radius = (float)(i + 1) / (float)per_class;
      float theta = (float)c * (2.0f * PI_F / N_CLASSES) + 5.0f * radius + 0.25f * rng_normal(r);
      d->x[k][0] = radius * sinf(theta);
      d->x[k][1] = radius * cosf(theta);
      d->y[k] = c;
    }
  }
  d->n = k;
}

/* ---- the model ------------------------------------------------------------------- */

/* Parameter tensors, in the order they are added to the optimizer. */
enum { T_W1, T_B1, T_W2, T_B2, T_W3, T_B3, N_TENSORS };
static const char *const tensor_name[N_TENSORS] = {"W1", "b1", "W2", "b2", "W3", "b3"};
static const int64_t tensor_numel[N_TENSORS] = {H1 * D_IN, H1, H2 * H1, H2, N_CLASSES * H2, N_CLASSES};

/* All parameters live in one array (and the gradients in a second one with
 * the same offsets); each tensor starts on a 64-element boundary. */
typedef struct {
  int64_t offset[N_TENSORS];
  int64_t total;
} layout_t;

static void make_layout(layout_t *l) {
  int t;
  int64_t off = 0;
  for (t = 0; t < N_TENSORS; ++t) {
    l->offset[t] = off;
    off += (tensor_numel[t] + 63) / 64 * 64;
  }
  l->total = off;
}

/* Views into a parameter (or gradient) array. */
typedef struct {
  float *w1, *b1, *w2, *b2, *w3, *b3;
} model_t;

static model_t view(float *base, const layout_t *l) {
  model_t m;
  m.w1 = base + l->offset[T_W1];
  m.b1 = base + l->offset[T_B1];
  m.w2 = base + l->offset[T_W2];
  m.b2 = base + l->offset[T_B2];
  m.w3 = base + l->offset[T_W3];
  m.b3 = base + l->offset[T_B3];
  return m;
}

/* He-uniform weights, zero biases. */
static void init_params(float *params, const layout_t *l, rng_t *r) {
  model_t m = view(params, l);
  int i;
  float a1 = sqrtf(6.0f / D_IN), a2 = sqrtf(6.0f / H1), a3 = sqrtf(6.0f / H2);
  memset(params, 0, (size_t)l->total * sizeof(float));
  for (i = 0; i < H1 * D_IN; ++i) m.w1[i] = a1 * (2.0f * rng_uniform(r) - 1.0f);
  for (i = 0; i < H2 * H1; ++i) m.w2[i] = a2 * (2.0f * rng_uniform(r) - 1.0f);
  for (i = 0; i < N_CLASSES * H2; ++i) m.w3[i] = a3 * (2.0f * rng_uniform(r) - 1.0f);
}

/* Activations of one example. */
typedef struct {
  float a1[H1], h1[H1], a2[H2], h2[H2], p[N_CLASSES];
} acts_t;

/* Forward pass of one example; returns its cross-entropy loss. */
static float forward(const model_t *m, const float *x, int y, acts_t *a) {
  int i, j;
  float mx, sum;
  for (i = 0; i < H1; ++i) {
    float s = m->b1[i];
    for (j = 0; j < D_IN; ++j) s += m->w1[i * D_IN + j] * x[j];
    a->a1[i] = s;
    a->h1[i] = s > 0.0f ? s : 0.0f;
  }
  for (i = 0; i < H2; ++i) {
    float s = m->b2[i];
    const float *row = m->w2 + i * H1;
    for (j = 0; j < H1; ++j) s += row[j] * a->h1[j];
    a->a2[i] = s;
    a->h2[i] = s > 0.0f ? s : 0.0f;
  }
  for (i = 0; i < N_CLASSES; ++i) {
    float s = m->b3[i];
    for (j = 0; j < H2; ++j) s += m->w3[i * H2 + j] * a->h2[j];
    a->p[i] = s;
  }
  mx = a->p[0];
  for (i = 1; i < N_CLASSES; ++i) mx = a->p[i] > mx ? a->p[i] : mx;
  sum = 0.0f;
  for (i = 0; i < N_CLASSES; ++i) {
    a->p[i] = expf(a->p[i] - mx);
    sum += a->p[i];
  }
  for (i = 0; i < N_CLASSES; ++i) a->p[i] /= sum;
  return -logf(a->p[y] > 1e-30f ? a->p[y] : 1e-30f);
}

/* Adds scale * d(loss)/d(params) of one example (after forward) to g. */
static void backward(const model_t *m, const float *x, int y, const acts_t *a, float scale, model_t *g) {
  float d3[N_CLASSES], d2[H2], d1[H1];
  int i, j;
  for (i = 0; i < N_CLASSES; ++i) d3[i] = scale * (a->p[i] - (i == y ? 1.0f : 0.0f));
  for (j = 0; j < H2; ++j) d2[j] = 0.0f;
  for (i = 0; i < N_CLASSES; ++i) {
    g->b3[i] += d3[i];
    for (j = 0; j < H2; ++j) {
      g->w3[i * H2 + j] += d3[i] * a->h2[j];
      d2[j] += m->w3[i * H2 + j] * d3[i];
    }
  }
  for (j = 0; j < H2; ++j) d2[j] = a->a2[j] > 0.0f ? d2[j] : 0.0f;
  for (j = 0; j < H1; ++j) d1[j] = 0.0f;
  for (i = 0; i < H2; ++i) {
    const float *row = m->w2 + i * H1;
    float *grow = g->w2 + i * H1;
    if (d2[i] == 0.0f) continue;
    g->b2[i] += d2[i];
    for (j = 0; j < H1; ++j) {
      grow[j] += d2[i] * a->h1[j];
      d1[j] += row[j] * d2[i];
    }
  }
  for (i = 0; i < H1; ++i) {
    float d = a->a1[i] > 0.0f ? d1[i] : 0.0f;
    g->b1[i] += d;
    for (j = 0; j < D_IN; ++j) g->w1[i * D_IN + j] += d * x[j];
  }
}

/* Mean loss and accuracy over a whole data set. */
static void evaluate(const model_t *m, const dataset_t *d, float *loss, float *acc) {
  acts_t a;
  double total = 0.0;
  int k, i, correct = 0;
  for (k = 0; k < d->n; ++k) {
    int best = 0;
    total += forward(m, d->x[k], d->y[k], &a);
    for (i = 1; i < N_CLASSES; ++i)
      if (a.p[i] > a.p[best]) best = i;
    correct += best == d->y[k];
  }
  *loss = (float)(total / d->n);
  *acc = (float)correct / (float)d->n;
}

/* ---- one training run ------------------------------------------------------------- */

typedef struct {
  const char *name;
  qrms_variant_t variant;
  int32_t block_wise;
} variant_t;

typedef struct {
  int steps, batch;
  uint64_t seed;
  float lr;
  int cuda, json;
  int weights; /* 0: float32, 1: bfloat16 rounded to nearest, 2: bfloat16 rounded stochastically */
  int32_t state_map; /* QRMS_MAP_SIGNED or QRMS_MAP_UNSIGNED */
} options_t;

typedef struct {
  float curve[CURVE_POINTS + 1];
  int curve_step[CURVE_POINTS + 1];
  int curve_len;
  float initial_loss, final_loss, train_acc, test_acc;
  int64_t state_bytes;
  size_t blob_bytes;
  double seconds;
} result_t;

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* float <-> bfloat16 for --weights bf16 (round to nearest even; no NaN here). */
static uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static float from_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* Trains from `init` (host, layout l) with variant v; returns 0 on success. */
static int train(const variant_t *v, const options_t *o, const layout_t *l, const float *init,
                 const dataset_t *train_set, const dataset_t *test_set, result_t *res) {
  qrms_optimizer_t opt = NULL;
  qrms_config cfg;
  float *params = NULL, *grads = NULL;
  void *opt_params = NULL, *opt_grads = NULL; /* what the optimizer sees */
  uint16_t *params16 = NULL, *grads16 = NULL;  /* --weights bf16: the host copies */
  const int bf16 = o->weights != 0;
  const size_t elem = bf16 ? sizeof(uint16_t) : sizeof(float);
  const size_t opt_bytes = (size_t)l->total * elem;
  rng_t batch_rng;
  model_t m, g;
  acts_t a;
  int t, step, next_point = 1, ok = 0;
  int64_t index;
  const size_t bytes = (size_t)l->total * sizeof(float);
  float loss, acc;
  double t0;

  memset(res, 0, sizeof(*res));
  params = (float *)malloc(bytes);
  grads = (float *)calloc((size_t)l->total, sizeof(float));
  if (!params || !grads) {
    fprintf(stderr, "train_mlp: out of memory\n");
    goto fail;
  }
  memcpy(params, init, bytes);
  m = view(params, l);
  g = view(grads, l);
  opt_params = params;
  opt_grads = grads;
  if (bf16) {
    params16 = (uint16_t *)malloc(opt_bytes);
    grads16 = (uint16_t *)calloc((size_t)l->total, sizeof(uint16_t));
    if (!params16 || !grads16) {
      fprintf(stderr, "train_mlp: out of memory\n");
      goto fail;
    }
    for (index = 0; index < l->total; ++index) {
      params16[index] = to_bf16(params[index]);
      params[index] = from_bf16(params16[index]); /* the model sees the bfloat16 weights */
    }
    opt_params = params16;
    opt_grads = grads16;
  }
#ifdef QRMS_EXAMPLE_CUDA
  if (o->cuda) {
    CUDA_CHECK(cudaMalloc(&opt_params, opt_bytes));
    CUDA_CHECK(cudaMalloc(&opt_grads, opt_bytes));
    CUDA_CHECK(cudaMemcpy(opt_params, bf16 ? (void *)params16 : (void *)params, opt_bytes, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemset(opt_grads, 0, opt_bytes));
  }
#endif

  /* The defaults of SPEC 2, then this run's choices. */
  qrms_config_init(&cfg);
  cfg.lr = o->lr;
  cfg.block_wise = v->block_wise;
  cfg.stochastic_rounding = o->weights == 2;
  cfg.seed = o->seed;
  cfg.state_map = o->state_map;
  CHECK(qrms_optimizer_create(&opt, v->variant, &cfg, o->cuda ? QRMS_DEVICE_CUDA : QRMS_DEVICE_CPU, 0));
  for (t = 0; t < N_TENSORS; ++t) {
    CHECK(qrms_optimizer_add_param(opt, (char *)opt_params + (size_t)l->offset[t] * elem,
                                   (char *)opt_grads + (size_t)l->offset[t] * elem, bf16 ? QRMS_BFLOAT16 : QRMS_FLOAT32,
                                   tensor_numel[t], &index));
  }
  CHECK(qrms_optimizer_state_bytes(opt, &res->state_bytes));

  evaluate(&m, train_set, &res->initial_loss, &acc);
  res->curve[0] = res->initial_loss;
  res->curve_step[0] = 0;
  res->curve_len = 1;

  batch_rng.s = o->seed ^ 0xB47C4u; /* the same batches for every variant */
  t0 = now_seconds();
  for (step = 1; step <= o->steps; ++step) {
    int k;
    /* Cosine learning-rate schedule, down to 10% of lr at the end. */
    float frac = (float)(step - 1) / (float)(o->steps > 1 ? o->steps - 1 : 1);
    CHECK(qrms_optimizer_set_lr(opt, o->lr * (0.55f + 0.45f * cosf(PI_F * frac))));

    memset(grads, 0, bytes);
    for (k = 0; k < o->batch; ++k) {
      int e = (int)(rng_next(&batch_rng) % (uint64_t)train_set->n);
      forward(&m, train_set->x[e], train_set->y[e], &a);
      backward(&m, train_set->x[e], train_set->y[e], &a, 1.0f / (float)o->batch, &g);
    }
    if (bf16)
      for (index = 0; index < l->total; ++index) grads16[index] = to_bf16(grads[index]);
#ifdef QRMS_EXAMPLE_CUDA
    if (o->cuda) {
      /* The step is stream-ordered on the default stream; the blocking copy
       * back waits for it. */
      CUDA_CHECK(cudaMemcpy(opt_grads, bf16 ? (void *)grads16 : (void *)grads, opt_bytes, cudaMemcpyHostToDevice));
      CHECK(qrms_optimizer_step(opt, NULL));
      CUDA_CHECK(cudaMemcpy(bf16 ? (void *)params16 : (void *)params, opt_params, opt_bytes, cudaMemcpyDeviceToHost));
    } else
#endif
    {
      CHECK(qrms_optimizer_step(opt, NULL));
    }
    if (bf16)
      for (index = 0; index < l->total; ++index) params[index] = from_bf16(params16[index]);

    /* Up to CURVE_POINTS evenly spaced points, the last one at the end. */
    if (res->curve_len <= CURVE_POINTS && (int64_t)step * CURVE_POINTS >= (int64_t)o->steps * next_point) {
      evaluate(&m, train_set, &loss, &acc);
      res->curve[res->curve_len] = loss;
      res->curve_step[res->curve_len] = step;
      res->curve_len++;
      next_point = (int)((int64_t)step * CURVE_POINTS / o->steps) + 1;
    }
  }
  res->seconds = now_seconds() - t0;

  {
    int64_t steps_taken = 0;
    CHECK(qrms_optimizer_get_step(opt, T_W2, &steps_taken));
    if (steps_taken != o->steps) {
      fprintf(stderr, "train_mlp: W2 took %lld steps, expected %d\n", (long long)steps_taken, o->steps);
      goto fail;
    }
  }
  /* Size of a checkpoint of this optimizer (qrms_optimizer_save with NULL, 0). */
  CHECK(qrms_optimizer_save(opt, NULL, 0, &res->blob_bytes));
  evaluate(&m, train_set, &res->final_loss, &res->train_acc);
  evaluate(&m, test_set, &loss, &res->test_acc);
  ok = 1;

fail:
  qrms_optimizer_destroy(opt);
#ifdef QRMS_EXAMPLE_CUDA
  if (o->cuda) {
    if (opt_params && opt_params != (void *)params && opt_params != (void *)params16) cudaFree(opt_params);
    if (opt_grads && opt_grads != (void *)grads && opt_grads != (void *)grads16) cudaFree(opt_grads);
  }
#endif
  free(params);
  free(grads);
  free(params16);
  free(grads16);
  return ok ? 0 : -1;
}

/* ---- main ------------------------------------------------------------------------------ */

static void usage(FILE *f) {
  fprintf(f,
          "usage: train_mlp [--steps N] [--seed S] [--lr X] [--batch B] [--weights W] [--device cpu|cuda]\n"
          "                 [--json|--quiet]\n"
          "  --steps N      optimizer steps per variant (default 600)\n"
          "  --seed S       seed of data, initial weights and batches (default 1)\n"
          "  --lr X         peak learning rate, cosine-decayed to 10%% (default 0.003)\n"
          "  --batch B      minibatch size, 1..%d (default 64)\n"
          "  --weights W    f32 (default), bf16 (bfloat16 weights, rounded to nearest) or bf16-sr\n"
          "                 (bfloat16 weights, stochastic rounding, keyed by --seed)\n"
          "  --state-map M  signed (default) or unsigned: the map of 8-bit square averages\n"
          "  --device D     cpu (default) or cuda (builds with the CUDA backend only)\n"
          "  --json         print only one JSON line per variant (--quiet is the same)\n",
          MAX_BATCH);
}

static int parse_args(int argc, char **argv, options_t *o) {
  int i;
  o->steps = 600;
  o->batch = 64;
  o->seed = 1;
  o->lr = 3e-3f;
  o->cuda = 0;
  o->json = 0;
  o->weights = 0;
  o->state_map = QRMS_MAP_SIGNED;
  for (i = 1; i < argc; ++i) {
    const char *arg = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    char *end = NULL;
    if (strcmp(arg, "--json") == 0 || strcmp(arg, "--quiet") == 0) {
      o->json = 1;
      continue;
    }
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      usage(stdout);
      exit(0);
    }
    if (!val) {
      fprintf(stderr, "train_mlp: unknown option or missing value: %s\n", arg);
      return -1;
    }
    ++i;
    if (strcmp(arg, "--steps") == 0) {
      long n = strtol(val, &end, 10);
      if (*end || n < 1 || n > 100000000L) goto bad;
      o->steps = (int)n;
    } else if (strcmp(arg, "--batch") == 0) {
      long n = strtol(val, &end, 10);
      if (*end || n < 1 || n > MAX_BATCH) goto bad;
      o->batch = (int)n;
    } else if (strcmp(arg, "--seed") == 0) {
      unsigned long long s = strtoull(val, &end, 10);
      if (*end) goto bad;
      o->seed = (uint64_t)s;
    } else if (strcmp(arg, "--lr") == 0) {
      double lr = strtod(val, &end);
      if (*end) goto bad;
      o->lr = (float)lr; /* the library validates it */
    } else if (strcmp(arg, "--weights") == 0) {
      if (strcmp(val, "f32") == 0) {
        o->weights = 0;
      } else if (strcmp(val, "bf16") == 0) {
        o->weights = 1;
      } else if (strcmp(val, "bf16-sr") == 0) {
        o->weights = 2;
      } else {
        goto bad;
      }
    } else if (strcmp(arg, "--state-map") == 0) {
      if (strcmp(val, "signed") == 0) {
        o->state_map = QRMS_MAP_SIGNED;
      } else if (strcmp(val, "unsigned") == 0) {
        o->state_map = QRMS_MAP_UNSIGNED;
      } else {
        goto bad;
      }
    } else if (strcmp(arg, "--device") == 0) {
      if (strcmp(val, "cpu") == 0) {
        o->cuda = 0;
      } else if (strcmp(val, "cuda") == 0) {
        o->cuda = 1;
      } else {
        goto bad;
      }
    } else {
      fprintf(stderr, "train_mlp: unknown option %s\n", arg);
      return -1;
    }
    continue;
  bad:
    fprintf(stderr, "train_mlp: bad value for %s: %s\n", arg, val);
    return -1;
  }
  return 0;
}

static const char *const weights_name[] = {"f32", "bf16", "bf16-sr"};

int main(int argc, char **argv) {
  static const variant_t variants[] = {
      {"RMSprop32bit", QRMS_RMSPROP_32BIT, 1},
      {"RMSprop8bit blockwise", QRMS_RMSPROP_8BIT, 1},
      {"RMSprop8bit per-tensor", QRMS_RMSPROP_8BIT, 0},
      {"RMSprop4bit", QRMS_RMSPROP_4BIT, 1},
  };
  enum { N_VARIANTS = sizeof(variants) / sizeof(variants[0]) };
  static dataset_t train_set, test_set;
  result_t results[N_VARIANTS];
  options_t o;
  layout_t l;
  float *init = NULL;
  rng_t r;
  qrms_config defaults;
  int v, t, i, failed = 0;

  if (parse_args(argc, argv, &o) != 0) {
    usage(stderr);
    return 2;
  }
  if (o.cuda) {
#ifdef QRMS_EXAMPLE_CUDA
    if (qrms_cuda_device_count() < 1) {
      fprintf(stderr, "train_mlp: --device cuda: no CUDA device found\n");
      return 2;
    }
#else
    fprintf(stderr, "train_mlp: --device cuda needs a build with the CUDA backend (QRMS_CUDA=AUTO or ON)\n");
    return 2;
#endif
  }

  r.s = o.seed;
  make_spirals(&train_set, N_TRAIN_PER_CLASS, &r);
  make_spirals(&test_set, N_TEST_PER_CLASS, &r);
  make_layout(&l);
  init = (float *)malloc((size_t)l.total * sizeof(float));
  if (!init) return 2;
  init_params(init, &l, &r);

  qrms_config_init(&defaults);
  if (!o.json) {
    uint32_t ver = qrms_version();
    printf("qrmsprop %u.%u.%u, device %s, %d CPU threads\n", ver / 10000, ver / 100 % 100, ver % 100,
           o.cuda ? "cuda" : "cpu", (int)qrms_get_num_threads());
    printf("task: 3 spirals, %d train / %d test points; MLP 2-%d-%d-3 (ReLU), batch %d, %d steps, lr %g, seed %llu\n",
           N_TRAIN, N_TEST, H1, H2, o.batch, o.steps, (double)o.lr, (unsigned long long)o.seed);
    printf("weights the optimizer updates: %s; 8-bit square averages on the %s map\n", weights_name[o.weights],
           o.state_map == QRMS_MAP_UNSIGNED ? "unsigned" : "signed");
    printf("8-bit and 4-bit variants: quantized state for");
    for (t = 0; t < N_TENSORS; ++t)
      if (tensor_numel[t] >= defaults.min_8bit_size) printf(" %s (%lld)", tensor_name[t], (long long)tensor_numel[t]);
    printf("; 32-bit state (fewer than min_8bit_size = %lld elements) for", (long long)defaults.min_8bit_size);
    for (t = 0; t < N_TENSORS; ++t)
      if (tensor_numel[t] < defaults.min_8bit_size) printf(" %s (%lld)", tensor_name[t], (long long)tensor_numel[t]);
    printf("\n");
  }

  for (v = 0; v < N_VARIANTS; ++v) {
    result_t *res = &results[v];
    if (train(&variants[v], &o, &l, init, &train_set, &test_set, res) != 0) {
      free(init);
      return 2;
    }
    if (!(res->final_loss < res->initial_loss)) failed = 1;
    if (o.json) {
      printf("{\"variant\":\"%s\",\"device\":\"%s\",\"weights\":\"%s\",\"state_map\":\"%s\",\"steps\":%d,\"initial_loss\":%.6f,\"final_loss\":%.6f,"
             "\"train_accuracy\":%.4f,\"test_accuracy\":%.4f,\"state_bytes\":%lld,\"save_bytes\":%llu,"
             "\"seconds\":%.3f}\n",
             variants[v].name, o.cuda ? "cuda" : "cpu", weights_name[o.weights],
             o.state_map == QRMS_MAP_UNSIGNED ? "unsigned" : "signed", o.steps, (double)res->initial_loss,
             (double)res->final_loss, (double)res->train_acc, (double)res->test_acc,
             (long long)res->state_bytes, (unsigned long long)res->blob_bytes, res->seconds);
      continue;
    }
    printf("\n== %s ==\n", variants[v].name);
    printf("loss (train set) at step:");
    for (i = 0; i < res->curve_len; ++i) printf(" %d:%.3f", res->curve_step[i], (double)res->curve[i]);
    printf("\nfinal loss %.4f, train accuracy %.1f%%, test accuracy %.1f%%, state %lld bytes, %.2f s\n",
           (double)res->final_loss, 100.0 * res->train_acc, 100.0 * res->test_acc, (long long)res->state_bytes,
           res->seconds);
  }

  if (!o.json) {
    printf("\n%-24s %12s %12s %10s %10s %10s %9s\n", "variant", "state bytes", "init loss", "final loss",
           "train acc", "test acc", "seconds");
    for (v = 0; v < N_VARIANTS; ++v) {
      const result_t *res = &results[v];
      printf("%-24s %12lld %12.4f %10.4f %9.1f%% %9.1f%% %9.2f\n", variants[v].name, (long long)res->state_bytes,
             (double)res->initial_loss, (double)res->final_loss, 100.0 * res->train_acc, 100.0 * res->test_acc,
             res->seconds);
    }
    printf("%s\n", failed ? "FAIL: a variant did not reduce the loss" : "OK: every variant reduced the loss");
  }
  free(init);
  return failed ? 1 : 0;
}
