// The CUDA backend's quantizer (the dynamic maps' coder built in shared
// memory by each block, src/element.hpp) against the rule it replaces,
// math::quantize_nearest, on the host: every float of [-1, 1] ("[sweep]",
// its own ctest; QRMS_SWEEP_STRIDE=k takes every k-th, e.g. on the emulated
// device) or a strided sample plus every midpoint's neighbourhood.
#include <cstdlib>
#include <thread>

#include "core.hpp"
#include "gpu_util.hpp"

using namespace gputest;

namespace {

// Codes the device gives the floats +-bits_float(u), u = u0, u0 + stride, ...
// (at most `count` of them), quantized block-wise with blocks of 256 whose
// first element is 1.0, so each block's absmax is 1 and v / absmax is v.
// Returns the number that differ from quantize_nearest.
uint64_t device_mismatches(qrms::core::Backend &gpu, const std::vector<float> &q, const std::vector<float> &values) {
  const int64_t per_block = 255;
  const int64_t blocks = (int64_t(values.size()) + per_block - 1) / per_block;
  const int64_t n = blocks * 256;
  std::vector<float> in(size_t(n), 0.0f);
  for (int64_t b = 0; b < blocks; ++b) {
    in[size_t(b * 256)] = 1.0f;
    for (int64_t k = 0; k < per_block && b * per_block + k < int64_t(values.size()); ++k)
      in[size_t(b * 256 + 1 + k)] = values[size_t(b * per_block + k)];
  }
  const size_t bytes = static_cast<size_t>(n);
  DevBuf dq(256 * sizeof(float)), din(bytes * sizeof(float)), dcodes(bytes), dabs(static_cast<size_t>(blocks) * sizeof(float));
  CUDA_REQUIRE(cudaMemcpy(dq.get(), q.data(), 256 * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_REQUIRE(cudaMemcpy(din.get(), in.data(), size_t(n) * sizeof(float), cudaMemcpyHostToDevice));
  gpu.quantize_blockwise(dq.get<float>(), din.get<float>(), dcodes.get<uint8_t>(), dabs.get<float>(), n, 256, nullptr);
  std::vector<uint8_t> codes(bytes);
  CUDA_REQUIRE(cudaDeviceSynchronize());
  CUDA_REQUIRE(cudaMemcpy(codes.data(), dcodes.get(), bytes, cudaMemcpyDeviceToHost));

  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<uint64_t> bad(threads, 0);
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int64_t i = t; i < n; i += threads) bad[t] += codes[size_t(i)] != qrms::math::quantize_nearest(q.data(), in[size_t(i)]);
    });
  for (auto &th : pool) th.join();
  uint64_t total = 0;
  for (uint64_t b : bad) total += b;
  return total;
}

// +-bits_float(u) for u in [u0, u1] step `stride`, at most `limit` values from u0.
std::vector<float> floats(uint64_t u0, uint64_t u1, uint64_t stride, uint64_t limit) {
  std::vector<float> v;
  for (uint64_t u = u0; u <= u1 && v.size() < limit; u += stride) {
    const float x = qrms::math::bits_float(uint32_t(u));
    v.push_back(x);
    v.push_back(-x);
  }
  return v;
}

}  // namespace

TEST_CASE("gpu quantizer: the search's codes on a sample and around every midpoint", "[gpu][quant]") {
  const bool is_signed = GENERATE(true, false);
  CAPTURE(is_signed);
  const std::vector<float> q = qrms::dynamic_map(is_signed);
  auto gpu = qrms::core::make_cuda_backend(0);
  std::vector<float> v = floats(0, 0x3f800000u, 4099, uint64_t(1) << 40);
  for (size_t i = 0; i + 1 < q.size(); ++i) {
    float x = q[i] + (q[i + 1] - q[i]) / 2.0f;
    for (int k = 0; k < 8; ++k) x = std::nextafter(x, -INFINITY);
    for (int k = 0; k < 17; ++k, x = std::nextafter(x, INFINITY)) v.push_back(x);
    v.push_back(q[i]);
  }
  CHECK(device_mismatches(*gpu, q, v) == 0);
}

TEST_CASE("gpu quantizer: every float in [-1, 1]", "[gpu][sweep]") {
  const bool is_signed = GENERATE(true, false);
  CAPTURE(is_signed);
  const char *env = std::getenv("QRMS_SWEEP_STRIDE");
  const uint64_t stride = env && std::atoll(env) > 0 ? uint64_t(std::atoll(env)) : 1;
  const std::vector<float> q = qrms::dynamic_map(is_signed);
  auto gpu = qrms::core::make_cuda_backend(0);
  const uint64_t chunk = uint64_t(1) << 23;  // values of one sign per launch
  uint64_t bad = 0;
  for (uint64_t u0 = 0; u0 <= 0x3f800000u; u0 += chunk * stride)
    bad += device_mismatches(*gpu, q, floats(u0, 0x3f800000u, stride, 2 * chunk));
  CHECK(bad == 0);
}
