// Sharded optimizers with ranks as threads of this process: a fake
// communicator (tests only) whose all-reduce sums in rank order, and which
// reports a rank that calls a different collective than the others, or none
// within a few seconds, instead of hanging. The same rank program as the MPI
// tests (shard_harness.hpp); plus the validation of shards, comms and merges.
#include <catch2/catch.hpp>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <thread>

#include "capi_helpers.hpp"
#include "shard_harness.hpp"

namespace {

using shard::RankRef;
using shard::thread_comm;

// Runs every case on `world` threads (resuming on world - 1, or 1).
std::vector<std::string> run_world(int world) {
  const int resume_world = world > 1 ? world - 1 : 1;
  std::vector<std::string> errors;
  for (const shard::Case &c : shard::cases()) {
    shard::Group group(world), resume_group(resume_world);
    std::vector<RankRef> refs, resume_refs;
    for (int r = 0; r < world; ++r) refs.push_back({&group, r});
    for (int r = 0; r < resume_world; ++r) resume_refs.push_back({&resume_group, r});
    std::vector<std::string> out(static_cast<size_t>(world));
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r)
      threads.emplace_back([&, r] {
        const qrms_comm comm = thread_comm(refs[static_cast<size_t>(r)], world);
        qrms_comm resume{};
        if (r < resume_world) resume = thread_comm(resume_refs[static_cast<size_t>(r)], resume_world);
        out[static_cast<size_t>(r)] = shard::run_case(
            c, comm, [&](const std::vector<uint8_t> &b) { return group.gather(r, b); },
            r < resume_world ? &resume : nullptr);
      });
    for (auto &t : threads) t.join();
    for (const std::string &e : out)
      if (!e.empty()) errors.push_back(e);
  }
  return errors;
}

}  // namespace

TEST_CASE("sharded steps equal one process holding whole tensors (1, 2, 3 ranks)", "[shard]") {
  for (int world : {1, 2, 3}) {
    INFO(world << " ranks");
    const std::vector<std::string> errors = run_world(world);
    for (const std::string &e : errors) UNSCOPED_INFO(e);
    CHECK(errors.empty());
  }
}

