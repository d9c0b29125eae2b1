// The CPU quantizers on their own: nanoseconds per value (this thread's CPU
// time, so other processes on the machine disturb it less than wall time)
// of the dynamic maps' coder (math::DynamicCoder, in a loop compiled for
// AVX2 as the library's is), the 64 Ki-entry table and the binary search,
// on 2^24 state-like values (|N(0,1) * N(0,1)| / 10, and signed for the
// momentum-like case) scaled by absmax 1. One JSON line per case; the codes
// of the three are checked equal first.
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <random>
#include <vector>

#include "element.hpp"
#include "qrmsprop/qrmsprop.hpp"
#include "quant_table.hpp"

namespace {

double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + double(t.tv_nsec) * 1e-9;
}

#if defined(__x86_64__) && defined(__GNUC__)
[[gnu::target("avx2")]]
#endif
[[gnu::noinline]] void coder_block(const qrms::math::DynamicCoder &coder, const float *s, uint8_t *codes, int n) {
  const qrms::math::DynamicCoder d = coder;  // as the library's loop: stores to codes cannot alias it
  for (int k = 0; k < n; ++k) codes[k] = qrms::math::dynamic_code(d, s[k] / 1.0f);
}

[[gnu::noinline]] void table_block(const qrms::core::QuantTable &t, const float *q, const float *s, uint8_t *codes,
                                   int n) {
  for (int k = 0; k < n; ++k) codes[k] = qrms::math::quantize_scaled(q, s[k], 1.0f, 127, t);
}

[[gnu::noinline]] void search_block(const float *q, const float *s, uint8_t *codes, int n) {
  for (int k = 0; k < n; ++k) codes[k] = qrms::math::quantize_scaled(q, s[k], 1.0f, 127);
}

}  // namespace

int main() {
  const std::vector<float> q = qrms::dynamic_map(true);
  const auto table = qrms::core::QuantTable::of(q.data());
  if (!table || !table->coder()) return 1;
  const int n = 1 << 24, block = 256;
  for (const bool is_signed : {false, true}) {
    std::vector<float> s(static_cast<size_t>(n));
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    for (float &x : s) {
      x = normal(rng) * normal(rng) * 0.1f;
      if (!is_signed) x = x < 0.0f ? -x : x;
      x = x > 1.0f ? 1.0f : (x < -1.0f ? -1.0f : x);
    }
    std::vector<uint8_t> a(s.size()), b(s.size()), c(s.size());
    double best[3] = {1e30, 1e30, 1e30};
    for (int rep = 0; rep < 5; ++rep) {
      double t0 = cpu_seconds();
      for (int i = 0; i < n; i += block) coder_block(*table->coder(), &s[size_t(i)], &a[size_t(i)], block);
      double t1 = cpu_seconds();
      for (int i = 0; i < n; i += block) table_block(*table, q.data(), &s[size_t(i)], &b[size_t(i)], block);
      double t2 = cpu_seconds();
      for (int i = 0; i < n; i += block) search_block(q.data(), &s[size_t(i)], &c[size_t(i)], block);
      double t3 = cpu_seconds();
      best[0] = std::min(best[0], t1 - t0);
      best[1] = std::min(best[1], t2 - t1);
      best[2] = std::min(best[2], t3 - t2);
    }
    if (a != b || a != c) {
      std::printf("{\"error\": \"codes differ\"}\n");
      return 1;
    }
    const char *names[3] = {"coder", "table", "binary_search"};
    for (int k = 0; k < 3; ++k)
      std::printf("{\"quantizer\": \"%s\", \"values\": \"%s\", \"n\": %d, \"ns_per_value\": %.3f}\n", names[k],
                  is_signed ? "signed" : "non-negative", n, best[k] / n * 1e9);
  }
  return 0;
}
