// One rank of NCCL on one GPU, through qrms_comm_nccl: a CUDA optimizer with
// a communicator (sharded step: split passes, slots kernels, ncclAllReduce on
// the step's stream) against the same optimizer without one, on clipping,
// max_unorm, per-tensor 8-bit and skip_nonfinite; an empty shard's step
// counter. Exits 77 (ctest: skipped) without a CUDA device.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "qrmsprop/qrmsprop_nccl.h"

namespace {

int failures = 0;

#define EXPECT(cond, ...)                             \
  do {                                                \
    if (!(cond)) {                                    \
      std::printf("FAILED: %s: ", #cond);             \
      std::printf(__VA_ARGS__);                       \
      std::printf(" (%s)\n", qrms_last_error());      \
      ++failures;                                     \
    }                                                 \
  } while (0)

}  // namespace

int main() {
  if (qrms_cuda_device_count() == 0) {
    std::printf("skipped: no CUDA device\n");
    return 77;
  }
  const int dev = 0;
  cudaSetDevice(dev);
  ncclComm_t nccl = nullptr;
  if (ncclCommInitAll(&nccl, 1, &dev) != ncclSuccess) {
    std::printf("FAILED: ncclCommInitAll\n");
    return 1;
  }
  qrms_comm comm;
  EXPECT(qrms_comm_nccl(nccl, &comm) == QRMS_SUCCESS, "qrms_comm_nccl");
  EXPECT(comm.rank == 0 && comm.world_size == 1 && comm.device == QRMS_DEVICE_CUDA && comm.device_index == dev,
         "rank %d world %d device %d index %d", comm.rank, comm.world_size, comm.device, comm.device_index);

  const int64_t n = 50000;
  qrms_config cfg;
  qrms_config_init(&cfg);
  cfg.lr = 1e-3f;
  cfg.block_wise = 0;
  cfg.percentile_clipping = 50;
  cfg.max_unorm = 0.5f;
  cfg.skip_nonfinite = 1;
  qrms_optimizer_t with = nullptr, without = nullptr;
  EXPECT(qrms_optimizer_create(&with, QRMS_RMSPROP_8BIT, &cfg, QRMS_DEVICE_CUDA, dev) == QRMS_SUCCESS, "create");
  EXPECT(qrms_optimizer_create(&without, QRMS_RMSPROP_8BIT, &cfg, QRMS_DEVICE_CUDA, dev) == QRMS_SUCCESS, "create");
  EXPECT(qrms_optimizer_set_comm(with, &comm) == QRMS_SUCCESS, "set_comm");
  float *p[2], *g = nullptr;
  cudaMalloc(&p[0], n * sizeof(float));
  cudaMalloc(&p[1], n * sizeof(float));
  cudaMalloc(&g, n * sizeof(float));
  std::vector<float> host(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) host[static_cast<size_t>(i)] = std::sin(0.001f * float(i));
  cudaMemcpy(p[0], host.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  cudaMemcpy(p[1], host.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  EXPECT(qrms_optimizer_add_param_shard(with, p[0], g, QRMS_FLOAT32, n, n, 0, nullptr) == QRMS_SUCCESS, "add");
  EXPECT(qrms_optimizer_add_param_shard(with, nullptr, nullptr, QRMS_FLOAT32, 0, n, n, nullptr) == QRMS_SUCCESS,
         "add an empty shard");
  EXPECT(qrms_optimizer_add_param(without, p[1], g, QRMS_FLOAT32, n, nullptr) == QRMS_SUCCESS, "add");

  cudaStream_t stream;
  cudaStreamCreate(&stream);
  const int steps = 6, inf_step = 3;
  for (int t = 0; t < steps; ++t) {
    for (int64_t i = 0; i < n; ++i)
      host[static_cast<size_t>(i)] = (t % 3 == 2 ? 8.0f : 1.0f) * std::cos(0.37f * float(i) + float(t));
    if (t == inf_step) host[7] = INFINITY;
    cudaMemcpyAsync(g, host.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream);
    EXPECT(qrms_optimizer_step(with, reinterpret_cast<qrms_stream_t>(stream)) == QRMS_SUCCESS, "step %d", t);
    EXPECT(qrms_optimizer_step(without, reinterpret_cast<qrms_stream_t>(stream)) == QRMS_SUCCESS, "step %d", t);
    cudaStreamSynchronize(stream);
    int32_t fa = -1, fb = -2;
    qrms_optimizer_read_found_inf(with, &fa);
    qrms_optimizer_read_found_inf(without, &fb);
    EXPECT(fa == fb && fa == (t == inf_step ? 1 : 0), "step %d: found-inf %d and %d", t, fa, fb);
  }
  std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
  cudaMemcpy(a.data(), p[0], n * sizeof(float), cudaMemcpyDeviceToHost);
  cudaMemcpy(b.data(), p[1], n * sizeof(float), cudaMemcpyDeviceToHost);
  int64_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(std::fabs(a[i] - b[i]) <= 1e-6f + 1e-4f * std::fabs(b[i]))) ++bad;
  EXPECT(bad == 0, "%lld elements differ beyond float tolerance", static_cast<long long>(bad));
  int64_t s0 = -1, s1 = -1;
  qrms_optimizer_get_step(with, 0, &s0);
  qrms_optimizer_get_step(with, 1, &s1);
  EXPECT(s0 == steps - 1 && s1 == steps - 1, "steps %lld and %lld (empty shard), want %d", static_cast<long long>(s0),
         static_cast<long long>(s1), steps - 1);

  qrms_optimizer_destroy(with);
  qrms_optimizer_destroy(without);
  cudaFree(p[0]);
  cudaFree(p[1]);
  cudaFree(g);
  cudaStreamDestroy(stream);
  ncclCommDestroy(nccl);
  std::printf("%s\n", failures ? "gpu_nccl_one_rank: FAILED" : "gpu_nccl_one_rank: passed");
  return failures ? 1 : 0;
}
