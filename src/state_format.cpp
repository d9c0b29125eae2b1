// save/load of the optimizer state; docs/state-format.md describes the bytes.
// load parses and checks the whole blob before it changes anything.
#include <cstring>
#include <string>
#include <vector>

#include "optimizer_impl.hpp"

namespace qrms {

namespace {

constexpr char kMagic[8] = {'Q', 'R', 'M', 'S', 'S', 'T', 'A', 'T'};
constexpr uint32_t kEndianMark = 0x01020304u;
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kCountOffset = 8 + 4 + 4;  // magic, endian mark, version
constexpr size_t kHeaderBytes = kCountOffset + 8;
constexpr size_t kChecksumBytes = 8;

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
}

Config get_config(Reader &r) {
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
  return c;
}

// A parameter record parsed from a blob, its buffers still in the blob.
struct Record {
  Config cfg;
  bool own_config = false;
  int64_t step = 0;
  std::vector<const uint8_t *> data;  // one per buffers_of() entry
};

}  // namespace

size_t save_state(const Optimizer1State::Impl &impl, void *buffer, size_t capacity) {
  // Pass 0 measures; pass 1 writes, and only when the buffer is big enough.
  size_t needed = 0;
  for (int pass = 0; pass < 2; ++pass) {
    uint8_t *out = pass == 0 ? nullptr : static_cast<uint8_t *>(buffer);
    Writer w(out);
    w.bytes(kMagic, sizeof(kMagic));
    w.put(kEndianMark);
    w.put(kFormatVersion);
    w.put<uint64_t>(impl.params.size());
    for (const ParamEntry &e : impl.params) {
      w.put<int64_t>(e.n);
      w.put<int32_t>(static_cast<int32_t>(e.dtype));
      w.put<int32_t>(static_cast<int32_t>(e.layout.kind));
      w.put<int32_t>(e.own_config ? 1 : 0);
      int64_t step = 0;
      if (out) impl.backend->to_host(&step, e.state.step.get(), sizeof(step));
      w.put<int64_t>(step);
      put_config(w, e.cfg);
      for (const DeviceBuffer *b : buffers_of(e.state)) {
        w.put<uint64_t>(b->bytes());
        if (out && b->bytes()) impl.backend->to_host(out + w.size(), b->get(), b->bytes());
        w.skip(b->bytes());
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

void load_state(Optimizer1State::Impl &impl, const void *buffer, size_t size) {
  if (buffer == nullptr) throw ValueError("buffer is NULL");
  const uint8_t *p = static_cast<const uint8_t *>(buffer);
  if (size < kHeaderBytes + kChecksumBytes) throw BadStateError("state blob is truncated (" + core::counted(size, "byte") + ")");
  if (std::memcmp(p, kMagic, sizeof(kMagic)) != 0) throw BadStateError("not a qrmsprop state blob (bad magic)");
  uint32_t mark, version;
  std::memcpy(&mark, p + 8, 4);
  std::memcpy(&version, p + 12, 4);
  if (mark != kEndianMark) throw BadStateError("state blob was written on a machine of the other byte order");
  if (version != kFormatVersion)
    throw BadStateError("state blob has format version " + std::to_string(version) + "; this library reads version " +
                        std::to_string(kFormatVersion));
  uint64_t stored;
  std::memcpy(&stored, p + size - kChecksumBytes, kChecksumBytes);
  if (stored != checksum(p, size - kChecksumBytes)) throw BadStateError("state blob checksum mismatch (corrupt or truncated)");

  Reader r(p + kCountOffset, size - kChecksumBytes - kCountOffset);
  const uint64_t count = r.get<uint64_t>("parameter count");
  if (count != impl.params.size())
    throw BadStateError("state blob has " + core::counted(count, "parameter") + "; the optimizer has " +
                        std::to_string(impl.params.size()));
  std::vector<Record> records(static_cast<size_t>(count));
  for (size_t i = 0; i < records.size(); ++i) {
    const ParamEntry &e = impl.params[i];
    Record &rec = records[i];
    const std::string which = "parameter " + std::to_string(i);
    const int64_t n = r.get<int64_t>("numel");
    const int32_t dtype = r.get<int32_t>("dtype");
    const int32_t kind = r.get<int32_t>("state kind");
    rec.own_config = r.get<int32_t>("own_config") != 0;
    rec.step = r.get<int64_t>("step");
    rec.cfg = get_config(r);
    if (n != e.n)
      throw BadStateError(which + ": blob has " + core::counted(n, "element") + ", the optimizer " + std::to_string(e.n));
    if (dtype != static_cast<int32_t>(e.dtype)) throw BadStateError(which + ": dtype differs from the optimizer's");
    if (rec.step < 0) throw BadStateError(which + ": negative step count");
    try {
      validate(rec.cfg);
    } catch (const Error &err) {
      throw BadStateError(which + ": invalid config in blob: " + err.what());
    }
    const Layout layout = Layout::of(rec.cfg, n);
    if (kind != static_cast<int32_t>(layout.kind) || layout != e.layout)
      throw BadStateError(which + ": state precision or layout (8/32-bit, block-wise, momentum, clipping, max_unorm) "
                                  "differs from the optimizer's");
    for (const DeviceBuffer *b : buffers_of(e.state)) {
      if (r.get<uint64_t>("buffer size") != b->bytes()) throw BadStateError(which + ": a state buffer has the wrong size");
      rec.data.push_back(r.take(b->bytes(), "state buffer"));
    }
  }
  if (r.remaining() != 0) throw BadStateError("state blob has trailing bytes");

  // Everything checked: apply.
  for (size_t i = 0; i < records.size(); ++i) {
    ParamEntry &e = impl.params[i];
    Record &rec = records[i];
    const std::vector<const DeviceBuffer *> bufs = buffers_of(e.state);
    for (size_t k = 0; k < bufs.size(); ++k)
      if (bufs[k]->bytes()) impl.backend->from_host(bufs[k]->get(), rec.data[k], bufs[k]->bytes());
    impl.backend->from_host(e.state.step.get(), &rec.step, sizeof(rec.step));
    e.cfg = rec.cfg;
    e.own_config = rec.own_config;
    e.stepped = e.stepped || rec.step > 0;
  }
}

}  // namespace qrms
