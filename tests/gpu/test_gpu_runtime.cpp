// The CUDA runtime contract: graph capture, concurrent streams, pointer
// checks, device selection.
#include <thread>

#include "gpu_util.hpp"

using namespace gputest;
using qrms::Dtype;

namespace {

// A CUDA optimizer and its device params/grads, one group per (kind, dtype):
// 32-bit (small tensor), 8-bit block-wise, 8-bit per-tensor (own config).
struct GpuSetup {
  std::unique_ptr<qrms::RMSprop8bit> opt;
  std::vector<DevBuf> params, grads;
  std::vector<int64_t> sizes{300, 5000, 70001};
  std::vector<Dtype> dtypes{Dtype::BFloat16, Dtype::Float32, Dtype::Float16};

  explicit GpuSetup(const qrms::Args &args, float momentum, qrms::Device dev = qrms::Device::CUDA) {
    opt = std::make_unique<qrms::RMSprop8bit>(1e-2f, 0.99f, 1e-8f, 0.0f, momentum, false, args, dev, 0);
    for (size_t k = 0; k < sizes.size(); ++k) {
      const size_t bytes = size_t(sizes[k]) * dtype_size(dtypes[k]);
      params.emplace_back(bytes);
      grads.emplace_back(bytes);
      const std::vector<uint8_t> p = random_tensor(dtypes[k], sizes[k], 11u + uint32_t(k), 1.0f);
      CUDA_REQUIRE(cudaMemcpy(params[k].get(), p.data(), bytes, cudaMemcpyHostToDevice));
      opt->add_param(params[k].get(), grads[k].get(), dtypes[k], sizes[k]);
    }
    qrms::Config cfg = opt->config();
    cfg.args.block_wise = false;
    opt->set_param_config(2, cfg);
  }

  // Gradients of step s, copied on `stream`.
  void set_grads(int s, cudaStream_t stream, std::vector<std::vector<uint8_t>> &keep) {
    keep.resize(sizes.size());
    for (size_t k = 0; k < sizes.size(); ++k) {
      keep[k] = random_tensor(dtypes[k], sizes[k], 900u + 31u * uint32_t(s) + uint32_t(k), 1.0f + float(s % 3), 0.05);
      CUDA_REQUIRE(cudaMemcpyAsync(grads[k].get(), keep[k].data(), keep[k].size(), cudaMemcpyHostToDevice, stream));
    }
  }
};

void compare_setups(GpuSetup &a, GpuSetup &b, bool exact) {
  CUDA_REQUIRE(cudaDeviceSynchronize());
  for (size_t k = 0; k < a.sizes.size(); ++k) {
    CAPTURE(k);
    const size_t bytes = a.params[k].size();
    std::vector<uint8_t> pa(bytes), pb(bytes);
    CUDA_REQUIRE(cudaMemcpy(pa.data(), a.params[k].get(), bytes, cudaMemcpyDeviceToHost));
    CUDA_REQUIRE(cudaMemcpy(pb.data(), b.params[k].get(), bytes, cudaMemcpyDeviceToHost));
    const Dtype d = a.dtypes[k];
    const Diff dp = compare(
        a.sizes[k], exact, [&](int64_t i) { return get_elem(d, pa.data(), i); },
        [&](int64_t i) { return get_elem(d, pb.data(), i); });
    INFO("params: " << dp.str());
    CHECK(dp.fraction() <= (exact ? 0.0 : 0.01));
    const std::vector<float> sa = a.opt->read_state(int64_t(k), QRMS_STATE_SQUARE_AVG);
    const std::vector<float> sb = b.opt->read_state(int64_t(k), QRMS_STATE_SQUARE_AVG);
    const Diff ds = compare(
        a.sizes[k], exact, [&](int64_t i) { return sa[size_t(i)]; }, [&](int64_t i) { return sb[size_t(i)]; });
    INFO("state: " << ds.str());
    CHECK(ds.fraction() <= (exact ? 0.0 : 0.01));
  }
}

}  // namespace

