// save / load of the C++ classes: a round trip continues bit for bit;
// corrupt, truncated and mismatched blobs are refused with nothing changed.
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "check.hpp"
#include "qrmsprop/qrmsprop.hpp"

using qref::Dt;

namespace {

struct TensorSpec {
  Dt dt;
  int64_t n;
  std::optional<qrms::Config> own;  // per-parameter config
};

struct Spec {
  std::string name;
  qrms::Config cfg;
  std::vector<TensorSpec> tensors;
};

// An optimizer with its own params and grads.
struct Model {
  std::unique_ptr<qrms::Optimizer1State> opt;
  std::vector<qref::Tensor> p, g;
};

Model build(const Spec &s, uint32_t seed = 1) {
  Model m;
  m.opt = std::make_unique<qrms::Optimizer1State>(s.cfg);
  std::mt19937 rng(seed);
  m.p.reserve(s.tensors.size());
  m.g.reserve(s.tensors.size());
  for (const TensorSpec &t : s.tensors) {
    m.p.emplace_back(t.dt, t.n);
    m.g.emplace_back(t.dt, t.n);
    qtest::fill_normal(m.p.back(), rng, 1.0f);
  }
  for (size_t i = 0; i < s.tensors.size(); ++i) {
    const int64_t idx = m.opt->add_param(m.p[i].data(), m.g[i].data(), static_cast<qrms::Dtype>(s.tensors[i].dt),
                                         s.tensors[i].n);
    if (s.tensors[i].own) m.opt->set_param_config(idx, *s.tensors[i].own);
  }
  return m;
}

// Step k's gradients depend only on k, so two models can be fed the same.
void train(Model &m, int k0, int k1) {
  for (int k = k0; k < k1; ++k) {
    for (size_t i = 0; i < m.g.size(); ++i) {
      std::mt19937 rng(static_cast<uint32_t>(1000 * k + static_cast<int>(i)));
      qtest::fill_grad(m.g[i], rng, qtest::grad_scale_for(k));
    }
    m.opt->step();
  }
}

bool same_params(const Model &a, const Model &b) {
  for (size_t i = 0; i < a.p.size(); ++i)
    if (!a.p[i].same_bits(b.p[i])) return false;
  return true;
}

void copy_params(const Model &from, Model &to) {
  for (size_t i = 0; i < from.p.size(); ++i)
    for (int64_t j = 0; j < from.p[i].size(); ++j) to.p[i].set(j, from.p[i].get(j));
}

std::vector<Spec> specs() {
  std::vector<Spec> out;
  {
    Spec s{"32-bit", qrms::Config{}, {{Dt::F32, 1000, {}}, {Dt::F32, 37, {}}}};
    out.push_back(s);
  }
  {
    Spec s{"8-bit block-wise, momentum, clipping, max_unorm, mixed dtypes", qrms::Config{}, {}};
    s.cfg.optim_bits = 8;
    s.cfg.momentum = 0.9f;
    s.cfg.weight_decay = 0.01f;
    s.cfg.args.percentile_clipping = 5;
    s.cfg.args.max_unorm = 0.5f;
    s.cfg.args.min_8bit_size = 500;
    s.tensors = {{Dt::F32, 5000, {}}, {Dt::BF16, 1000, {}}, {Dt::F16, 300, {}}};  // the last stays 32-bit
    out.push_back(s);
  }
  {
    Spec s{"8-bit per tensor, skip_zeros, momentum", qrms::Config{}, {}};
    s.cfg.optim_bits = 8;
    s.cfg.momentum = 0.5f;
    s.cfg.args.skip_zeros = true;
    s.cfg.args.block_wise = false;
    s.cfg.args.min_8bit_size = 0;
    s.tensors = {{Dt::F32, 3000, {}}, {Dt::F16, 777, {}}};
    out.push_back(s);
  }
  {
    Spec s{"4-bit, momentum, clipping, odd sizes, mixed dtypes", qrms::Config{}, {}};
    s.cfg.optim_bits = 4;
    s.cfg.momentum = 0.9f;
    s.cfg.args.percentile_clipping = 5;
    s.cfg.args.min_8bit_size = 100;
    s.tensors = {{Dt::F32, 5000, {}}, {Dt::BF16, 777, {}}, {Dt::F16, 129, {}}, {Dt::F32, 50, {}}};  // the last stays 32-bit
    out.push_back(s);
  }
  {
    Spec s{"per-parameter configs", qrms::Config{}, {}};
    s.cfg.optim_bits = 8;
    s.cfg.args.min_8bit_size = 0;
    qrms::Config keep32 = s.cfg;
    keep32.optim_bits = 32;
    keep32.lr = 1e-3f;
    qrms::Config tensor8 = s.cfg;
    tensor8.args.block_wise = false;
    tensor8.momentum = 0.9f;
    tensor8.args.percentile_clipping = 20;
    qrms::Config four = s.cfg;
    four.optim_bits = 4;
    four.momentum = 0.5f;
    s.tensors = {{Dt::F32, 2000, {}}, {Dt::BF16, 900, keep32}, {Dt::F32, 1500, tensor8}, {Dt::BF16, 1001, four}};
    out.push_back(s);
  }
  {
    Spec s{"unsigned square-average map, block-wise and per tensor, momentum; one signed", qrms::Config{}, {}};
    s.cfg.optim_bits = 8;
    s.cfg.momentum = 0.9f;
    s.cfg.args.min_8bit_size = 0;
    s.cfg.args.state_map = qrms::StateMap::Unsigned;
    qrms::Config tensor8 = s.cfg;
    tensor8.args.block_wise = false;
    qrms::Config signed_map = s.cfg;
    signed_map.args.state_map = qrms::StateMap::Signed;
    s.tensors = {{Dt::F32, 2000, {}}, {Dt::BF16, 900, tensor8}, {Dt::F16, 700, signed_map}};
    out.push_back(s);
  }
  return out;
}

// A small optimizer (a blob of a few KiB) for the byte-by-byte tests.
Spec small_spec() {
  Spec s{"small", qrms::Config{}, {}};
  s.cfg.optim_bits = 8;
  s.cfg.momentum = 0.9f;
  s.cfg.args.min_8bit_size = 100;
  s.cfg.args.percentile_clipping = 10;
  s.tensors = {{Dt::F32, 300, {}}, {Dt::F16, 40, {}}};
  return s;
}

// The victim must be exactly as before: same blob, and it keeps training
// exactly like an untouched twin.
void check_unchanged(Model &victim, Model &twin, const std::vector<uint8_t> &before, int k) {
  CHECK_SAME(victim.opt->save(), before);
  CHECK(same_params(victim, twin));
  train(victim, k, k + 2);
  train(twin, k, k + 2);
  CHECK(same_params(victim, twin));
  CHECK_SAME(victim.opt->save(), twin.opt->save());
}

// Where the "refused and changes nothing" tests start: the blob of a model
// of spec s after src_steps steps (seed 3), and a victim and its untouched
// twin after `steps` steps (seed 1), with the victim's blob at that point.
struct Victim {
  std::vector<uint8_t> blob;
  Model victim, twin;
  std::vector<uint8_t> before;
};

Victim make_victim(const Spec &s, int src_steps, int steps) {
  Model src = build(s, 3);
  train(src, 0, src_steps);
  Victim v{src.opt->save(), build(s), build(s), {}};
  train(v.victim, 0, steps);
  train(v.twin, 0, steps);
  v.before = v.victim.opt->save();
  return v;
}

}  // namespace

