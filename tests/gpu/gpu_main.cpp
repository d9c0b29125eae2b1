// Entry point of the GPU tests: without a usable CUDA device it says why and
// exits 77, which ctest reports as skipped (SKIP_RETURN_CODE), never passed.
#define CATCH_CONFIG_RUNNER
#include <cuda_runtime.h>

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>

#include "core.hpp"

int main(int argc, char **argv) {
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
