// Stand-in for cub::BlockReduce on the emulated device. It combines in the
// order of CUB's default algorithm (BLOCK_REDUCE_WARP_REDUCTIONS), so float
// and double sums give the GPU's bits: within each warp a shuffle-down tree
// (offsets 1, 2, 4, 8, 16; lane l takes op(own, lane l + offset) while that
// lane is valid), then thread 0 folds the warp totals left to right. The
// total is valid in thread 0 only. One barrier, as in CUB: reusing
// TempStorage needs a __syncthreads first.
#pragma once

#include <cuda/functional>

#include "cuda_runtime.h"

namespace cub {

enum BlockReduceAlgorithm { BLOCK_REDUCE_RAKING_COMMUTATIVE_ONLY, BLOCK_REDUCE_RAKING, BLOCK_REDUCE_WARP_REDUCTIONS };

template <typename T, int BLOCK_DIM_X, BlockReduceAlgorithm ALGORITHM = BLOCK_REDUCE_WARP_REDUCTIONS,
          int BLOCK_DIM_Y = 1, int BLOCK_DIM_Z = 1>
class BlockReduce {
  static_assert(ALGORITHM == BLOCK_REDUCE_WARP_REDUCTIONS, "the emulated device implements CUB's default algorithm only");
  static constexpr int kThreads = BLOCK_DIM_X * BLOCK_DIM_Y * BLOCK_DIM_Z;

 public:
  struct TempStorage {
    T v[kThreads];
  };

  explicit BlockReduce(TempStorage &storage) : s_(storage) {}

  template <typename Op>
  T Reduce(T input, Op op) {
    return Reduce(input, op, kThreads);
  }

  template <typename Op>
  T Reduce(T input, Op op, int num_valid) {
    const emu::ThreadCtx &t = emu::cur();
    if (t.block->nthreads != kThreads)
      t.block->fail(t.linear, "cub::BlockReduce<" + std::to_string(kThreads) + "> used in a block of " +
                                  std::to_string(t.block->nthreads) + " threads");
    s_.v[t.linear] = input;
    emu::syncthreads(__FILE__, __LINE__);
    if (t.linear != 0) return input;
    T total{};
    for (int w = 0; w * 32 < num_valid && w * 32 < kThreads; ++w) {
      const int last = std::min(31, std::min(num_valid, kThreads) - 1 - w * 32);
      T lane[32];
      for (int l = 0; l <= last; ++l) lane[l] = s_.v[w * 32 + l];
      for (int offset = 1; offset < 32; offset *= 2) {
        T next[32];
        for (int l = 0; l <= last; ++l) next[l] = l + offset <= last ? op(lane[l], lane[l + offset]) : lane[l];
        for (int l = 0; l <= last; ++l) lane[l] = next[l];
      }
      total = w == 0 ? lane[0] : op(total, lane[0]);
    }
    return total;
  }

  T Sum(T input) { return Reduce(input, cuda::std::plus<>{}); }
  T Sum(T input, int num_valid) { return Reduce(input, cuda::std::plus<>{}, num_valid); }

 private:
  TempStorage &s_;
};

}  // namespace cub
