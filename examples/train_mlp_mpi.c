/*
 * train_mlp_mpi: data-parallel training with sharded optimizer state (ZeRO
 * stage 1) over MPI, through qrmsprop's C ABI and its MPI adapter.
 *
 * The MLP and data of train_mlp.c (2 -> 128 -> 128 -> 3 on three spirals),
 * with all parameters in one flat array of 17283 floats. Every rank:
 *   1. computes the gradient of its share of the minibatch,
 *   2. reduce-scatters the gradients (MPI_Reduce_scatter): each rank gets the
 *      summed gradient of its shard of the flat array only,
 *   3. steps its shard with qrmsprop (RMSprop8bit, block-wise state; the
 *      shards start at multiples of 256), with an MPI communicator set so that
 *      skip_nonfinite decides for all ranks together,
 *   4. all-gathers the parameters (MPI_Allgatherv).
 * Gradients are summed in double, so the losses printed at 1, 2 or more
 * ranks are the same to the last printed digit. At the end the ranks' state
 * blobs are merged on rank 0 (qrms_state_merge) into one unsharded
 * checkpoint.
 *
 * Usage: mpirun -n R train_mlp_mpi [--steps N] [--batch B] [--lr X]
 * Exit status: 0 when the loss went down, 1 when not, 2 on an error.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>
#include <qrmsprop/qrmsprop.h>
#include <qrmsprop/qrmsprop_mpi.h>

#define D_IN 2
#define H1 128
#define H2 128
#define N_CLASSES 3
#define PER_CLASS 300
#define N_TRAIN (N_CLASSES * PER_CLASS)
#define PI_F 3.14159265358979f

/* Offsets of the tensors in the flat parameter array. */
#define O_W1 0
#define O_B1 (O_W1 + H1 * D_IN)
#define O_W2 (O_B1 + H1)
#define O_B2 (O_W2 + H2 * H1)
#define O_W3 (O_B2 + H2)
#define O_B3 (O_W3 + N_CLASSES * H2)
#define N_PARAMS (O_B3 + N_CLASSES)

static int g_rank = 0;

