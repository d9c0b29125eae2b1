// Update and pre-pass kernels for StateKind::Float32 state (see update_kernels.cuh).
#include "update_kernels.cuh"

namespace qrms {
namespace gpu {
QRMS_INSTANTIATE_UPDATE(StateKind::Float32)
}  // namespace gpu
}  // namespace qrms
