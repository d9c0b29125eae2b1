// Entry point of the GPU tests: without a usable CUDA device it says why and
// exits 77, which ctest reports as skipped (SKIP_RETURN_CODE), never passed.
//
// `qrms_test_gpu --preflight` (used by scripts/gpu-check.sh) prints the
// driver, runtime and device, then creates a CUDA backend, which checks the
// driver against the runtime and that this build has kernels for the
// device: exit 0 when the tests can run here, 2 with the reason when not.
#define CATCH_CONFIG_RUNNER
#include <cuda_runtime.h>

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>
#include <exception>

#include "core.hpp"

namespace {

int preflight() {
  int driver = 0, runtime = 0, count = 0;
  (void)cudaDriverGetVersion(&driver);
  (void)cudaRuntimeGetVersion(&runtime);
  const cudaError_t err = cudaGetDeviceCount(&count);
  std::printf("driver supports CUDA %d.%d, runtime (this build) CUDA %d.%d\n", driver / 1000, driver % 1000 / 10,
              runtime / 1000, runtime % 1000 / 10);
  if (err != cudaSuccess || count == 0) {
    std::printf("PREFLIGHT FAILED: no usable CUDA device (%s)\n",
                err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return 2;
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
    std::printf("device 0: %s, compute capability %d.%d, %d SMs, %.1f GiB\n", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, double(prop.totalGlobalMem) / double(1u << 30));
  try {
    (void)qrms::core::make_cuda_backend(0);
  } catch (const std::exception &e) {
    std::printf("PREFLIGHT FAILED: %s\n", e.what());
    return 2;
  }
  std::printf("preflight ok: the kernels of this build run on device 0\n");
  return 0;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc == 2 && std::strcmp(argv[1], "--preflight") == 0) return preflight();
  // Listing needs no device (ctest's test discovery runs it at build time).
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--list", 6) == 0) return Catch::Session().run(argc, argv);
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0 || qrms::core::cuda_device_count() == 0) {
    std::printf("skipped: no CUDA device (%s)\n",
                err != cudaSuccess ? cudaGetErrorString(err) : "cudaGetDeviceCount reports 0 devices");
    return 77;
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
    std::printf("CUDA device 0: %s, compute capability %d.%d, %d device(s)\n", prop.name, prop.major, prop.minor,
                count);
  return Catch::Session().run(argc, argv);
}