TEST_CASE("save and load round trip continues bit for bit", "[state]") {
  for (const Spec &s : specs()) {
    INFO(s.name);
    Model a = build(s);
    train(a, 0, 3);
    const std::vector<uint8_t> blob = a.opt->save();
    CHECK_SAME(a.opt->save(), blob);  // deterministic
    CHECK(a.opt->save(nullptr, 0) == blob.size());

    Model b = build(s, 77);  // other initial params: overwritten below
    copy_params(a, b);
    b.opt->load(blob.data(), blob.size());
    CHECK_SAME(b.opt->save(), blob);
    for (int64_t i = 0; i < a.opt->param_count(); ++i) {
      CHECK(b.opt->get_step(i) == 3);
      CHECK_SAME(b.opt->read_state(i, QRMS_STATE_SQUARE_AVG), a.opt->read_state(i, QRMS_STATE_SQUARE_AVG));
      CHECK(b.opt->is_8bit(i) == a.opt->is_8bit(i));
      CHECK(b.opt->param_config(i).lr == a.opt->param_config(i).lr);
    }

    train(a, 3, 6);
    train(b, 3, 6);
    CHECK(same_params(a, b));
    CHECK_SAME(b.opt->save(), a.opt->save());
    for (int64_t i = 0; i < a.opt->param_count(); ++i) {
      CHECK(b.opt->get_step(i) == 6);
      CHECK_SAME(b.opt->read_state(i, QRMS_STATE_SQUARE_AVG), a.opt->read_state(i, QRMS_STATE_SQUARE_AVG));
      if (a.opt->param_config(i).momentum > 0.0f)
        CHECK_SAME(b.opt->read_state(i, QRMS_STATE_MOMENTUM), a.opt->read_state(i, QRMS_STATE_MOMENTUM));
    }
  }
}