TEST_CASE("add_param_shard validates the shard", "[shard]") {
  qrms_config cfg = qtest::config();
  cfg.min_8bit_size = 1000;
  qrms_optimizer_t opt = nullptr;
  QRMS_REQUIRE_OK(qrms_optimizer_create(&opt, QRMS_RMSPROP_8BIT, &cfg, QRMS_DEVICE_CPU, 0));
  std::vector<float> p(4096), g(4096);
  QRMS_CHECK_FAILS(qrms_optimizer_add_param_shard(opt, p.data(), g.data(), QRMS_FLOAT32, 512, 4096, 100, nullptr),
                   QRMS_ERROR_INVALID_ARGUMENT, "multiple of 256");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param_shard(opt, p.data(), g.data(), QRMS_FLOAT32, 512, 4096, 3840, nullptr),
                   QRMS_ERROR_INVALID_ARGUMENT, "must lie within");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param_shard(opt, p.data(), g.data(), QRMS_FLOAT32, -1, 4096, 0, nullptr),
                   QRMS_ERROR_INVALID_ARGUMENT, "must lie within");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param_shard(opt, p.data(), g.data(), QRMS_FLOAT32, 10, 0, 0, nullptr),
                   QRMS_ERROR_INVALID_ARGUMENT, "global_numel");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param_shard(opt, p.data(), g.data(), QRMS_FLOAT32, 10, INT64_MAX, INT64_MAX - 5,
                                                  nullptr),
                   QRMS_ERROR_INVALID_ARGUMENT, "must lie within");
  QRMS_CHECK_FAILS(qrms_optimizer_add_param_shard(opt, nullptr, g.data(), QRMS_FLOAT32, 10, 100, 0, nullptr),
                   QRMS_ERROR_INVALID_ARGUMENT, "NULL");
  int64_t count = -1;
  QRMS_REQUIRE_OK(qrms_optimizer_param_count(opt, &count));
  CHECK(count == 0);  // nothing was added
  // min_8bit_size applies to the whole tensor: a 512-element shard of 4096 is 8-bit.
  int64_t index = -1, global = 0, offset = -1, numel = 0;
  int32_t bits = 0;
  QRMS_REQUIRE_OK(qrms_optimizer_add_param_shard(opt, p.data(), g.data(), QRMS_FLOAT32, 512, 4096, 1024, &index));
  QRMS_REQUIRE_OK(qrms_optimizer_param_info(opt, index, &numel, nullptr, &bits));
  QRMS_REQUIRE_OK(qrms_optimizer_shard_info(opt, index, &global, &offset));
  CHECK(numel == 512);
  CHECK(bits == 8);
  CHECK(global == 4096);
  CHECK(offset == 1024);
  // Per-tensor 8-bit and 32-bit shards may start anywhere; an empty one needs no pointers.
  QRMS_REQUIRE_OK(qrms_optimizer_add_param_shard(opt, nullptr, nullptr, QRMS_FLOAT32, 0, 4096, 4096, &index));
  // (300 elements in all: below min_8bit_size, so 32-bit state)
  QRMS_REQUIRE_OK(qrms_optimizer_add_param_shard(opt, p.data() + 2048, g.data() + 2048, QRMS_FLOAT32, 100, 300, 7,
                                                 &index));
  // A per-parameter config that makes a misplaced shard block-wise 8-bit is refused.
  qrms_optimizer_t opt32 = nullptr;
  QRMS_REQUIRE_OK(qrms_optimizer_create(&opt32, QRMS_RMSPROP_32BIT, &cfg, QRMS_DEVICE_CPU, 0));
  QRMS_REQUIRE_OK(qrms_optimizer_add_param_shard(opt32, p.data(), g.data(), QRMS_FLOAT32, 1000, 5000, 100, &index));
  qrms_config to8 = cfg;
  to8.optim_bits = 8;
  QRMS_CHECK_FAILS(qrms_optimizer_set_param_config(opt32, index, &to8), QRMS_ERROR_INVALID_ARGUMENT, "multiple of 256");
  QRMS_REQUIRE_OK(qrms_optimizer_param_info(opt32, index, nullptr, nullptr, &bits));
  CHECK(bits == 32);
  // 4-bit state: blocks of 128.
  qrms_optimizer_t opt4 = nullptr;
  QRMS_REQUIRE_OK(qrms_optimizer_create(&opt4, QRMS_RMSPROP_4BIT, &cfg, QRMS_DEVICE_CPU, 0));
  QRMS_CHECK_FAILS(qrms_optimizer_add_param_shard(opt4, p.data(), g.data(), QRMS_FLOAT32, 512, 4096, 64, nullptr),
                   QRMS_ERROR_INVALID_ARGUMENT, "multiple of 128");
  QRMS_REQUIRE_OK(qrms_optimizer_add_param_shard(opt4, p.data(), g.data(), QRMS_FLOAT32, 511, 4096, 128, &index));
  QRMS_REQUIRE_OK(qrms_optimizer_param_info(opt4, index, nullptr, nullptr, &bits));
  CHECK(bits == 4);
  QRMS_REQUIRE_OK(qrms_optimizer_add_param_shard(opt32, p.data() + 1000, g.data() + 1000, QRMS_FLOAT32, 1000, 5000, 64,
                                                 &index));
  qrms_config to4 = cfg;
  to4.optim_bits = 4;
  QRMS_CHECK_FAILS(qrms_optimizer_set_param_config(opt32, index, &to4), QRMS_ERROR_INVALID_ARGUMENT, "multiple of 128");
  qrms_optimizer_destroy(opt4);
  qrms_optimizer_destroy(opt32);
  qrms_optimizer_destroy(opt);
}

