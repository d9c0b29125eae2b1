// Update and pre-pass kernels for StateKind::Blockwise4 state (see update_kernels.cuh).
#include "update_kernels.cuh"

namespace qrms {
namespace gpu {
QRMS_INSTANTIATE_UPDATE(StateKind::Blockwise4)
}  // namespace gpu
}  // namespace qrms