TEST_CASE("a fresh optimizer's blob loads into a trained one and resets it", "[state]") {
  const Spec s = specs()[1];
  Model fresh = build(s);
  const std::vector<uint8_t> blob = fresh.opt->save();
  Model trained = build(s);
  train(trained, 0, 2);
  trained.opt->load(blob.data(), blob.size());
  CHECK_SAME(trained.opt->save(), blob);
  CHECK(trained.opt->get_step(0) == 0);
  for (float v : trained.opt->read_state(0, QRMS_STATE_SQUARE_AVG)) CHECK(v == 0.0f);
}

TEST_CASE("save into a too small buffer is refused and writes nothing", "[state]") {
  Model m = build(small_spec());
  train(m, 0, 2);
  const size_t size = m.opt->save(nullptr, 0);
  REQUIRE(size > 0);
  std::vector<uint8_t> buf(size + 16, 0xA5);
  CHECK_THROWS_AS(m.opt->save(buf.data(), size - 1), qrms::ValueError);
  CHECK_THROWS_AS(m.opt->save(buf.data(), 0), qrms::ValueError);
  CHECK(std::all_of(buf.begin(), buf.end(), [](uint8_t b) { return b == 0xA5; }));
  CHECK(m.opt->save(buf.data(), buf.size()) == size);
  CHECK_SAME(std::vector<uint8_t>(buf.begin(), buf.begin() + static_cast<long>(size)), m.opt->save());
  CHECK(std::all_of(buf.begin() + static_cast<long>(size), buf.end(), [](uint8_t b) { return b == 0xA5; }));
}

TEST_CASE("every flipped byte is refused and changes nothing", "[state]") {
  Victim v = make_victim(small_spec(), 4, 2);
  const std::vector<uint8_t> &blob = v.blob;
  Model &victim = v.victim;
  REQUIRE(v.before != blob);

  size_t accepted = 0, wrong_type = 0, first_bad = 0;
  for (uint8_t mask : {uint8_t(0x01), uint8_t(0x80), uint8_t(0xFF)}) {
    for (size_t i = 0; i < blob.size(); ++i) {
      std::vector<uint8_t> bad = blob;
      bad[i] = static_cast<uint8_t>(bad[i] ^ mask);
      try {
        victim.opt->load(bad.data(), bad.size());
        if (accepted++ == 0) first_bad = i;
      } catch (const qrms::BadStateError &) {
      } catch (...) {
        if (wrong_type++ == 0) first_bad = i;
      }
    }
  }
  INFO("blob of " << blob.size() << " bytes; first offending offset " << first_bad);
  CHECK(accepted == 0);
  CHECK(wrong_type == 0);
  check_unchanged(victim, v.twin, v.before, 2);
  // The intact blob still loads.
  victim.opt->load(blob.data(), blob.size());
  CHECK_SAME(victim.opt->save(), blob);
}