TEST_CASE("a captured CUDA graph of step() replays like plain steps", "[gpu][graph][sanitize]") {
  // Exact: no tensor-wide float sums. With clipping and max_unorm the GPU's
  // atomic sums may differ in the last bit between runs.
  const bool with_sums = GENERATE(false, true);
  CAPTURE(with_sums);
  qrms::Args args;
  if (with_sums) {
    args.percentile_clipping = 50;
    args.max_unorm = 1.0f;
  }
  GpuSetup graphed(args, 0.9f), plain(args, 0.9f);
  cudaStream_t stream;
  CUDA_REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  cudaGraph_t graph = nullptr;
  CUDA_REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  graphed.opt->step(stream);
  CUDA_REQUIRE(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  CUDA_REQUIRE(cudaGraphInstantiate(&exec, graph, 0));

  std::vector<std::vector<uint8_t>> keep_a, keep_b;
  const int kSteps = 6;
  for (int s = 0; s < kSteps; ++s) {
    graphed.set_grads(s, stream, keep_a);
    CUDA_REQUIRE(cudaGraphLaunch(exec, stream));
    CUDA_REQUIRE(cudaStreamSynchronize(stream));  // keep_a is reused
    plain.set_grads(s, stream, keep_b);
    plain.opt->step(stream);
    CUDA_REQUIRE(cudaStreamSynchronize(stream));
  }
  compare_setups(graphed, plain, !with_sums);
  CUDA_REQUIRE(cudaGraphExecDestroy(exec));
  CUDA_REQUIRE(cudaGraphDestroy(graph));
  CUDA_REQUIRE(cudaStreamDestroy(stream));
}

TEST_CASE("two optimizers step concurrently on two streams from two threads", "[gpu][streams]") {
  qrms::Args args;
  GpuSetup a(args, 0.9f), b(args, 0.9f), ref_a(args, 0.9f), ref_b(args, 0.9f);
  cudaStream_t sa, sb;
  CUDA_REQUIRE(cudaStreamCreateWithFlags(&sa, cudaStreamNonBlocking));
  CUDA_REQUIRE(cudaStreamCreateWithFlags(&sb, cudaStreamNonBlocking));
  std::vector<std::vector<uint8_t>> ka, kb, kra, krb;
  a.set_grads(0, sa, ka);
  b.set_grads(1, sb, kb);
  ref_a.set_grads(0, sa, kra);
  ref_b.set_grads(1, sb, krb);
  CUDA_REQUIRE(cudaDeviceSynchronize());

  const int kSteps = 20;
  std::string err_a, err_b;
  auto run = [](qrms::Optimizer1State &opt, cudaStream_t s, int steps, std::string &err) {
    try {
      for (int i = 0; i < steps; ++i) opt.step(s);
    } catch (const std::exception &e) {
      err = e.what();
    }
  };
  std::thread ta(run, std::ref(*a.opt), sa, kSteps, std::ref(err_a));
  std::thread tb(run, std::ref(*b.opt), sb, kSteps, std::ref(err_b));
  ta.join();
  tb.join();
  CHECK(err_a.empty());
  CHECK(err_b.empty());
  // The references step one after the other on the legacy default stream.
  for (int i = 0; i < kSteps; ++i) ref_a.opt->step(nullptr);
  for (int i = 0; i < kSteps; ++i) ref_b.opt->step(nullptr);
  compare_setups(a, ref_a, true);
  compare_setups(b, ref_b, true);
  CUDA_REQUIRE(cudaStreamDestroy(sa));
  CUDA_REQUIRE(cudaStreamDestroy(sb));
}

TEST_CASE("pointers that are not memory of the optimizer's device are a DeviceError", "[gpu][pointers]") {
  qrms::RMSprop opt(1e-2f, 0.99f, 1e-8f, 0.0f, 0.0f, false, 32, qrms::Args{}, qrms::Device::CUDA, 0);
  const int64_t n = 1024;
  std::vector<float> host(n, 0.0f);
  DevBuf dev(n * sizeof(float)), dev_grad(n * sizeof(float));

  SECTION("host param") {
    CHECK_THROWS_AS(opt.add_param(host.data(), dev_grad.get(), Dtype::Float32, n), qrms::DeviceError);
    CHECK_THROWS_WITH(opt.add_param(host.data(), dev_grad.get(), Dtype::Float32, n),
                      Catch::Contains("param") && Catch::Contains("device"));
    CHECK(opt.param_count() == 0);
  }
  SECTION("host grad") {
    CHECK_THROWS_AS(opt.add_param(dev.get(), host.data(), Dtype::Float32, n), qrms::DeviceError);
    CHECK(opt.param_count() == 0);
    CHECK(opt.state_bytes() == 0);
  }
  SECTION("host grad through set_grad") {
    const int64_t i = opt.add_param(dev.get(), nullptr, Dtype::Float32, n);
    CHECK_THROWS_AS(opt.set_grad(i, host.data()), qrms::DeviceError);
    opt.step(nullptr);  // the grad stayed NULL: nothing happens
    CHECK(opt.get_step(i) == 0);
  }
  SECTION("page-locked host memory") {
    void *pinned = nullptr;
    CUDA_REQUIRE(cudaMallocHost(&pinned, n * sizeof(float)));
    CHECK_THROWS_AS(opt.add_param(pinned, dev_grad.get(), Dtype::Float32, n), qrms::DeviceError);
    CHECK(opt.param_count() == 0);
    CUDA_REQUIRE(cudaFreeHost(pinned));
  }
  SECTION("managed memory is accepted") {
    void *managed = nullptr;
    CUDA_REQUIRE(cudaMallocManaged(&managed, n * sizeof(float)));
    std::memset(managed, 0, n * sizeof(float));
    CHECK_NOTHROW(opt.add_param(managed, dev_grad.get(), Dtype::Float32, n));
    CHECK(opt.param_count() == 1);
    CUDA_REQUIRE(cudaDeviceSynchronize());
    opt.step(nullptr);
    CUDA_REQUIRE(cudaDeviceSynchronize());
    CUDA_REQUIRE(cudaFree(managed));
  }
  SECTION("memory of another device") {
    if (device_count() < 2) {
      WARN("only one CUDA device: the other-device pointer check is not exercised");
    } else {
      int prev = 0;
      CUDA_REQUIRE(cudaGetDevice(&prev));
      CUDA_REQUIRE(cudaSetDevice(1));
      void *other = nullptr;
      CUDA_REQUIRE(cudaMalloc(&other, n * sizeof(float)));
      CUDA_REQUIRE(cudaSetDevice(prev));
      CHECK_THROWS_AS(opt.add_param(other, dev_grad.get(), Dtype::Float32, n), qrms::DeviceError);
      CHECK_THROWS_WITH(opt.add_param(other, dev_grad.get(), Dtype::Float32, n), Catch::Contains("device 1"));
      CHECK(opt.param_count() == 0);
      CUDA_REQUIRE(cudaFree(other));
    }
  }
}

TEST_CASE("a CUDA optimizer on a device that does not exist is a DeviceError", "[gpu][device]") {
  const int count = device_count();
  // -1 is not among them: it means the calling thread's current device.
  for (int idx : {count, count + 7, -2}) {
    CAPTURE(idx);
    CHECK_THROWS_AS(qrms::RMSprop(1e-2f, 0.99f, 1e-8f, 0.0f, 0.0f, false, 32, qrms::Args{}, qrms::Device::CUDA, idx),
                    qrms::DeviceError);
  }
  {
    qrms::RMSprop current(1e-2f, 0.99f, 1e-8f, 0.0f, 0.0f, false, 32, qrms::Args{}, qrms::Device::CUDA, -1);
    CHECK(current.device() == qrms::Device::CUDA);
  }
  // The caller's current device is left alone by a working optimizer too.
  int before = -1, after = -1;
  CUDA_REQUIRE(cudaGetDevice(&before));
  {
    qrms::RMSprop ok(1e-2f, 0.99f, 1e-8f, 0.0f, 0.0f, false, 32, qrms::Args{}, qrms::Device::CUDA, count - 1);
    CHECK(ok.device() == qrms::Device::CUDA);
  }
  CUDA_REQUIRE(cudaGetDevice(&after));
  CHECK(before == after);
}

#ifdef QRMS_EMULATED_DEVICE
// The emulated device reports the driver version QRMS_EMU_DRIVER_VERSION
// says; a real driver cannot be made older from a test.
TEST_CASE("a CUDA driver older than the runtime is a DeviceError at creation", "[gpu][device]") {
  const char *old_driver = GENERATE("12080", "0");
  CAPTURE(old_driver);
  REQUIRE(setenv("QRMS_EMU_DRIVER_VERSION", old_driver, 1) == 0);
  std::string message;
  try {
    qrms::RMSprop opt(1e-2f, 0.99f, 1e-8f, 0.0f, 0.0f, false, 32, qrms::Args{}, qrms::Device::CUDA, 0);
  } catch (const qrms::DeviceError &e) {
    message = e.what();
  }
  unsetenv("QRMS_EMU_DRIVER_VERSION");
  CHECK_THAT(message, Catch::Contains("driver"));
  // With the runtime's own version it works.
  qrms::RMSprop opt(1e-2f, 0.99f, 1e-8f, 0.0f, 0.0f, false, 32, qrms::Args{}, qrms::Device::CUDA, 0);
  CHECK(opt.device() == qrms::Device::CUDA);
}
#endif
