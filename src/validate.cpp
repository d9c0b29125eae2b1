// The one validation path for hyper-parameters (SPEC section 2), used by the
// constructors, per-parameter configs and every C entry point.
#include <charconv>
#include <cmath>
#include <cstring>
#include <string>

#include "core.hpp"

namespace qrms {

namespace {

// Shortest text that reads back as the same float ("0.1", "-1", "nan").
std::string show(float v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

void require(bool ok, const char *what, float v) {
  if (!ok) throw ValueError(std::string(what) + show(v));
}

}  // namespace

void validate(const Config &c) {
  if (c.alpha == 0.0f) throw NotImplementedError("RMSprop with alpha==0.0 is not supported!");
  if (c.centered) throw NotImplementedError("Centered RMSprop is not supported!");
  if (c.optim_bits != 4 && c.optim_bits != 8 && c.optim_bits != 32)
    throw NotImplementedError("Amount of optimizer bits not supported: " + std::to_string(c.optim_bits));
  if (c.optim_bits == 4 && !c.args.block_wise)
    throw NotImplementedError("4-bit state is block-wise only (block_wise must be true)");
  // Written as !(ok) so that NaN fails every rule.
  require(c.lr >= 0.0f && std::isfinite(c.lr), "Invalid learning rate: ", c.lr);
  require(c.alpha >= 0.0f && c.alpha < 1.0f, "Invalid alpha value: ", c.alpha);
  require(c.eps >= 0.0f && std::isfinite(c.eps), "Invalid epsilon value: ", c.eps);
  require(c.weight_decay >= 0.0f && std::isfinite(c.weight_decay), "Invalid weight_decay value: ", c.weight_decay);
  require(c.momentum >= 0.0f && c.momentum < 1.0f, "Invalid momentum value: ", c.momentum);
  require(c.args.max_unorm >= 0.0f && std::isfinite(c.args.max_unorm), "Invalid max_unorm value: ", c.args.max_unorm);
  if (c.args.min_8bit_size < 0)
    throw ValueError("Invalid min_8bit_size value: " + std::to_string(c.args.min_8bit_size));
  if (c.args.state_map != StateMap::Signed && c.args.state_map != StateMap::Unsigned)
    throw ValueError("Invalid state_map value: " + std::to_string(static_cast<int32_t>(c.args.state_map)) +
                     " (QRMS_MAP_SIGNED 0, QRMS_MAP_UNSIGNED 1)");
  if (c.args.percentile_clipping < 0 || c.args.percentile_clipping > 100)
    throw ValueError("Invalid percentile_clipping value: " + std::to_string(c.args.percentile_clipping) +
                     " (100 disables clipping, 0..99 clip at that percentile)");
}

void check_struct_tail(const void *s, size_t struct_size, size_t known, const char *name) {
  const unsigned char *p = static_cast<const unsigned char *>(s);
  for (size_t i = known; i < struct_size; ++i)
    if (p[i] != 0)
      throw ValueError(std::string(name) + " has fields this library version (" + std::to_string(QRMS_VERSION_MAJOR) +
                       "." + std::to_string(QRMS_VERSION_MINOR) + "." + std::to_string(QRMS_VERSION_PATCH) +
                       ") does not know, set to non-zero values (byte " + std::to_string(i) + ")");
}

std::string core::counted(int64_t n, const char *noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

using core::kConfigV1Size;

Config config_from_c(const qrms_config *cfg) {
  Config out;
  if (cfg == nullptr) return out;
  if (cfg->struct_size < kConfigV1Size)
    throw ValueError("qrms_config.struct_size " + std::to_string(cfg->struct_size) +
                     " is smaller than the first published qrms_config (" + std::to_string(kConfigV1Size) +
                     "); set it to sizeof(qrms_config)");
  check_struct_tail(cfg, cfg->struct_size, sizeof(qrms_config), "qrms_config");
  // Read the fields the caller's struct has; newer fields keep defaults.
  qrms_config c = config_to_c(out);
  std::memcpy(&c, cfg, cfg->struct_size < sizeof(c) ? cfg->struct_size : sizeof(c));
  out.lr = c.lr;
  out.alpha = c.alpha;
  out.eps = c.eps;
  out.weight_decay = c.weight_decay;
  out.momentum = c.momentum;
  out.centered = c.centered != 0;
  out.optim_bits = c.optim_bits;
  out.args.min_8bit_size = c.min_8bit_size;
  out.args.percentile_clipping = c.percentile_clipping;
  out.args.block_wise = c.block_wise != 0;
  out.args.max_unorm = c.max_unorm;
  out.args.skip_zeros = c.skip_zeros != 0;
  out.skip_nonfinite = c.skip_nonfinite != 0;
  out.stochastic_rounding = c.stochastic_rounding != 0;
  out.seed = c.seed;
  out.args.state_map = static_cast<StateMap>(c.state_map);
  return out;
}

qrms_config config_to_c(const Config &cfg) {
  qrms_config c;
  std::memset(&c, 0, sizeof(c));
  c.struct_size = sizeof(c);
  c.lr = cfg.lr;
  c.alpha = cfg.alpha;
  c.eps = cfg.eps;
  c.weight_decay = cfg.weight_decay;
  c.momentum = cfg.momentum;
  c.centered = cfg.centered ? 1 : 0;
  c.optim_bits = cfg.optim_bits;
  c.min_8bit_size = cfg.args.min_8bit_size;
  c.percentile_clipping = cfg.args.percentile_clipping;
  c.block_wise = cfg.args.block_wise ? 1 : 0;
  c.max_unorm = cfg.args.max_unorm;
  c.skip_zeros = cfg.args.skip_zeros ? 1 : 0;
  c.skip_nonfinite = cfg.skip_nonfinite ? 1 : 0;
  c.stochastic_rounding = cfg.stochastic_rounding ? 1 : 0;
  c.seed = cfg.seed;
  c.state_map = static_cast<int32_t>(cfg.args.state_map);
  return c;
}

}  // namespace qrms