TEST_CASE("truncated and extended blobs are refused and change nothing", "[state]") {
  Victim v = make_victim(small_spec(), 3, 1);
  const std::vector<uint8_t> &blob = v.blob;
  Model &victim = v.victim;

  size_t accepted = 0, wrong_type = 0;
  for (size_t len = 0; len < blob.size(); ++len) {
    try {
      victim.opt->load(blob.data(), len);
      ++accepted;
    } catch (const qrms::BadStateError &) {
    } catch (...) {
      ++wrong_type;
    }
  }
  CHECK(accepted == 0);
  CHECK(wrong_type == 0);
  std::vector<uint8_t> longer = blob;
  longer.push_back(0);
  CHECK_THROWS_AS(victim.opt->load(longer.data(), longer.size()), qrms::BadStateError);
  CHECK_THROWS_AS(victim.opt->load(nullptr, 0), qrms::Error);
  CHECK_THROWS_AS(victim.opt->load(nullptr, blob.size()), qrms::Error);
  check_unchanged(victim, v.twin, v.before, 1);
}

TEST_CASE("blobs of other optimizers are refused and change nothing", "[state]") {
  Spec base{"base", qrms::Config{}, {}};
  base.cfg.optim_bits = 8;
  base.cfg.args.min_8bit_size = 200;
  base.tensors = {{Dt::F32, 1000, {}}, {Dt::BF16, 300, {}}};
  Model src = build(base);
  train(src, 0, 2);
  const std::vector<uint8_t> blob = src.opt->save();

  std::vector<std::pair<const char *, Spec>> others;
  {
    Spec s = base;
    s.tensors.pop_back();
    others.emplace_back("fewer parameters", s);
  }
  {
    Spec s = base;
    s.tensors.push_back({Dt::F32, 10, {}});
    others.emplace_back("more parameters", s);
  }
  {
    Spec s = base;
    s.tensors[0].n = 1001;
    others.emplace_back("another size", s);
  }
  {
    Spec s = base;
    s.tensors[1].dt = Dt::F16;
    others.emplace_back("another dtype", s);
  }
  {
    Spec s = base;
    s.cfg.optim_bits = 32;
    others.emplace_back("32-bit state", s);
  }
  {
    Spec s = base;
    s.tensors[0].own = base.cfg;
    s.tensors[0].own->optim_bits = 32;
    others.emplace_back("one parameter 32-bit by its own config", s);
  }
  {
    Spec s = base;
    s.cfg.args.block_wise = false;
    others.emplace_back("per-tensor state", s);
  }
  {
    Spec s = base;
    s.cfg.optim_bits = 4;
    others.emplace_back("4-bit state", s);
  }
  {
    Spec s = base;
    s.tensors[1].own = base.cfg;
    s.tensors[1].own->optim_bits = 4;
    others.emplace_back("one parameter 4-bit by its own config", s);
  }
  {
    Spec s = base;
    s.cfg.momentum = 0.9f;
    others.emplace_back("a momentum buffer", s);
  }
  {
    Spec s = base;
    s.cfg.args.percentile_clipping = 50;
    others.emplace_back("clipping history", s);
  }
  for (auto &o : others) {
    INFO(o.first);
    Model victim = build(o.second), twin = build(o.second);
    train(victim, 0, 1);
    train(twin, 0, 1);
    const std::vector<uint8_t> before = victim.opt->save();
    CHECK_THROWS_AS(victim.opt->load(blob.data(), blob.size()), qrms::BadStateError);
    check_unchanged(victim, twin, before, 1);
    // And the other way round.
    const std::vector<uint8_t> theirs = victim.opt->save();
    const std::vector<uint8_t> src_before = src.opt->save();
    CHECK_THROWS_AS(src.opt->load(theirs.data(), theirs.size()), qrms::BadStateError);
    CHECK_SAME(src.opt->save(), src_before);
  }
}

