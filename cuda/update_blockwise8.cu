// Update and pre-pass kernels for StateKind::Blockwise8 state (see update_kernels.cuh).
#include "update_kernels.cuh"

namespace qrms {
namespace gpu {
QRMS_INSTANTIATE_UPDATE(StateKind::Blockwise8)
}  // namespace gpu
}  // namespace qrms
