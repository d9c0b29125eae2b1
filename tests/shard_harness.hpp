// One rank of a sharded run against one process holding whole tensors,
// through the C ABI. Used by tests/test_shard.cpp (ranks as threads, a fake
// communicator) and tests/mpi/mpi_shard.cpp (ranks as MPI processes), so
// both check the same things. Free of Catch2: every check returns a message
// ("" when it holds), because Catch2 2.x must not be called from threads.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "qrmsprop/qrmsprop.h"

namespace shard {

struct Tensor {
  qrms_dtype_t dtype;
  int64_t n;
};

struct Case {
  std::string name;
  qrms_variant_t variant;
  qrms_config cfg;
  std::vector<Tensor> tensors;
  bool exact;            // same bits as one process; else within float tolerance
  int inject_inf = -1;   // step at which one gradient element is inf (skip_nonfinite)
};

inline qrms_config base_config() {
  qrms_config c;
  qrms_config_init(&c);
  c.lr = 2e-3f;
  return c;
}

inline std::vector<Case> cases() {
  std::vector<Case> out;
  {
    Case c{"32-bit, momentum, weight decay", QRMS_RMSPROP_32BIT, base_config(), {}, true};
    c.cfg.momentum = 0.9f;
    c.cfg.weight_decay = 0.01f;
    c.tensors = {{QRMS_FLOAT32, 5000}, {QRMS_BFLOAT16, 3001}, {QRMS_FLOAT32, 37}};
    out.push_back(c);
  }
  {
    Case c{"8-bit block-wise, momentum", QRMS_RMSPROP_8BIT, base_config(), {}, true};
    c.cfg.momentum = 0.5f;
    c.tensors = {{QRMS_FLOAT32, 10000}, {QRMS_BFLOAT16, 4500}, {QRMS_FLOAT32, 700}};  // the last stays 32-bit
    out.push_back(c);
  }
  {
    Case c{"4-bit, momentum, weight decay, odd sizes", QRMS_RMSPROP_4BIT, base_config(), {}, true};
    c.cfg.momentum = 0.9f;
    c.cfg.weight_decay = 0.01f;
    c.tensors = {{QRMS_FLOAT32, 10001}, {QRMS_BFLOAT16, 4501}, {QRMS_FLOAT32, 700}};  // the last stays 32-bit
    out.push_back(c);
  }
  {
    Case c{"8-bit per-tensor, momentum", QRMS_RMSPROP_8BIT, base_config(), {}, true};
    c.cfg.block_wise = 0;
    c.cfg.momentum = 0.9f;
    c.cfg.min_8bit_size = 1000;
    c.tensors = {{QRMS_FLOAT32, 6000}, {QRMS_BFLOAT16, 2000}};
    out.push_back(c);
  }
  {
    Case c{"skip_nonfinite, 8-bit block-wise", QRMS_RMSPROP_8BIT, base_config(), {}, true};
    c.cfg.skip_nonfinite = 1;
    c.inject_inf = 2;
    c.tensors = {{QRMS_FLOAT32, 9000}, {QRMS_BFLOAT16, 5000}};
    out.push_back(c);
  }
  {
    Case c{"percentile clipping and max_unorm, 8-bit block-wise", QRMS_RMSPROP_8BIT, base_config(), {}, false};
    c.cfg.percentile_clipping = 50;
    c.cfg.max_unorm = 0.5f;
    c.cfg.momentum = 0.9f;
    c.tensors = {{QRMS_FLOAT32, 9000}, {QRMS_BFLOAT16, 4100}, {QRMS_FLOAT32, 300}};
    out.push_back(c);
  }
  {
    Case c{"percentile clipping, max_unorm, 32-bit and per-tensor 8-bit", QRMS_RMSPROP, base_config(), {}, false};
    c.cfg.optim_bits = 8;
    c.cfg.block_wise = 0;
    c.cfg.percentile_clipping = 20;
    c.cfg.max_unorm = 1.0f;
    c.cfg.min_8bit_size = 2000;
    c.tensors = {{QRMS_FLOAT32, 6000}, {QRMS_FLOAT32, 1000}};
    out.push_back(c);
  }
  return out;
}

// Where a shard of a tensor of n elements may start: a multiple of the
// quantization block of block-wise state (256 for 8-bit, 128 for 4-bit).
inline int64_t shard_align(const Case &c, int64_t n) {
  const bool bits8 = c.variant == QRMS_RMSPROP_8BIT || (c.variant == QRMS_RMSPROP && c.cfg.optim_bits == 8);
  const bool bits4 = c.variant == QRMS_RMSPROP_4BIT || (c.variant == QRMS_RMSPROP && c.cfg.optim_bits == 4);
  if (n < c.cfg.min_8bit_size) return 1;
  return bits8 && c.cfg.block_wise ? 256 : bits4 ? 128 : 1;
}

// This rank's part of n elements in a world of `world`: uneven on purpose
// (rank 0 a third of two ranks' elements; with three ranks, rank 1 empty),
// cut at multiples of the block where the state is block-wise.
inline void split(const Case &c, int64_t n, int rank, int world, int64_t &offset, int64_t &len) {
  std::vector<int64_t> cuts = {0};
  const int64_t align = shard_align(c, n);
  if (world == 2) cuts.push_back(n / 3 / align * align);
  if (world == 3) {
    cuts.push_back(n / 2 / align * align);
    cuts.push_back(n / 2 / align * align);
  }
  for (int r = 4; r <= world; ++r) cuts.push_back(n * (r - 1) / world / align * align);
  cuts.push_back(n);
  offset = cuts[static_cast<size_t>(rank)];
  len = cuts[static_cast<size_t>(rank) + 1] - offset;
}

// Deterministic values from (tensor, element, step): every rank makes its
// slice of the same global tensors without talking to the others.
inline float hash_unit(uint64_t x) {  // in [-1, 1)
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<float>(static_cast<double>(x >> 40) / double(1ull << 23) - 1.0);
}
inline float init_value(size_t k, int64_t i) { return hash_unit((k + 1) * 0x9e3779b97f4a7c15ull + uint64_t(i)); }
inline float grad_value(size_t k, int64_t i, int step) {
  const float spike = step % 3 == 2 ? 8.0f : 1.0f;  // norms that vary, so clipping acts
  return spike * hash_unit((k + 11) * 0x9e3779b97f4a7c15ull + uint64_t(i) * 131 + uint64_t(step) * 7919);
}

inline uint16_t to_bf16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}
inline float from_bf16(uint16_t h) {
  const uint32_t b = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// n elements of a dtype (float32 or bfloat16).
struct Buf {
  qrms_dtype_t dtype = QRMS_FLOAT32;
  std::vector<float> f;
  std::vector<uint16_t> h;
  Buf(qrms_dtype_t d, int64_t n) : dtype(d) {
    if (d == QRMS_FLOAT32) f.assign(static_cast<size_t>(n), 0.0f);
    else h.assign(static_cast<size_t>(n), 0);
  }
  void set(int64_t i, float v) {
    if (dtype == QRMS_FLOAT32) f[static_cast<size_t>(i)] = v;
    else h[static_cast<size_t>(i)] = to_bf16(v);
  }
  float get(int64_t i) const {
    return dtype == QRMS_FLOAT32 ? f[static_cast<size_t>(i)] : from_bf16(h[static_cast<size_t>(i)]);
  }
  void *data() {  // NULL when empty (an empty shard points at nothing)
    if (dtype == QRMS_FLOAT32) return f.empty() ? nullptr : f.data();
    return h.empty() ? nullptr : h.data();
  }
};

// Where a rank's optimizer and its parameter and gradient buffers live: on
// the CPU, the host buffers themselves; on a device, copies that `upload`
// makes (returning the device pointer, which the placement owns and frees) and
// that `to_device` / `to_host` refresh around each step.
struct Placement {
  qrms_device_t device = QRMS_DEVICE_CPU;
  std::function<void *(const void *host, size_t bytes)> upload;
  std::function<bool(void *dev, const void *host, size_t bytes)> to_device;
  std::function<bool(void *host, const void *dev, size_t bytes)> to_host;
};

inline const Placement &cpu() {
  static const Placement p;
  return p;
}

// An optimizer with this rank's slices (or, with world 0, whole tensors).
struct Model {
  qrms_optimizer_t opt = nullptr;
  const Placement *where = &cpu();
  std::vector<Buf> p, g;
  std::vector<void *> dp, dg;  // what the optimizer holds (= p[k].data(), g[k].data() on the CPU)
  std::vector<int64_t> offset, len;
  Model() = default;
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;
  ~Model() { qrms_optimizer_destroy(opt); }
};

inline size_t bytes_of(const Buf &b) { return b.dtype == QRMS_FLOAT32 ? b.f.size() * 4 : b.h.size() * 2; }

inline std::string fail(const std::string &what) { return what + ": " + qrms_last_error(); }

// `world` 0: whole tensors. Params start from init_value, or from `from`
// (a whole model) when given.
inline std::string make(Model &m, const Case &c, int rank, int world, const qrms_comm *comm,
                        const Model *from = nullptr, const Placement &where = cpu()) {
  m.where = &where;
  if (qrms_optimizer_create(&m.opt, c.variant, &c.cfg, where.device, 0) != QRMS_SUCCESS) return fail("create");
  if (comm && qrms_optimizer_set_comm(m.opt, comm) != QRMS_SUCCESS) return fail("set_comm");
  for (size_t k = 0; k < c.tensors.size(); ++k) {
    const Tensor &t = c.tensors[k];
    int64_t off = 0, len = t.n;
    if (world > 0) split(c, t.n, rank, world, off, len);
    m.p.emplace_back(t.dtype, len);
    m.g.emplace_back(t.dtype, len);
    m.offset.push_back(off);
    m.len.push_back(len);
    for (int64_t i = 0; i < len; ++i) m.p[k].set(i, from ? from->p[k].get(off + i) : init_value(k, off + i));
    m.dp.push_back(where.upload ? where.upload(m.p[k].data(), bytes_of(m.p[k])) : m.p[k].data());
    m.dg.push_back(where.upload ? where.upload(m.g[k].data(), bytes_of(m.g[k])) : m.g[k].data());
    if (len > 0 && (!m.dp[k] || !m.dg[k])) return "could not copy tensor " + std::to_string(k) + " to the device";
    const qrms_status_t st =
        world > 0 ? qrms_optimizer_add_param_shard(m.opt, m.dp[k], m.dg[k], t.dtype, len, t.n, off, nullptr)
                  : qrms_optimizer_add_param(m.opt, m.dp[k], m.dg[k], t.dtype, len, nullptr);
    if (st != QRMS_SUCCESS) return fail("add param " + std::to_string(k));
  }
  return "";
}

// The gradients of step t into m.g (host memory).
inline void fill_grads(Model &m, const Case &c, int t) {
  for (size_t k = 0; k < m.p.size(); ++k)
    for (int64_t i = 0; i < m.len[k]; ++i) {
      const int64_t gi = m.offset[k] + i;
      const bool inf = t == c.inject_inf && k == 0 && gi == c.tensors[0].n - 3;  // on the last rank's part
      m.g[k].set(i, inf ? INFINITY : grad_value(k, gi, t));
    }
}

inline std::string step(Model &m, const Case &c, int t) {
  fill_grads(m, c, t);
  const Placement &w = *m.where;
  for (size_t k = 0; k < m.g.size() && w.to_device; ++k)
    if (m.len[k] > 0 && !w.to_device(m.dg[k], m.g[k].data(), bytes_of(m.g[k]))) return "gradient copy failed";
  if (qrms_optimizer_step(m.opt, nullptr) != QRMS_SUCCESS) return fail("step " + std::to_string(t));
  for (size_t k = 0; k < m.p.size() && w.to_host; ++k)
    if (m.len[k] > 0 && !w.to_host(m.p[k].data(), m.dp[k], bytes_of(m.p[k]))) return "parameter copy failed";
  return "";
}

// This rank's slices of `shard` against the same elements of `whole`.
inline std::string compare(const Model &shard, const Model &whole, bool exact, const std::string &when) {
  for (size_t k = 0; k < shard.p.size(); ++k)
    for (int64_t i = 0; i < shard.len[k]; ++i) {
      const float a = shard.p[k].get(i), b = whole.p[k].get(shard.offset[k] + i);
      const bool same = exact ? std::memcmp(&a, &b, 4) == 0 : std::fabs(a - b) <= 1e-5f + 1e-3f * std::fabs(b);
      if (!same)
        return when + ": tensor " + std::to_string(k) + " element " + std::to_string(shard.offset[k] + i) +
               ": sharded " + std::to_string(a) + ", one process " + std::to_string(b);
    }
  int32_t fa = 0, fb = 0;
  qrms_optimizer_read_found_inf(shard.opt, &fa);
  qrms_optimizer_read_found_inf(whole.opt, &fb);
  if (fa != fb) return when + ": found-inf flag " + std::to_string(fa) + ", one process " + std::to_string(fb);
  return "";
}

inline std::vector<uint8_t> save(const Model &m) {
  size_t size = 0;
  qrms_optimizer_save(m.opt, nullptr, 0, &size);
  std::vector<uint8_t> blob(size);
  if (qrms_optimizer_save(m.opt, blob.data(), blob.size(), &size) != QRMS_SUCCESS) blob.clear();
  return blob;
}

// Every rank's blob, on every rank.
using Gather = std::function<std::vector<std::vector<uint8_t>>(const std::vector<uint8_t> &)>;

// Ranks as threads of one process: a barrier for `world` threads that gives
// up after a timeout, an all-reduce over host floats that also detects ranks
// calling different collectives, and a gather of the ranks' blobs.
class Group {
 public:
  explicit Group(int world) : world_(world), bufs_(static_cast<size_t>(world)), blobs_(static_cast<size_t>(world)) {}

  // Returns false when the others did not arrive in time (or a rank failed).
  bool barrier() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (broken_) return false;
    const uint64_t gen = generation_;
    if (++arrived_ == world_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return true;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(10), [&] { return generation_ != gen || broken_; })) broken_ = true;
    if (broken_) cv_.notify_all();
    return !broken_;
  }

  qrms_status_t all_reduce(int rank, float *data, int64_t count, qrms_reduce_op_t op) {
    bufs_[static_cast<size_t>(rank)] = {data, count, op};
    if (!barrier()) return QRMS_ERROR_DEVICE;
    qrms_status_t st = QRMS_SUCCESS;
    if (rank == 0) {
      result_.assign(static_cast<size_t>(count), 0.0f);
      for (int r = 0; r < world_; ++r) {
        const Call &c = bufs_[static_cast<size_t>(r)];
        if (c.count != count || c.op != op) mismatch_ = true;
      }
      if (!mismatch_)
        for (int r = 0; r < world_; ++r)
          for (int64_t i = 0; i < count; ++i) {
            float &acc = result_[static_cast<size_t>(i)];
            const float v = bufs_[static_cast<size_t>(r)].data[i];
            acc = r == 0 ? v : (op == QRMS_REDUCE_SUM ? acc + v : std::max(acc, v));
          }
    }
    if (!barrier()) return QRMS_ERROR_DEVICE;
    if (mismatch_) st = QRMS_ERROR_INTERNAL;
    else std::memcpy(data, result_.data(), static_cast<size_t>(count) * sizeof(float));
    if (!barrier()) return QRMS_ERROR_DEVICE;
    return st;
  }

  std::vector<std::vector<uint8_t>> gather(int rank, const std::vector<uint8_t> &blob) {
    blobs_[static_cast<size_t>(rank)] = blob;
    barrier();
    std::vector<std::vector<uint8_t>> all = blobs_;
    barrier();
    return all;
  }

  bool mismatched() const { return mismatch_; }

 private:
  struct Call {
    const float *data = nullptr;
    int64_t count = -1;
    qrms_reduce_op_t op = -1;
  };
  int world_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool broken_ = false, mismatch_ = false;
  std::vector<Call> bufs_;
  std::vector<float> result_;
  std::vector<std::vector<uint8_t>> blobs_;
};