#define CHECK(call)                                                                      \
  do {                                                                                   \
    qrms_status_t st_ = (call);                                                          \
    if (st_ != QRMS_SUCCESS) {                                                           \
      fprintf(stderr, "rank %d: %s failed: %s\n", g_rank, #call, qrms_last_error());     \
      MPI_Abort(MPI_COMM_WORLD, 2);                                                      \
    }                                                                                    \
  } while (0)

/* splitmix64, as train_mlp.c */
static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static float rng_uniform(uint64_t *s) { return (float)(rng_next(s) >> 40) * (1.0f / 16777216.0f); }

static float xs[N_TRAIN][D_IN];
static int ys[N_TRAIN];

static void make_data(uint64_t *s) {
  int c, i, k = 0;
  for (c = 0; c < N_CLASSES; ++c)
    for (i = 0; i < PER_CLASS; ++i, ++k) {
      const float r = (float)(i + 1) / PER_CLASS;
      float u1 = rng_uniform(s), u2 = rng_uniform(s);
      if (u1 < 1e-7f) u1 = 1e-7f;
      const float noise = sqrtf(-2.0f * logf(u1)) * cosf(2.0f * PI_F * u2);
      const float theta = (float)c * (2.0f * PI_F / N_CLASSES) + 5.0f * r + 0.25f * noise;
      xs[k][0] = r * sinf(theta);
      xs[k][1] = r * cosf(theta);
      ys[k] = c;
    }
}

/* Loss of example k; adds scale * its gradient to g (double). */
static double example(const float *p, int k, float scale, double *g) {
  float a1[H1], h1[H1], a2[H2], h2[H2], o[N_CLASSES], d3[N_CLASSES], d2[H2], d1[H1];
  float mx, sum;
  int i, j;
  const float *x = xs[k];
  for (i = 0; i < H1; ++i) {
    float s = p[O_B1 + i];
    for (j = 0; j < D_IN; ++j) s += p[O_W1 + i * D_IN + j] * x[j];
    a1[i] = s;
    h1[i] = s > 0.0f ? s : 0.0f;
  }
  for (i = 0; i < H2; ++i) {
    float s = p[O_B2 + i];
    for (j = 0; j < H1; ++j) s += p[O_W2 + i * H1 + j] * h1[j];
    a2[i] = s;
    h2[i] = s > 0.0f ? s : 0.0f;
  }
  for (i = 0; i < N_CLASSES; ++i) {
    float s = p[O_B3 + i];
    for (j = 0; j < H2; ++j) s += p[O_W3 + i * H2 + j] * h2[j];
    o[i] = s;
  }
  mx = o[0];
  for (i = 1; i < N_CLASSES; ++i) mx = o[i] > mx ? o[i] : mx;
  sum = 0.0f;
  for (i = 0; i < N_CLASSES; ++i) sum += (o[i] = expf(o[i] - mx));
  for (i = 0; i < N_CLASSES; ++i) o[i] /= sum;

  for (i = 0; i < N_CLASSES; ++i) d3[i] = scale * (o[i] - (i == ys[k] ? 1.0f : 0.0f));
  for (j = 0; j < H2; ++j) d2[j] = 0.0f;
  for (i = 0; i < N_CLASSES; ++i) {
    g[O_B3 + i] += d3[i];
    for (j = 0; j < H2; ++j) {
      g[O_W3 + i * H2 + j] += d3[i] * h2[j];
      d2[j] += p[O_W3 + i * H2 + j] * d3[i];
    }
  }
  for (j = 0; j < H1; ++j) d1[j] = 0.0f;
  for (i = 0; i < H2; ++i) {
    const float d = a2[i] > 0.0f ? d2[i] : 0.0f;
    g[O_B2 + i] += d;
    for (j = 0; j < H1; ++j) {
      g[O_W2 + i * H1 + j] += d * h1[j];
      d1[j] += p[O_W2 + i * H1 + j] * d;
    }
  }
  for (i = 0; i < H1; ++i) {
    const float d = a1[i] > 0.0f ? d1[i] : 0.0f;
    g[O_B1 + i] += d;
    for (j = 0; j < D_IN; ++j) g[O_W1 + i * D_IN + j] += d * x[j];
  }
  return -log(o[ys[k]] > 1e-30f ? (double)o[ys[k]] : 1e-30);
}

int main(int argc, char **argv) {
  int steps = 100, batch = 128, world = 1, r, i, t;
  float lr = 3e-3f;
  static float params[N_PARAMS];
  static double grad_local[N_PARAMS];
  int counts[64], displs[64];
  double first_loss = 0.0, loss = 0.0;
  uint64_t seed = 7;
  qrms_config cfg;
  qrms_comm comm;
  qrms_optimizer_t opt = NULL;
  float *grad_shard;
  double *grad_shard_d;
  int64_t offset, numel;

  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  for (i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--steps") == 0) steps = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--batch") == 0) batch = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--lr") == 0) lr = (float)atof(argv[i + 1]);
  }
  if (world > 64 || steps < 1 || batch < world || batch > N_TRAIN) {
    if (g_rank == 0) fprintf(stderr, "usage: mpirun -n R (R <= 64) train_mlp_mpi [--steps N] [--batch B >= R] [--lr X]\n");
    MPI_Finalize();
    return 2;
  }

  /* The same data and initial weights on every rank. */
  make_data(&seed);
  for (i = 0; i < N_PARAMS; ++i) params[i] = 0.0f;
  for (i = 0; i < H1 * D_IN; ++i) params[O_W1 + i] = sqrtf(6.0f / D_IN) * (2.0f * rng_uniform(&seed) - 1.0f);
  for (i = 0; i < H2 * H1; ++i) params[O_W2 + i] = sqrtf(6.0f / H1) * (2.0f * rng_uniform(&seed) - 1.0f);
  for (i = 0; i < N_CLASSES * H2; ++i) params[O_W3 + i] = sqrtf(6.0f / H2) * (2.0f * rng_uniform(&seed) - 1.0f);

  /* Shards of the flat array: whole blocks of 256, the last rank takes the rest. */
  for (r = 0; r < world; ++r) {
    const int per = (N_PARAMS / world + 255) / 256 * 256;
    displs[r] = r * per < N_PARAMS ? r * per : N_PARAMS;
    counts[r] = (r == world - 1 ? N_PARAMS : (displs[r] + per < N_PARAMS ? displs[r] + per : N_PARAMS)) - displs[r];
  }
  offset = displs[g_rank];
  numel = counts[g_rank];
  grad_shard = calloc((size_t)numel + 1, sizeof(float));
  grad_shard_d = calloc((size_t)numel + 1, sizeof(double));

  qrms_config_init(&cfg);
  cfg.lr = lr;
  cfg.skip_nonfinite = 1; /* every rank skips a step when any rank's gradient is not finite */
  CHECK(qrms_optimizer_create(&opt, QRMS_RMSPROP_8BIT, &cfg, QRMS_DEVICE_CPU, 0));
  CHECK(qrms_comm_mpi(MPI_COMM_WORLD, &comm));
  CHECK(qrms_optimizer_set_comm(opt, &comm));
  CHECK(qrms_optimizer_add_param_shard(opt, params + offset, grad_shard, QRMS_FLOAT32, numel, N_PARAMS, offset, NULL));

  for (t = 0; t < steps; ++t) {
    /* This rank's share of a minibatch that every rank draws alike. */
    const int lo = batch * g_rank / world, hi = batch * (g_rank + 1) / world;
    double local_loss = 0.0;
    memset(grad_local, 0, sizeof grad_local);
    for (i = 0; i < batch; ++i) {
      const int k = (int)(rng_next(&seed) % N_TRAIN);
      if (i >= lo && i < hi) local_loss += example(params, k, 1.0f / (float)batch, grad_local);
    }
    MPI_Allreduce(&local_loss, &loss, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    loss /= batch;
    if (t == 0) first_loss = loss;
    if (g_rank == 0 && (t % 10 == 0 || t == steps - 1)) printf("step %3d loss %.9f\n", t, loss);
    MPI_Reduce_scatter(grad_local, grad_shard_d, counts, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    for (i = 0; i < numel; ++i) grad_shard[i] = (float)grad_shard_d[i];
    CHECK(qrms_optimizer_step(opt, NULL));
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, params, counts, displs, MPI_FLOAT, MPI_COMM_WORLD);
  }

  { /* One unsharded checkpoint from every rank's blob. */
    size_t size = 0, merged_size = 0;
    int bytes, *sizes = calloc((size_t)world, sizeof(int)), *offs = calloc((size_t)world, sizeof(int)), total = 0;
    unsigned char *blob, *all = NULL;
    CHECK(qrms_optimizer_save(opt, NULL, 0, &size));
    blob = malloc(size);
    CHECK(qrms_optimizer_save(opt, blob, size, &size));
    bytes = (int)size;
    MPI_Gather(&bytes, 1, MPI_INT, sizes, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (g_rank == 0) {
      for (r = 0; r < world; ++r) {
        offs[r] = total;
        total += sizes[r];
      }
      all = malloc((size_t)total);
    }
    MPI_Gatherv(blob, bytes, MPI_BYTE, all, sizes, offs, MPI_BYTE, 0, MPI_COMM_WORLD);
    if (g_rank == 0) {
      const void *ptrs[64];
      size_t lens[64];
      for (r = 0; r < world; ++r) {
        ptrs[r] = all + offs[r];
        lens[r] = (size_t)sizes[r];
      }
      CHECK(qrms_state_merge(ptrs, lens, world, NULL, 0, &merged_size));
      printf("ranks %d, shard of rank 0: %lld of %d elements, merged checkpoint %zu bytes\n", world,
             (long long)counts[0], N_PARAMS, merged_size);
    }
    free(all);
    free(blob);
    free(sizes);
    free(offs);
  }
  qrms_optimizer_destroy(opt);
  free(grad_shard);
  free(grad_shard_d);
  MPI_Finalize();
  return loss < first_loss ? 0 : 1;
}