namespace {

// Rewrites the checksum so that only the content checks can refuse the blob.
void reseal(std::vector<uint8_t> &b) {
  const uint64_t h = qref::fnv1a(b.data(), b.size() - 8);
  std::memcpy(b.data() + b.size() - 8, &h, 8);
}

// A blob edited after the save, then resealed (checksum made valid again).
struct Forgery {
  const char *name;
  std::function<void(std::vector<uint8_t> &)> edit;
};

// Every forgery of a blob of `s` (3 steps) is refused with BadStateError by
// a victim (2 steps), which stays exactly as its untouched twin; then
// `after(victim, blob)` for the checks that follow.
void check_forgeries_refused(const Spec &s, const std::vector<Forgery> &forgeries,
                             const std::function<void(Model &, const std::vector<uint8_t> &)> &after) {
  Victim v = make_victim(s, 3, 2);
  for (const Forgery &f : forgeries) {
    INFO("forged: " << f.name);
    std::vector<uint8_t> bad = v.blob;
    f.edit(bad);
    reseal(bad);
    CHECK_THROWS_AS(v.victim.opt->load(bad.data(), bad.size()), qrms::BadStateError);
  }
  check_unchanged(v.victim, v.twin, v.before, 2);
  after(v.victim, v.blob);
}

template <class T>
void poke(std::vector<uint8_t> &b, size_t off, T v) {
  std::memcpy(b.data() + off, &v, sizeof(T));
}

template <class T>
T peek(const std::vector<uint8_t> &b, size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof(T));
  return v;
}

// Offsets of docs/state-format.md (version 3): a 32-byte header, then record 0.
constexpr size_t kRank = 16, kWorld = 20, kCount = 24, kRec = 32;
constexpr size_t kNumel = kRec + 0, kGlobal = kRec + 8, kOffset = kRec + 16, kDtype = kRec + 24, kKind = kRec + 28,
                 kStep = kRec + 36, kLr = kRec + 44, kAlpha = kRec + 48, kMomentum = kRec + 60, kBits = kRec + 64,
                 kPct = kRec + 76, kStateMap = kRec + 92, kBuffers = kRec + 96;

// The same blob in format version 2 (no state_map in the records).
std::vector<uint8_t> to_v2(const std::vector<uint8_t> &v3) {
  std::vector<uint8_t> out(v3.begin(), v3.begin() + kRec);
  poke<uint32_t>(out, 12, 2u);
  const uint64_t count = peek<uint64_t>(v3, kCount);
  size_t at = kRec;
  for (uint64_t r = 0; r < count; ++r) {
    out.insert(out.end(), v3.begin() + static_cast<long>(at), v3.begin() + static_cast<long>(at + 92));
    at += 96;  // the record up to skip_zeros, then state_map
    for (int k = 0; k < 5; ++k) {
      const uint64_t bytes = peek<uint64_t>(v3, at);
      out.insert(out.end(), v3.begin() + static_cast<long>(at), v3.begin() + static_cast<long>(at + 8 + bytes));
      at += 8 + bytes;
    }
  }
  out.resize(out.size() + 8);
  reseal(out);
  return out;
}

// The same blob in format version 1 (no rank/world, no shard fields), as
// version 0.1.0 of the library wrote it.
std::vector<uint8_t> to_v1(const std::vector<uint8_t> &v3) {
  const std::vector<uint8_t> v2 = to_v2(v3);
  std::vector<uint8_t> out(v2.begin(), v2.begin() + 16);
  poke<uint32_t>(out, 12, 1u);
  const uint64_t count = peek<uint64_t>(v2, kCount);
  out.insert(out.end(), v2.begin() + kCount, v2.begin() + kCount + 8);
  size_t at = kRec;
  for (uint64_t r = 0; r < count; ++r) {
    out.insert(out.end(), v2.begin() + static_cast<long>(at), v2.begin() + static_cast<long>(at + 8));  // numel
    at += 24;                                                                   // numel, global numel, offset
    out.insert(out.end(), v2.begin() + static_cast<long>(at), v2.begin() + static_cast<long>(at + 68));
    at += 68;
    for (int k = 0; k < 5; ++k) {
      const uint64_t bytes = peek<uint64_t>(v2, at);
      out.insert(out.end(), v2.begin() + static_cast<long>(at), v2.begin() + static_cast<long>(at + 8 + bytes));
      at += 8 + bytes;
    }
  }
  out.resize(out.size() + 8);
  reseal(out);
  return out;
}

}  // namespace

