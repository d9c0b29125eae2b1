// How far 8-bit square-average state is from 32-bit state on the same
// gradient stream (issue 15): the signed map (the default, bitsandbytes')
// against the unsigned one, block-wise and per-tensor. Every optimizer sees
// the same gradients; with weight_decay 0 the state does not depend on the
// parameters, so the 32-bit state is the exact trajectory. Per element,
// |s8 - s32| / s32 after the last step; one JSON line per case with the
// median, p99 and mean of that relative error and the fraction of elements
// whose 8-bit state is 0 (the zero point: the update then divides by eps).
//
//   qrms_bench_state_error [--n N] [--steps S] [--seed X] [--decades D]
//
// Gradients: g = scale * N(0, 1) with a fixed per-element scale 10^U(-D, 0)
// (default D 3), as parameters of one tensor see gradients of different sizes.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "qrmsprop/qrmsprop.hpp"

namespace {

struct Options {
  int64_t n = 1 << 20;
  int steps = 200;
  uint32_t seed = 1;
  double decades = 3.0;
};

Options parse(int argc, char **argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const char *v = argv[i + 1];
    if (a == "--n") o.n = std::atoll(v);
    else if (a == "--steps") o.steps = std::atoi(v);
    else if (a == "--seed") o.seed = static_cast<uint32_t>(std::atoll(v));
    else if (a == "--decades") o.decades = std::atof(v);
    else {
      std::fprintf(stderr, "usage: qrms_bench_state_error [--n N] [--steps S] [--seed X] [--decades D]\n");
      std::exit(2);
    }
  }
  return o;
}

struct Case {
  const char *kind;  // "blockwise", "per-tensor" or "32-bit"
  const char *map;
  std::unique_ptr<qrms::Optimizer1State> opt;
};

double quantile(std::vector<double> v, double q) {
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return v[k];
}

}  // namespace

int main(int argc, char **argv) {
  const Options o = parse(argc, argv);
  const size_t n = static_cast<size_t>(o.n);
  std::mt19937 rng(o.seed);
  std::uniform_real_distribution<double> expo(-o.decades, 0.0);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> scale(n);
  for (float &s : scale) s = static_cast<float>(std::pow(10.0, expo(rng)));

  std::vector<Case> cases;
  for (bool block_wise : {true, false})
    for (qrms::StateMap m : {qrms::StateMap::Signed, qrms::StateMap::Unsigned}) {
      qrms::Config c;
      c.lr = 1e-3f;
      c.optim_bits = 8;
      c.args.block_wise = block_wise;
      c.args.state_map = m;
      cases.push_back({block_wise ? "blockwise" : "per-tensor", m == qrms::StateMap::Signed ? "signed" : "unsigned",
                       std::make_unique<qrms::Optimizer1State>(c)});
    }
  qrms::Config c32;
  c32.lr = 1e-3f;
  cases.push_back({"32-bit", "none", std::make_unique<qrms::Optimizer1State>(c32)});

  std::vector<float> grad(n);
  std::vector<std::vector<float>> params(cases.size(), std::vector<float>(n, 0.0f));
  for (size_t k = 0; k < cases.size(); ++k)
    cases[k].opt->add_param(params[k].data(), grad.data(), qrms::Dtype::Float32, o.n);
  for (int t = 0; t < o.steps; ++t) {
    for (size_t i = 0; i < n; ++i) grad[i] = scale[i] * normal(rng);
    for (Case &c : cases) c.opt->step();
  }

  const std::vector<float> exact = cases.back().opt->read_state(0, QRMS_STATE_SQUARE_AVG);
  for (size_t k = 0; k + 1 < cases.size(); ++k) {
    const std::vector<float> s = cases[k].opt->read_state(0, QRMS_STATE_SQUARE_AVG);
    std::vector<double> rel(n);
    double sum = 0.0;
    size_t zeros = 0;
    for (size_t i = 0; i < n; ++i) {
      rel[i] = std::fabs(double(s[i]) - double(exact[i])) / double(exact[i]);
      sum += rel[i];
      zeros += s[i] == 0.0f;
    }
    std::printf("{\"bench\":\"state_error\",\"state\":\"%s\",\"map\":\"%s\",\"n\":%lld,\"steps\":%d,\"decades\":%g,"
                "\"seed\":%u,\"median_rel_err\":%.4f,\"p99_rel_err\":%.4f,\"mean_rel_err\":%.4f,"
                "\"zero_fraction\":%.4f}\n",
                cases[k].kind, cases[k].map, static_cast<long long>(o.n), o.steps, o.decades, o.seed,
                quantile(rel, 0.5), quantile(rel, 0.99), sum / double(n), double(zeros) / double(n));
  }
  return 0;
}
