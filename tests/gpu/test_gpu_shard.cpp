// Sharded steps with the optimizer on the GPU and a communicator: rank 0 a
// CUDA optimizer, the other ranks CPU optimizers, as threads of this process
// with the thread communicator of tests/shard_harness.hpp (the GPU rank's
// all-reduce copies its device floats to the host and back, in stream
// order). Every case of the harness, against one CPU process holding whole
// tensors: same bits where no sum crosses ranks, the merged blob byte for
// byte the one-process blob, and a resume on one rank fewer (on the GPU). So
// the GPU's split passes, slot kernels (cuda/comm_kernels.cu) and sharded
// state run with a comm, on the emulated device too.
#include <cuda_runtime.h>

#include <catch2/catch.hpp>

#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../shard_harness.hpp"

namespace {

using shard::RankRef;

// Device floats through the host: wait for the step's stream, copy out, join
// the collective (also after a failed copy, so no rank waits out the
// timeout), copy back.
qrms_status_t device_all_reduce(void *user, float *data, int64_t count, qrms_reduce_op_t op, qrms_stream_t stream) {
  RankRef *r = static_cast<RankRef *>(user);
  std::vector<float> host(static_cast<size_t>(count));
  const size_t bytes = host.size() * sizeof(float);
  const bool copied = cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)) == cudaSuccess &&
                      cudaMemcpy(host.data(), data, bytes, cudaMemcpyDeviceToHost) == cudaSuccess;
  const qrms_status_t st = r->group->all_reduce(r->rank, host.data(), count, op);
  if (st != QRMS_SUCCESS) return st;
  if (!copied || cudaMemcpy(data, host.data(), bytes, cudaMemcpyHostToDevice) != cudaSuccess)
    return QRMS_ERROR_DEVICE;
  return QRMS_SUCCESS;
}

qrms_comm make_comm(RankRef &r, int world, bool gpu) {
  qrms_comm c = shard::thread_comm(r, world);
  if (gpu) {
    c.device = QRMS_DEVICE_CUDA;
    c.device_index = 0;
    c.all_reduce = device_all_reduce;
  }
  return c;
}

// Device copies of the GPU rank's buffers, freed with the placement.
struct GpuPlacement {
  shard::Placement place;
  std::vector<void *> owned;
  std::mutex mutex;
  GpuPlacement() {
    place.device = QRMS_DEVICE_CUDA;
    place.upload = [this](const void *host, size_t bytes) -> void * {
      void *d = nullptr;
      if (bytes == 0) return nullptr;
      if (cudaMalloc(&d, bytes) != cudaSuccess) return nullptr;
      {
        std::lock_guard<std::mutex> lock(mutex);
        owned.push_back(d);
      }
      return cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice) == cudaSuccess ? d : nullptr;
    };
    place.to_device = [](void *dev, const void *host, size_t bytes) {
      return cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice) == cudaSuccess;
    };
    place.to_host = [](void *host, const void *dev, size_t bytes) {
      return cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost) == cudaSuccess;
    };
  }
  ~GpuPlacement() {
    for (void *d : owned) cudaFree(d);
  }
};

// Every harness case on `world` ranks (rank 0 on the GPU), resuming on
// world - 1 (or 1).
std::vector<std::string> run_world(int world) {
  const int resume_world = world > 1 ? world - 1 : 1;
  std::vector<std::string> errors;
  for (const shard::Case &c : shard::cases()) {
    GpuPlacement gpu;
    shard::Group group(world), resume_group(resume_world);
    std::vector<RankRef> ranks, resume_ranks;
    for (int r = 0; r < world; ++r) ranks.push_back({&group, r});
    for (int r = 0; r < resume_world; ++r) resume_ranks.push_back({&resume_group, r});
    std::vector<std::string> out(static_cast<size_t>(world));
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r)
      threads.emplace_back([&, r] {
        const bool on_gpu = r == 0;
        const qrms_comm comm = make_comm(ranks[static_cast<size_t>(r)], world, on_gpu);
        qrms_comm resume{};
        if (r < resume_world) resume = make_comm(resume_ranks[static_cast<size_t>(r)], resume_world, on_gpu);
        out[static_cast<size_t>(r)] = shard::run_case(
            c, comm, [&](const std::vector<uint8_t> &b) { return group.gather(r, b); },
            r < resume_world ? &resume : nullptr, on_gpu ? gpu.place : shard::cpu());
      });
    for (auto &t : threads) t.join();
    for (const std::string &e : out)
      if (!e.empty()) errors.push_back(e);
    if (group.mismatched()) errors.push_back(c.name + ": ranks called different collectives");
  }
  return errors;
}

}  // namespace

TEST_CASE("sharded GPU steps with a communicator equal one process (1 and 2 ranks, rank 0 on the GPU)",
          "[shard]") {
  for (int world : {1, 2}) {
    INFO(world << " ranks");
    const std::vector<std::string> errors = run_world(world);
    for (const std::string &e : errors) UNSCOPED_INFO(e);
    CHECK(errors.empty());
  }
}