TEST_CASE("set_comm validates the communicator and changes nothing when it fails", "[shard]") {
  qrms_optimizer_t opt = nullptr;
  qrms_config cfg = qtest::config();
  cfg.percentile_clipping = 50;
  QRMS_REQUIRE_OK(qrms_optimizer_create(&opt, QRMS_RMSPROP, &cfg, QRMS_DEVICE_CPU, 0));
  std::vector<float> p(100, 1.0f), g(100, 0.5f);
  QRMS_REQUIRE_OK(qrms_optimizer_add_param_shard(opt, p.data(), g.data(), QRMS_FLOAT32, 100, 300, 100, nullptr));
  // A shard that needs whole-tensor figures (clipping) does not step without a comm.
  QRMS_CHECK_FAILS(qrms_optimizer_step(opt, nullptr), QRMS_ERROR_INVALID_ARGUMENT, "qrms_optimizer_set_comm");
  CHECK(p[0] == 1.0f);

  shard::Group group(1);
  RankRef ref{&group, 0};
  const qrms_comm good = thread_comm(ref, 1);
  qrms_comm c = good;
  c.struct_size = 8;
  QRMS_CHECK_FAILS(qrms_optimizer_set_comm(opt, &c), QRMS_ERROR_INVALID_ARGUMENT, "struct_size");
  c = good;
  c.rank = 1;
  QRMS_CHECK_FAILS(qrms_optimizer_set_comm(opt, &c), QRMS_ERROR_INVALID_ARGUMENT, "rank");
  c = good;
  c.world_size = 0;
  QRMS_CHECK_FAILS(qrms_optimizer_set_comm(opt, &c), QRMS_ERROR_INVALID_ARGUMENT, "rank");
  c = good;
  c.all_reduce = nullptr;
  QRMS_CHECK_FAILS(qrms_optimizer_set_comm(opt, &c), QRMS_ERROR_INVALID_ARGUMENT, "all_reduce");
  c = good;
  c.device = QRMS_DEVICE_CUDA;
  QRMS_CHECK_FAILS(qrms_optimizer_set_comm(opt, &c), QRMS_ERROR_DEVICE, "device");
  QRMS_CHECK_FAILS(qrms_optimizer_step(opt, nullptr), QRMS_ERROR_INVALID_ARGUMENT, "qrms_optimizer_set_comm");
  CHECK(p[0] == 1.0f);
  // A newer caller's larger struct is taken when its extra bytes are zero.
  struct {
    qrms_comm c;
    uint64_t extra;
  } bigger{good, 0};
  bigger.c.struct_size = sizeof bigger;
  QRMS_REQUIRE_OK(qrms_optimizer_set_comm(opt, &bigger.c));
  QRMS_REQUIRE_OK(qrms_optimizer_set_comm(opt, nullptr));
  QRMS_REQUIRE_OK(qrms_optimizer_set_comm(opt, &good));
  QRMS_REQUIRE_OK(qrms_optimizer_step(opt, nullptr));
  CHECK(p[0] != 1.0f);
  qrms_optimizer_destroy(opt);
}

namespace {

qrms_status_t failing_all_reduce(void *, float *, int64_t, qrms_reduce_op_t, qrms_stream_t) {
  return QRMS_ERROR_DEVICE;
}

// Saves of the given shards of one 8-bit block-wise tensor of 2048 elements
// after two steps, each as rank r of world w.
std::vector<uint8_t> shard_blob(int64_t offset, int64_t numel, int rank, int world) {
  qrms_config cfg = qtest::config();
  cfg.min_8bit_size = 1000;
  qrms_optimizer_t opt = nullptr;
  qrms_optimizer_create(&opt, QRMS_RMSPROP_8BIT, &cfg, QRMS_DEVICE_CPU, 0);
  std::vector<float> p(static_cast<size_t>(numel) + 1, 1.0f), g(static_cast<size_t>(numel) + 1, 0.25f);
  qrms_comm c{};
  c.struct_size = sizeof c;
  c.rank = rank;
  c.world_size = world;
  c.device = QRMS_DEVICE_CPU;
  c.all_reduce = failing_all_reduce;  // never called: nothing here needs a collective
  qrms_optimizer_set_comm(opt, &c);
  qrms_optimizer_add_param_shard(opt, p.data(), g.data(), QRMS_FLOAT32, numel, 2048, offset, nullptr);
  qrms_optimizer_step(opt, nullptr);
  qrms_optimizer_step(opt, nullptr);
  size_t size = 0;
  qrms_optimizer_save(opt, nullptr, 0, &size);
  std::vector<uint8_t> blob(size);
  qrms_optimizer_save(opt, blob.data(), size, &size);
  qrms_optimizer_destroy(opt);
  return blob;
}

qrms_status_t merge(const std::vector<std::vector<uint8_t>> &blobs, std::vector<uint8_t> &out) {
  std::vector<const void *> ptrs;
  std::vector<size_t> sizes;
  for (const auto &b : blobs) {
    ptrs.push_back(b.data());
    sizes.push_back(b.size());
  }
  size_t size = 0;
  const qrms_status_t st = qrms_state_merge(ptrs.data(), sizes.data(), static_cast<int32_t>(blobs.size()), nullptr, 0, &size);
  if (st != QRMS_SUCCESS) return st;
  out.assign(size, 0xA5);
  return qrms_state_merge(ptrs.data(), sizes.data(), static_cast<int32_t>(blobs.size()), out.data(), size, &size);
}

}  // namespace