TEST_CASE("the blob follows docs/state-format.md", "[state]") {
  Model m = build(small_spec());
  train(m, 0, 3);
  const std::vector<uint8_t> blob = m.opt->save();
  CHECK(std::string(reinterpret_cast<const char *>(blob.data()), 8) == "QRMSSTAT");
  CHECK(peek<uint32_t>(blob, 8) == 0x01020304u);
  CHECK(peek<uint32_t>(blob, 12) == 3u);
  CHECK(peek<int32_t>(blob, kStateMap) == QRMS_MAP_SIGNED);
  CHECK(peek<int32_t>(blob, kRank) == 0);
  CHECK(peek<int32_t>(blob, kWorld) == 1);
  CHECK(peek<uint64_t>(blob, kCount) == 2u);
  CHECK(peek<int64_t>(blob, kNumel) == 300);
  CHECK(peek<int64_t>(blob, kGlobal) == 300);
  CHECK(peek<int64_t>(blob, kOffset) == 0);
  CHECK(peek<int32_t>(blob, kDtype) == QRMS_FLOAT32);
  CHECK(peek<int32_t>(blob, kKind) == 1);  // 8-bit block-wise
  CHECK(peek<int64_t>(blob, kStep) == 3);
  CHECK(peek<float>(blob, kMomentum) == 0.9f);
  CHECK(peek<int32_t>(blob, kPct) == 10);
  CHECK(peek<uint64_t>(blob, kBuffers) == 300u);  // the codes of s
  CHECK(peek<uint64_t>(blob, kBuffers + 8 + 300) == 8u);  // two absmax
  CHECK(peek<uint64_t>(blob, blob.size() - 8) == qref::fnv1a(blob.data(), blob.size() - 8));
}

TEST_CASE("blobs with a valid checksum but bad content are refused and change nothing", "[state]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<Forgery> forgeries = {
      {"magic", [](std::vector<uint8_t> &b) { b[0] = 'X'; }},
      {"other byte order", [](std::vector<uint8_t> &b) { poke<uint32_t>(b, 8, 0x04030201u); }},
      {"format version 4", [](std::vector<uint8_t> &b) { poke<uint32_t>(b, 12, 4u); }},
      {"format version 0", [](std::vector<uint8_t> &b) { poke<uint32_t>(b, 12, 0u); }},
      {"rank beyond the world", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kRank, 1); }},
      {"world size 0", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kWorld, 0); }},
      {"negative rank", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kRank, -1); }},
      {"global numel", [](std::vector<uint8_t> &b) { poke<int64_t>(b, kGlobal, 301); }},
      {"shard past the tensor's end", [](std::vector<uint8_t> &b) {
         poke<int64_t>(b, kGlobal, 300);
         poke<int64_t>(b, kOffset, 256);
       }},
      {"block-wise shard off a block boundary", [](std::vector<uint8_t> &b) {
         poke<int64_t>(b, kGlobal, 400);
         poke<int64_t>(b, kOffset, 100);
       }},
      {"negative offset", [](std::vector<uint8_t> &b) { poke<int64_t>(b, kOffset, -256); }},
      {"one parameter more", [](std::vector<uint8_t> &b) { poke<uint64_t>(b, kCount, 3u); }},
      {"one parameter less", [](std::vector<uint8_t> &b) { poke<uint64_t>(b, kCount, 1u); }},
      {"numel", [](std::vector<uint8_t> &b) { poke<int64_t>(b, kNumel, 301); }},
      {"numel and global numel INT64_MAX", [](std::vector<uint8_t> &b) {
         poke<int64_t>(b, kNumel, std::numeric_limits<int64_t>::max());
         poke<int64_t>(b, kGlobal, std::numeric_limits<int64_t>::max());
       }},
      {"dtype", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kDtype, QRMS_BFLOAT16); }},
      {"state kind", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kKind, 0); }},
      {"negative step", [](std::vector<uint8_t> &b) { poke<int64_t>(b, kStep, -1); }},
      {"alpha 0", [](std::vector<uint8_t> &b) { poke<float>(b, kAlpha, 0.0f); }},
      {"lr NaN", [nan](std::vector<uint8_t> &b) { poke<float>(b, kLr, nan); }},
      {"optim_bits 16", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kBits, 16); }},
      {"state_map 2", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kStateMap, 2); }},
      {"state_map -1", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kStateMap, -1); }},
      {"unsigned map for signed 8-bit state", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kStateMap, QRMS_MAP_UNSIGNED); }},
      {"32-bit config for 8-bit state", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kBits, 32); }},
      {"no momentum buffer in the config", [](std::vector<uint8_t> &b) { poke<float>(b, kMomentum, 0.0f); }},
      {"no clipping in the config", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kPct, 100); }},
      {"buffer size", [](std::vector<uint8_t> &b) { poke<uint64_t>(b, kBuffers, 299u); }},
      {"trailing byte", [](std::vector<uint8_t> &b) { b.insert(b.end() - 8, uint8_t(0)); }},
      {"missing last byte of the last record", [](std::vector<uint8_t> &b) { b.erase(b.end() - 9); }},
  };
  check_forgeries_refused(small_spec(), forgeries, [](Model &victim, const std::vector<uint8_t> &blob) {
    // A well-formed blob with another valid config is taken, config included.
    std::vector<uint8_t> good = blob;
    poke<float>(good, kLr, 0.125f);
    reseal(good);
    victim.opt->load(good.data(), good.size());
    CHECK(victim.opt->param_config(0).lr == 0.125f);
    CHECK_SAME(victim.opt->save(), good);
  });
}