// A rank of a Group as a communicator's user pointer: thread_comm is rank
// `rank` of `world` on the CPU, reducing through the group.
struct RankRef {
  Group *group;
  int rank;
};

inline qrms_status_t thread_all_reduce(void *user, float *data, int64_t count, qrms_reduce_op_t op, qrms_stream_t) {
  RankRef *r = static_cast<RankRef *>(user);
  return r->group->all_reduce(r->rank, data, count, op);
}

inline qrms_comm thread_comm(RankRef &ref, int world) {
  qrms_comm c{};
  c.struct_size = sizeof c;
  c.rank = ref.rank;
  c.world_size = world;
  c.device = QRMS_DEVICE_CPU;
  c.user = &ref;
  c.all_reduce = thread_all_reduce;
  return c;
}

constexpr int kSteps = 4, kResumeSteps = 3;

// One case on this rank of `comm`: kSteps sharded steps against whole
// tensors, then save, gather, merge, and (where `resume` is given: this
// rank's place in a smaller world) kResumeSteps more from the merged blob.
// This rank's optimizers live `where`; the one-process reference on the CPU.
inline std::string run_case(const Case &c, const qrms_comm &comm, const Gather &gather, const qrms_comm *resume,
                            const Placement &where = cpu()) {
  const std::string at = c.name + " (rank " + std::to_string(comm.rank) + " of " + std::to_string(comm.world_size) + ")";
  Model whole, sharded;
  std::string err = make(whole, c, 0, 0, nullptr);
  if (err.empty()) err = make(sharded, c, comm.rank, comm.world_size, &comm, nullptr, where);
  for (int t = 0; t < kSteps && err.empty(); ++t) {
    err = step(whole, c, t);
    if (err.empty()) err = step(sharded, c, t);
    if (err.empty()) err = compare(sharded, whole, c.exact, "step " + std::to_string(t));
  }
  if (!err.empty()) return at + ": " + err;

  const std::vector<std::vector<uint8_t>> blobs = gather(save(sharded));
  std::vector<const void *> ptrs;
  std::vector<size_t> sizes;
  for (const auto &b : blobs) {
    ptrs.push_back(b.data());
    sizes.push_back(b.size());
  }
  size_t size = 0;
  if (qrms_state_merge(ptrs.data(), sizes.data(), static_cast<int32_t>(ptrs.size()), nullptr, 0, &size) != QRMS_SUCCESS)
    return at + ": " + fail("merge (size)");
  std::vector<uint8_t> merged(size);
  if (qrms_state_merge(ptrs.data(), sizes.data(), static_cast<int32_t>(ptrs.size()), merged.data(), size, &size) !=
      QRMS_SUCCESS)
    return at + ": " + fail("merge");
  // Without cross-rank sums the merged state is the one-process state, byte for byte.
  if (c.exact && merged != save(whole)) return at + ": the merged blob differs from the one-process blob";
  if (!resume) return "";

  Model resumed;
  err = make(resumed, c, resume->rank, resume->world_size, resume, &whole, where);
  if (err.empty() && qrms_optimizer_load(resumed.opt, merged.data(), merged.size()) != QRMS_SUCCESS)
    err = fail("load the merged blob");
  for (int t = kSteps; t < kSteps + kResumeSteps && err.empty(); ++t) {
    err = step(whole, c, t);
    if (err.empty()) err = step(resumed, c, t);
    if (err.empty()) err = compare(resumed, whole, c.exact, "resumed at " + std::to_string(resume->world_size) +
                                                                 " ranks, step " + std::to_string(t));
  }
  return err.empty() ? "" : at + ": " + err;
}

}  // namespace shard