TEST_CASE("merge refuses missing, doubled and mismatched ranks", "[shard][state]") {
  const std::vector<uint8_t> r0 = shard_blob(0, 1024, 0, 3), r1 = shard_blob(1024, 0, 1, 3),
                             r2 = shard_blob(1024, 1024, 2, 3);
  std::vector<uint8_t> out;
  QRMS_REQUIRE_OK(merge({r2, r0, r1}, out));  // any order
  std::vector<uint8_t> again;
  QRMS_REQUIRE_OK(merge({r0, r1, r2}, again));
  CHECK(out == again);

  QRMS_CHECK_FAILS(merge({r0, r2}, out), QRMS_ERROR_BAD_STATE, "rank 1 is missing");
  QRMS_CHECK_FAILS(merge({r0, r1}, out), QRMS_ERROR_BAD_STATE, "missing");
  QRMS_CHECK_FAILS(merge({r0, r1, r1}, out), QRMS_ERROR_BAD_STATE, "rank 1 appears twice");
  // Shards that leave a gap or overlap.
  QRMS_CHECK_FAILS(merge({r0, r1, shard_blob(1280, 768, 2, 3)}, out), QRMS_ERROR_BAD_STATE, "gap");
  QRMS_CHECK_FAILS(merge({r0, r1, shard_blob(768, 1280, 2, 3)}, out), QRMS_ERROR_BAD_STATE, "overlap");
  QRMS_CHECK_FAILS(merge({r0, r1, shard_blob(1024, 768, 2, 3)}, out), QRMS_ERROR_BAD_STATE, "gap");
  // Another world size, a corrupt blob.
  QRMS_CHECK_FAILS(merge({r0, r1, shard_blob(1024, 1024, 2, 4)}, out), QRMS_ERROR_BAD_STATE, "world size");
  std::vector<uint8_t> bad = r1;
  bad[bad.size() / 2] ^= 1;
  QRMS_CHECK_FAILS(merge({r0, bad, r2}, out), QRMS_ERROR_BAD_STATE, "blob 1");
  // A too small buffer is refused and nothing is written.
  std::vector<const void *> ptrs = {r0.data(), r1.data(), r2.data()};
  std::vector<size_t> sizes = {r0.size(), r1.size(), r2.size()};
  std::vector<uint8_t> small(again.size() - 1, 0xA5);
  size_t size = 0;
  QRMS_CHECK_FAILS(qrms_state_merge(ptrs.data(), sizes.data(), 3, small.data(), small.size(), &size),
                   QRMS_ERROR_INVALID_ARGUMENT, "capacity");
  CHECK(std::all_of(small.begin(), small.end(), [](uint8_t b) { return b == 0xA5; }));
  QRMS_CHECK_FAILS(qrms_state_merge(ptrs.data(), sizes.data(), 0, nullptr, 0, &size), QRMS_ERROR_INVALID_ARGUMENT,
                   "count");

  // The merged blob loads whole; a rank's own blob loads only into its own shard.
  qrms_config cfg = qtest::config();
  cfg.min_8bit_size = 1000;
  qrms_optimizer_t whole = nullptr, other = nullptr;
  std::vector<float> p(2048, 1.0f), g(2048, 0.25f);
  QRMS_REQUIRE_OK(qrms_optimizer_create(&whole, QRMS_RMSPROP_8BIT, &cfg, QRMS_DEVICE_CPU, 0));
  QRMS_REQUIRE_OK(qrms_optimizer_add_param(whole, p.data(), g.data(), QRMS_FLOAT32, 2048, nullptr));
  QRMS_REQUIRE_OK(qrms_optimizer_load(whole, again.data(), again.size()));
  int64_t step = 0;
  QRMS_REQUIRE_OK(qrms_optimizer_get_step(whole, 0, &step));
  CHECK(step == 2);
  QRMS_CHECK_FAILS(qrms_optimizer_load(whole, r2.data(), r2.size()), QRMS_ERROR_BAD_STATE, "qrms_state_merge");
  QRMS_REQUIRE_OK(qrms_optimizer_create(&other, QRMS_RMSPROP_8BIT, &cfg, QRMS_DEVICE_CPU, 0));
  QRMS_REQUIRE_OK(qrms_optimizer_add_param_shard(other, p.data(), g.data(), QRMS_FLOAT32, 512, 2048, 512, nullptr));
  QRMS_REQUIRE_OK(qrms_optimizer_load(other, r0.data(), r0.size()));  // [512, 1024) lies in rank 0's [0, 1024)
  QRMS_CHECK_FAILS(qrms_optimizer_load(other, r2.data(), r2.size()), QRMS_ERROR_BAD_STATE, "[1024, 2048)");
  std::vector<float> mine(512), full(2048);
  QRMS_REQUIRE_OK(qrms_optimizer_read_state(other, 0, QRMS_STATE_SQUARE_AVG, mine.data()));
  QRMS_REQUIRE_OK(qrms_optimizer_read_state(whole, 0, QRMS_STATE_SQUARE_AVG, full.data()));
  CHECK(std::memcmp(mine.data(), full.data() + 512, 512 * sizeof(float)) == 0);
  qrms_optimizer_destroy(other);
  qrms_optimizer_destroy(whole);
}

