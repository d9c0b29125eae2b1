// Consumer of the installed C++ classes: one 8-bit step with a known result.
#include <qrmsprop/qrmsprop.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  std::vector<float> p(1000, 1.0f), g(1000, 1.0f);
  qrms::Args args;
  args.min_8bit_size = 0;
  try {
    qrms::RMSprop8bit opt(1e-2f, 0.99f, 1e-8f, 0.0f, 0.0f, false, args);
    opt.add_param(p.data(), g.data(), qrms::Dtype::Float32, 1000);
    opt.step();
    if (!opt.is_8bit(0)) return 1;
    qrms::RMSprop(1e-2f, 0.0f);  // alpha == 0 must throw
    std::fprintf(stderr, "no NotImplementedError\n");
    return 1;
  } catch (const qrms::NotImplementedError &e) {
    std::printf("cpp_consumer: caught \"%s\"\n", e.what());
  }
  const float expect = 1.0f - 0.01f / (std::sqrt(1.0f - 0.99f) + 1e-8f);
  if (std::fabs(p[0] - expect) > 1e-6f) {
    std::fprintf(stderr, "p[0] = %.9g, expected %.9g\n", static_cast<double>(p[0]), static_cast<double>(expect));
    return 1;
  }
  std::printf("cpp_consumer: p[0] = %.7f\n", static_cast<double>(p[0]));
  return 0;
}
