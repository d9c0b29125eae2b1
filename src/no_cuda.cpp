// Built when the CUDA backend is not (QRMS_CUDA=OFF or no CUDA compiler).
#include "core.hpp"

namespace qrms {
namespace core {

std::unique_ptr<Backend> make_cuda_backend(int) {
  throw DeviceError("this qrmsprop was built without CUDA support (QRMS_CUDA=OFF or no CUDA compiler)");
}

int cuda_device_count() noexcept { return 0; }

int cuda_pointer_device(const void *) noexcept { return -1; }

}  // namespace core
}  // namespace qrms
