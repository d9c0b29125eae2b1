// The slots around a sharded step's all-reduces (core::SlotOp), on the
// device and in stream order, so that a step with a communicator still does
// not synchronise with the host. A few floats: one block walks them.
#include "device.cuh"
#include "launch.hpp"

namespace qrms {
namespace gpu {

namespace {

__global__ void slots_kernel_impl(int op, float *v, int64_t n, int32_t *flag) {
  switch (static_cast<core::SlotOp>(op)) {
    case core::SlotOp::EncodeMax:
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const bool nan = isnan(v[i]);
        v[n + i] = nan ? 1.0f : 0.0f;
        if (nan) v[i] = 0.0f;
      }
      break;
    case core::SlotOp::DecodeMax:
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        if (v[n + i] > 0.0f) v[i] = __int_as_float(0x7fc00000);
      break;
    case core::SlotOp::FromFlag:
      if (threadIdx.x == 0) v[0] = *flag != 0 ? 1.0f : 0.0f;
      break;
    case core::SlotOp::ToFlag:
      if (threadIdx.x == 0) *flag = v[0] > 0.0f ? 1 : 0;
      break;
  }
}

}  // namespace

const void *slots_kernel() {
  return QRMS_KERNEL_HANDLE(slots_kernel_impl);
}

}  // namespace gpu
}  // namespace qrms
