// save/load of the optimizer state; docs/state-format.md describes the bytes.
// load parses and checks the whole blob before it changes anything.
#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "optimizer_impl.hpp"

namespace qrms {

namespace {

constexpr char kMagic[8] = {'Q', 'R', 'M', 'S', 'S', 'T', 'A', 'T'};
constexpr uint32_t kEndianMark = 0x01020304u;
// 1: no rank/world, no shard fields; 2: no state_map (both still read, as the signed map)
constexpr uint32_t kFormatVersion = 3;
constexpr size_t kPrefixBytes = 8 + 4 + 4;  // magic, endian mark, version
constexpr size_t kChecksumBytes = 8;
constexpr int kBuffers = 5;

// FNV-1a, 64 bit.
uint64_t checksum(const uint8_t *p, size_t n) {
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

// Appends or measures (out == nullptr) the blob.
class Writer {
 public:
  explicit Writer(uint8_t *out) : out_(out) {}
  template <typename T>
  void put(const T &v) { bytes(&v, sizeof(T)); }
  void bytes(const void *p, size_t n) {
    if (out_) std::memcpy(out_ + size_, p, n);
    size_ += n;
  }
  void skip(size_t n) { size_ += n; }  // bytes the caller wrote itself
  size_t size() const { return size_; }

 private:
  uint8_t *out_;
  size_t size_ = 0;
};

class Reader {
 public:
  Reader(const uint8_t *p, size_t n) : p_(p), n_(n) {}
  template <typename T>
  T get(const char *what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
  const uint8_t *take(size_t n, const char *what) {
    if (n > n_ - pos_) throw BadStateError(std::string("state blob is truncated (reading ") + what + ")");
    const uint8_t *r = p_ + pos_;
    pos_ += n;
    return r;
  }
  size_t remaining() const { return n_ - pos_; }

 private:
  const uint8_t *p_;
  size_t n_;
  size_t pos_ = 0;
};

// The buffers of a record, in blob order.
std::vector<const DeviceBuffer *> buffers_of(const StateBuffers &s) {
  return {&s.state1, &s.scale1, &s.state2, &s.scale2, &s.gnorm_vec};
}

// Bytes of buffer k (blob order) of a record of n elements with this layout.
size_t buffer_bytes(const Layout &l, int64_t n, int k) {
  switch (k) {
    case 0: return l.state_bytes(n);
    case 1: return l.scale_bytes(n);
    case 2: return l.momentum ? l.state_bytes(n) : 0;
    case 3: return l.momentum ? l.scale_bytes(n) : 0;
    default: return l.clip ? math::kGnormHistory * sizeof(float) : 0;
  }
}

void put_config(Writer &w, const Config &c) {
  w.put(c.lr);
  w.put(c.alpha);
  w.put(c.eps);
  w.put(c.weight_decay);
  w.put(c.momentum);
  w.put(c.optim_bits);
  w.put(c.args.min_8bit_size);
  w.put(c.args.percentile_clipping);
  w.put<int32_t>(c.args.block_wise ? 1 : 0);
  w.put(c.args.max_unorm);
  w.put<int32_t>(c.args.skip_zeros ? 1 : 0);
  w.put(static_cast<int32_t>(c.args.state_map));
}

Config get_config(Reader &r, uint32_t version) {
  Config c;
  c.lr = r.get<float>("lr");
  c.alpha = r.get<float>("alpha");
  c.eps = r.get<float>("eps");
  c.weight_decay = r.get<float>("weight_decay");
  c.momentum = r.get<float>("momentum");
  c.optim_bits = r.get<int32_t>("optim_bits");
  c.args.min_8bit_size = r.get<int64_t>("min_8bit_size");
  c.args.percentile_clipping = r.get<int32_t>("percentile_clipping");
  c.args.block_wise = r.get<int32_t>("block_wise") != 0;
  c.args.max_unorm = r.get<float>("max_unorm");
  c.args.skip_zeros = r.get<int32_t>("skip_zeros") != 0;
  if (version >= 3) c.args.state_map = static_cast<StateMap>(r.get<int32_t>("state_map"));
  return c;
}

// A parameter record, parsed from a blob or about to be written.
struct Record {
  int64_t n = 0, global_n = 0, offset = 0;
  int32_t dtype = 0;
  bool own_config = false;
  int64_t step = 0;
  Config cfg;
  Layout layout;
  const uint8_t *data[kBuffers] = {};  // parsed: the buffers, still in the blob
};

struct Blob {
  int32_t rank = 0, world = 1;
  std::vector<Record> records;
};

// Parses and checks a whole blob (docs/state-format.md, "What load checks").
Blob parse(const void *buffer, size_t size) {
  if (buffer == nullptr) throw ValueError("buffer is NULL");
  const uint8_t *p = static_cast<const uint8_t *>(buffer);
  if (size < kPrefixBytes + 8 + kChecksumBytes)
    throw BadStateError("state blob is truncated (" + core::counted(size, "byte") + ")");
  if (std::memcmp(p, kMagic, sizeof(kMagic)) != 0) throw BadStateError("not a qrmsprop state blob (bad magic)");
  uint32_t mark, version;
  std::memcpy(&mark, p + 8, 4);
  std::memcpy(&version, p + 12, 4);
  if (mark != kEndianMark) throw BadStateError("state blob was written on a machine of the other byte order");
  if (version < 1 || version > kFormatVersion)
    throw BadStateError("state blob has format version " + std::to_string(version) + "; this library reads versions 1 to " +
                        std::to_string(kFormatVersion));
  uint64_t stored;
  std::memcpy(&stored, p + size - kChecksumBytes, kChecksumBytes);
  if (stored != checksum(p, size - kChecksumBytes)) throw BadStateError("state blob checksum mismatch (corrupt or truncated)");

  Reader r(p + kPrefixBytes, size - kChecksumBytes - kPrefixBytes);
  Blob b;
  if (version >= 2) {
    b.rank = r.get<int32_t>("rank");
    b.world = r.get<int32_t>("world size");
    if (b.world < 1 || b.rank < 0 || b.rank >= b.world)
      throw BadStateError("state blob has rank " + std::to_string(b.rank) + " of world size " + std::to_string(b.world));
  }
  const uint64_t count = r.get<uint64_t>("parameter count");
  if (count > r.remaining()) throw BadStateError("state blob is truncated (parameter count " + std::to_string(count) + ")");
  b.records.resize(static_cast<size_t>(count));
  for (size_t i = 0; i < b.records.size(); ++i) {
    Record &rec = b.records[i];
    const std::string which = "parameter " + std::to_string(i);
    rec.n = r.get<int64_t>("numel");
    rec.global_n = rec.n;
    if (version >= 2) {
      rec.global_n = r.get<int64_t>("global numel");
      rec.offset = r.get<int64_t>("offset");
    }
    rec.dtype = r.get<int32_t>("dtype");
    const int32_t kind = r.get<int32_t>("state kind");
    rec.own_config = r.get<int32_t>("own_config") != 0;
    rec.step = r.get<int64_t>("step");
    rec.cfg = get_config(r, version);
    if (rec.dtype < 0 || rec.dtype > 2) throw BadStateError(which + ": invalid dtype " + std::to_string(rec.dtype));
    if (rec.step < 0) throw BadStateError(which + ": negative step count");
    try {
      validate(rec.cfg);
    } catch (const Error &err) {
      throw BadStateError(which + ": invalid config in blob: " + err.what());
    }
    rec.layout = Layout::of(rec.cfg, rec.global_n);
    try {
      check_shard(rec.n, rec.global_n, rec.offset, rec.layout, which);
    } catch (const Error &err) {
      throw BadStateError(std::string("state blob: ") + err.what());
    }
    if (kind != static_cast<int32_t>(rec.layout.kind))
      throw BadStateError(which + ": state kind " + std::to_string(kind) + " is not the one its config gives");
    for (int k = 0; k < kBuffers; ++k) {
      const size_t bytes = buffer_bytes(rec.layout, rec.n, k);
      if (r.get<uint64_t>("buffer size") != bytes) throw BadStateError(which + ": a state buffer has the wrong size");
      rec.data[k] = r.take(bytes, "state buffer");
    }
  }
  if (r.remaining() != 0) throw BadStateError("state blob has trailing bytes");
  return b;
}

// Writes (or measures, buffer == nullptr with capacity 0) a blob of kFormatVersion;
// fill(i, k, dst) writes buffer k of record i.
size_t write_blob(int32_t rank, int32_t world, const std::vector<Record> &records,
                  const std::function<void(size_t, int, uint8_t *)> &fill, void *buffer, size_t capacity) {
  size_t needed = 0;
  for (int pass = 0; pass < 2; ++pass) {  // pass 0 measures; pass 1 writes
    uint8_t *out = pass == 0 ? nullptr : static_cast<uint8_t *>(buffer);
    Writer w(out);
    w.bytes(kMagic, sizeof(kMagic));
    w.put(kEndianMark);
    w.put(kFormatVersion);
    w.put(rank);
    w.put(world);
    w.put<uint64_t>(records.size());
    for (size_t i = 0; i < records.size(); ++i) {
      const Record &rec = records[i];
      w.put<int64_t>(rec.n);
      w.put<int64_t>(rec.global_n);
      w.put<int64_t>(rec.offset);
      w.put<int32_t>(rec.dtype);
      w.put<int32_t>(static_cast<int32_t>(rec.layout.kind));
      w.put<int32_t>(rec.own_config ? 1 : 0);
      w.put<int64_t>(rec.step);
      put_config(w, rec.cfg);
      for (int k = 0; k < kBuffers; ++k) {
        const size_t bytes = buffer_bytes(rec.layout, rec.n, k);
        w.put<uint64_t>(bytes);
        if (out && bytes) fill(i, k, out + w.size());
        w.skip(bytes);
      }
    }
    if (pass == 0) {
      needed = w.size() + kChecksumBytes;
      if (buffer == nullptr && capacity == 0) return needed;
      if (buffer == nullptr) throw ValueError("buffer is NULL but capacity is not 0");
      if (capacity < needed)
        throw ValueError("capacity " + std::to_string(capacity) + " is smaller than the " +
                         core::counted(needed, "byte") + " needed (call with NULL, 0 to get the size)");
    } else {
      w.put(checksum(out, w.size()));
    }
  }
  return needed;
}

// Whether the layout's scales are one per block, and the block's size.
bool per_block(const Layout &l) {
  return l.kind == core::StateKind::Blockwise8 || l.kind == core::StateKind::Blockwise4;
}
int64_t block_of(const Layout &l) {
  return l.kind == core::StateKind::Blockwise4 ? math::kBlockSize4 : math::kBlockSize;
}

// Where the part [offset, offset + n) of buffer k of `rec` starts, and its bytes.
std::pair<const uint8_t *, size_t> slice(const Record &rec, int k, int64_t offset, int64_t n) {
  const int64_t rel = offset - rec.offset;
  const Layout &l = rec.layout;
  // (check_shard: a 4-bit shard starts at a multiple of 128, so at a whole byte.)
  if (k == 0 || k == 2) return {rec.data[k] + l.state_bytes(rel), buffer_bytes(l, n, k)};
  if ((k == 1 || k == 3) && per_block(l))
    return {rec.data[k] + static_cast<size_t>(rel / block_of(l)) * sizeof(float), buffer_bytes(l, n, k)};
  return {rec.data[k], buffer_bytes(l, n, k)};  // per-tensor scales, clipping history: whole
}

std::string range(int64_t offset, int64_t n) {
  return "[" + std::to_string(offset) + ", " + std::to_string(offset + n) + ")";
}

}  // namespace

size_t save_state(const Optimizer1State::Impl &impl, void *buffer, size_t capacity) {
  std::vector<Record> records(impl.params.size());
  for (size_t i = 0; i < records.size(); ++i) {
    const ParamEntry &e = impl.params[i];
    Record &rec = records[i];
    rec.n = e.n;
    rec.global_n = e.global_n;
    rec.offset = e.offset;
    rec.dtype = static_cast<int32_t>(e.dtype);
    rec.own_config = e.own_config;
    rec.cfg = e.cfg;
    rec.layout = e.layout;
    if (buffer) impl.backend->to_host(&rec.step, e.state.step.get(), sizeof(rec.step));
  }
  return write_blob(impl.rank(), impl.world(), records, [&](size_t i, int k, uint8_t *dst) {
    const DeviceBuffer *b = buffers_of(impl.params[i].state)[static_cast<size_t>(k)];
    impl.backend->to_host(dst, b->get(), b->bytes());
  }, buffer, capacity);
}

void load_state(Optimizer1State::Impl &impl, const void *buffer, size_t size) {
  const Blob blob = parse(buffer, size);
  if (blob.records.size() != impl.params.size())
    throw BadStateError("state blob has " + core::counted(blob.records.size(), "parameter") + "; the optimizer has " +
                        std::to_string(impl.params.size()));
  for (size_t i = 0; i < blob.records.size(); ++i) {
    const ParamEntry &e = impl.params[i];
    const Record &rec = blob.records[i];
    const std::string which = "parameter " + std::to_string(i);
    if (rec.global_n != e.global_n)
      throw BadStateError(which + ": blob has " + core::counted(rec.global_n, "element") + ", the optimizer " +
                          std::to_string(e.global_n));
    if (rec.dtype != static_cast<int32_t>(e.dtype)) throw BadStateError(which + ": dtype differs from the optimizer's");
    if (rec.layout != e.layout)
      throw BadStateError(which + ": state precision or layout (8/32-bit, block-wise, state map, momentum, clipping, "
                                  "max_unorm) "
                                  "differs from the optimizer's");
    if (e.n > 0 && (e.offset < rec.offset || e.offset + e.n > rec.offset + rec.n))
      throw BadStateError(which + ": the blob (rank " + std::to_string(blob.rank) + " of " + std::to_string(blob.world) +
                          ") holds elements " + range(rec.offset, rec.n) + ", this optimizer's shard is " +
                          range(e.offset, e.n) + "; merge the ranks' blobs with qrms_state_merge first");
  }
  // Everything checked: apply.
  for (size_t i = 0; i < blob.records.size(); ++i) {
    ParamEntry &e = impl.params[i];
    const Record &rec = blob.records[i];
    const std::vector<const DeviceBuffer *> bufs = buffers_of(e.state);
    for (int k = 0; k < kBuffers; ++k) {
      const auto part = slice(rec, k, e.n > 0 ? e.offset : rec.offset, e.n);
      if (part.second) impl.backend->from_host(bufs[static_cast<size_t>(k)]->get(), part.first, part.second);
    }
    impl.backend->from_host(e.state.step.get(), &rec.step, sizeof(rec.step));
    e.cfg = impl.param_cfg(rec.cfg);
    e.own_config = rec.own_config;
    e.stepped = e.stepped || rec.step > 0;
  }
}

size_t merge_states(const void *const *blobs, const size_t *sizes, size_t count, void *out, size_t capacity) {
  std::vector<Blob> parsed;
  for (size_t b = 0; b < count; ++b) {
    try {
      parsed.push_back(parse(blobs[b], sizes[b]));
    } catch (const BadStateError &err) {
      throw BadStateError("blob " + std::to_string(b) + ": " + err.what());
    }
  }
  // One blob per rank: sort by rank, then no rank twice and none missing.
  std::sort(parsed.begin(), parsed.end(), [](const Blob &a, const Blob &c) { return a.rank < c.rank; });
  const int32_t world = parsed[0].world;
  for (size_t b = 0; b < parsed.size(); ++b) {
    if (parsed[b].world != world)
      throw BadStateError("the blobs disagree on the world size (" + std::to_string(world) + " and " +
                          std::to_string(parsed[b].world) + ")");
    if (b > 0 && parsed[b].rank == parsed[b - 1].rank)
      throw BadStateError("rank " + std::to_string(parsed[b].rank) + " appears twice");
    if (parsed[b].rank != static_cast<int32_t>(b)) throw BadStateError("rank " + std::to_string(b) + " is missing");
  }
  if (parsed.size() != static_cast<size_t>(world))
    throw BadStateError("rank " + std::to_string(parsed.size()) + " is missing (" + std::to_string(parsed.size()) +
                        " blobs for a world of " + std::to_string(world) + ")");

  const size_t params = parsed[0].records.size();
  for (const Blob &b : parsed)
    if (b.records.size() != params)
      throw BadStateError("rank " + std::to_string(b.rank) + " has " + core::counted(b.records.size(), "parameter") +
                          ", rank 0 " + std::to_string(params));
  std::vector<Record> merged(params);
  std::vector<std::vector<const Record *>> order(params);  // each parameter's non-empty shards by offset
  for (size_t i = 0; i < params; ++i) {
    const std::string which = "parameter " + std::to_string(i);
    const Record &first = parsed[0].records[i];
    for (const Blob &b : parsed) {
      const Record &rec = b.records[i];
      if (rec.global_n != first.global_n || rec.dtype != first.dtype || rec.layout != first.layout)
        throw BadStateError(which + ": rank " + std::to_string(b.rank) +
                            " has another shape, dtype or state layout than rank 0");
      if (rec.step != first.step)
        throw BadStateError(which + ": rank " + std::to_string(b.rank) + " has taken " +
                            core::counted(rec.step, "step") + ", rank 0 " + std::to_string(first.step));
      if (rec.n > 0) order[i].push_back(&rec);
    }
    std::sort(order[i].begin(), order[i].end(), [](const Record *a, const Record *c) { return a->offset < c->offset; });
    int64_t end = 0;
    for (const Record *rec : order[i]) {
      if (rec->offset != end)
        throw BadStateError(which + ": the ranks' shards do not tile its " + core::counted(first.global_n, "element") +
                            " (" + (rec->offset < end ? "overlap" : "gap") + " at element " +
                            std::to_string(std::min(end, rec->offset)) + ")");
      end = rec->offset + rec->n;
    }
    if (end != first.global_n)
      throw BadStateError(which + ": the ranks' shards do not tile its " + core::counted(first.global_n, "element") +
                          " (gap at element " + std::to_string(end) + ")");
    merged[i] = first;
    merged[i].n = first.global_n;
    merged[i].offset = 0;
  }
  return write_blob(0, 1, merged, [&](size_t i, int k, uint8_t *dst) {
    const Layout &l = merged[i].layout;
    const bool concat = k == 0 || k == 2 || ((k == 1 || k == 3) && per_block(l));
    if (!concat) {  // the same on every rank: rank 0's
      std::memcpy(dst, merged[i].data[k], buffer_bytes(l, merged[i].n, k));
      return;
    }
    for (const Record *rec : order[i]) {
      const size_t bytes = buffer_bytes(l, rec->n, k);
      std::memcpy(dst, rec->data[k], bytes);
      dst += bytes;
    }
  }, out, capacity);
}

}  // namespace qrms