TEST_CASE("a failing collective is reported and the step writes nothing", "[shard]") {
  qrms_config cfg = qtest::config();
  cfg.max_unorm = 0.5f;
  qrms_optimizer_t opt = nullptr;
  QRMS_REQUIRE_OK(qrms_optimizer_create(&opt, QRMS_RMSPROP, &cfg, QRMS_DEVICE_CPU, 0));
  std::vector<float> p(300, 1.0f), g(300, 0.5f);
  QRMS_REQUIRE_OK(qrms_optimizer_add_param_shard(opt, p.data(), g.data(), QRMS_FLOAT32, 300, 600, 300, nullptr));
  QRMS_REQUIRE_OK(qrms_optimizer_add_param_shard(opt, nullptr, nullptr, QRMS_FLOAT32, 0, 600, 600, nullptr));
  qrms_comm c{};
  c.struct_size = sizeof c;
  c.rank = 1;
  c.world_size = 2;
  c.device = QRMS_DEVICE_CPU;
  c.all_reduce = failing_all_reduce;
  QRMS_REQUIRE_OK(qrms_optimizer_set_comm(opt, &c));
  QRMS_CHECK_FAILS(qrms_optimizer_step(opt, nullptr), QRMS_ERROR_DEVICE, "all_reduce");
  CHECK(std::all_of(p.begin(), p.end(), [](float v) { return v == 1.0f; }));
  int64_t step = -1;
  QRMS_REQUIRE_OK(qrms_optimizer_get_step(opt, 0, &step));
  CHECK(step == 0);
  // An empty shard reads back as nothing, with or without a buffer.
  QRMS_REQUIRE_OK(qrms_optimizer_read_state(opt, 1, QRMS_STATE_SQUARE_AVG, nullptr));
  qrms_optimizer_destroy(opt);
}

TEST_CASE("NaN maxima survive the cross-rank max", "[shard]") {
  // Per-tensor 8-bit: a NaN state maximum on one rank is NaN on every rank
  // (a plain max of NaN is unspecified in MPI and NCCL).
  shard::Case c{"NaN max", QRMS_RMSPROP_8BIT, shard::base_config(), {{QRMS_FLOAT32, 2000}}, true};
  c.cfg.block_wise = 0;
  c.cfg.min_8bit_size = 100;
  shard::Group group(2);
  std::vector<float> state_max(2, 0.0f);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      RankRef ref{&group, r};
      const qrms_comm comm = thread_comm(ref, 2);
      shard::Model m;
      errors[static_cast<size_t>(r)] = shard::make(m, c, r, 2, &comm);
      if (!errors[static_cast<size_t>(r)].empty()) return;
      for (int64_t i = 0; i < m.len[0]; ++i) m.g[0].set(i, 0.5f);
      if (r == 1) m.g[0].set(5, std::numeric_limits<float>::quiet_NaN());
      if (qrms_optimizer_step(m.opt, nullptr) != QRMS_SUCCESS) errors[static_cast<size_t>(r)] = shard::fail("step");
      std::vector<float> s(static_cast<size_t>(m.len[0]));
      qrms_optimizer_read_state(m.opt, 0, QRMS_STATE_SQUARE_AVG, s.data());
      state_max[static_cast<size_t>(r)] = s.empty() ? 0.0f : s[0];
    });
  for (auto &t : threads) t.join();
  CHECK(errors[0].empty());
  CHECK(errors[1].empty());
  CHECK(std::isnan(state_max[0]));  // rank 0's elements are finite, its scale is NaN as one process's would be
  CHECK(std::isnan(state_max[1]));
}