TEST_CASE("format version 1 blobs load as unsharded state", "[state]") {
  const Spec s = small_spec();
  Model src = build(s, 3);
  train(src, 0, 3);
  const std::vector<uint8_t> blob = src.opt->save();
  const std::vector<uint8_t> v1 = to_v1(blob);
  REQUIRE(v1.size() == blob.size() - 8 - 2 * (16 + 4));
  Model a = build(s), b = build(s);
  a.opt->load(blob.data(), blob.size());
  b.opt->load(v1.data(), v1.size());
  CHECK_SAME(b.opt->save(), blob);  // saved again in version 3, the same state
  copy_params(src, a);
  copy_params(src, b);
  train(a, 3, 5);
  train(b, 3, 5);
  CHECK(same_params(a, b));
  // Version 1 is checked as strictly: a flipped byte is refused.
  std::vector<uint8_t> bad = v1;
  bad[40] ^= 1;
  CHECK_THROWS_AS(b.opt->load(bad.data(), bad.size()), qrms::BadStateError);
}

TEST_CASE("format version 2 blobs load as the signed map; a bad state_map is named", "[state]") {
  const Spec s = small_spec();
  Model src = build(s, 3);
  train(src, 0, 3);
  const std::vector<uint8_t> blob = src.opt->save();
  const std::vector<uint8_t> v2 = to_v2(blob);
  REQUIRE(v2.size() == blob.size() - 2 * 4);
  Model b = build(s);
  b.opt->load(v2.data(), v2.size());
  CHECK(b.opt->param_config(0).args.state_map == qrms::StateMap::Signed);
  CHECK_SAME(b.opt->save(), blob);

  std::vector<uint8_t> bad = blob;
  poke<int32_t>(bad, kStateMap, 7);
  reseal(bad);
  const std::vector<uint8_t> before = b.opt->save();
  try {
    b.opt->load(bad.data(), bad.size());
    FAIL("a state_map of 7 was accepted");
  } catch (const qrms::BadStateError &e) {
    CHECK_THAT(e.what(), Catch::Contains("parameter 0") && Catch::Contains("state_map"));
  }
  CHECK_SAME(b.opt->save(), before);
}

namespace {

// small_spec with 4-bit state: 300 elements (3 blocks of 128, the last of 44).
Spec small_spec4() {
  Spec s = small_spec();
  s.name = "small 4-bit";
  s.cfg.optim_bits = 4;
  return s;
}

}  // namespace

TEST_CASE("4-bit state: the blob's record and its buffers", "[state][4bit]") {
  Model m = build(small_spec4());
  train(m, 0, 3);
  const std::vector<uint8_t> blob = m.opt->save();
  CHECK(peek<int32_t>(blob, kKind) == 3);  // 4-bit block-wise
  CHECK(peek<int32_t>(blob, kBits) == 4);
  CHECK(peek<uint64_t>(blob, kBuffers) == 150u);                // s: two codes per byte
  CHECK(peek<uint64_t>(blob, kBuffers + 8 + 150) == 12u);       // three absmax
  CHECK(peek<uint64_t>(blob, kBuffers + 8 + 150 + 8 + 12) == 150u);  // b
}

// 4-bit state has fixed maps: state_map does not change its layout, so a
// blob saved with either value loads under the other, bit for bit.
TEST_CASE("4-bit state ignores state_map: blobs load across it", "[state][4bit]") {
  Spec s = small_spec4();
  Model src = build(s, 3);
  s.cfg.args.state_map = qrms::StateMap::Unsigned;
  Model other = build(s, 3);
  train(src, 0, 3);
  train(other, 0, 3);
  const std::vector<uint8_t> blob = src.opt->save();
  other.opt->load(blob.data(), blob.size());
  train(src, 3, 5);
  train(other, 3, 5);
  for (size_t i = 0; i < src.p.size(); ++i) CHECK(src.p[i].same_bits(other.p[i]));
  CHECK(src.opt->read_state(0, 0) == other.opt->read_state(0, 0));
}

TEST_CASE("4-bit blobs with a valid checksum but bad content are refused and change nothing", "[state][4bit]") {
  const std::vector<Forgery> forgeries = {
      {"8-bit state kind", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kKind, 1); }},
      {"32-bit state kind", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kKind, 0); }},
      {"state kind 4", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kKind, 4); }},
      {"8-bit config for 4-bit state", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kBits, 8); }},
      {"optim_bits 2", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kBits, 2); }},
      {"4-bit per tensor", [](std::vector<uint8_t> &b) { poke<int32_t>(b, kRec + 80, 0); }},  // block_wise
      {"codes of one byte per element", [](std::vector<uint8_t> &b) { poke<uint64_t>(b, kBuffers, 300u); }},
      {"one code byte more", [](std::vector<uint8_t> &b) { poke<uint64_t>(b, kBuffers, 151u); }},
      {"numel and global numel INT64_MAX", [](std::vector<uint8_t> &b) {
         poke<int64_t>(b, kNumel, std::numeric_limits<int64_t>::max());
         poke<int64_t>(b, kGlobal, std::numeric_limits<int64_t>::max());
       }},
  };
  std::vector<uint8_t> blob;
  check_forgeries_refused(small_spec4(), forgeries, [&blob](Model &victim, const std::vector<uint8_t> &b) {
    victim.opt->load(b.data(), b.size());  // the intact blob still loads
    CHECK_SAME(victim.opt->save(), b);
    blob = b;
  });

  // A 4-bit shard record off a block boundary: the parse refuses it (any
  // optimizer would also refuse its global numel; the merge shows the reason).
  std::vector<uint8_t> shard = blob;
  poke<int64_t>(shard, kGlobal, 400);
  poke<int64_t>(shard, kOffset, 64);
  reseal(shard);
  const void *blobs[] = {shard.data()};
  const size_t sizes[] = {shard.size()};
  try {
    qrms::merge_states(blobs, sizes, 1, nullptr, 0);
    FAIL("merged a 4-bit shard that starts at element 64");
  } catch (const qrms::BadStateError &e) {
    CHECK_THAT(e.what(), Catch::Contains("multiple of 128"));
  }
}
