// The collectives of a sharded step: each is one in-place all-reduce of a few
// device floats through the caller's qrms_comm, ordered on the step's stream.
// Maxima go through a NaN-safe encoding, because MPI_MAX and ncclMax are not
// specified for NaN: the values with NaN replaced by 0 and a NaN flag per
// value, all reduced by max in one call, then decoded.
#include <string>

#include "optimizer_impl.hpp"

namespace qrms {

void ReduceSlots::resize(core::Backend *backend, size_t p) {
  if (buf.get() && p == params) return;
  DeviceBuffer fresh(backend, (7 * p + 1) * sizeof(float));  // may throw: nothing changed yet
  buf = std::move(fresh);
  params = p;
}

namespace {

void all_reduce(const Optimizer1State::Impl &impl, float *v, int64_t n, qrms_reduce_op_t op, void *stream) {
  const qrms_status_t rc = impl.comm.all_reduce(impl.comm.user, v, n, op, static_cast<qrms_stream_t>(stream));
  if (rc == QRMS_SUCCESS) return;
  const qrms_status_t status = rc > 0 && rc <= QRMS_ERROR_INTERNAL ? rc : QRMS_ERROR_DEVICE;
  throw Error(status, "the communicator's all_reduce (" + std::string(op == QRMS_REDUCE_SUM ? "sum" : "max") +
                          " of " + core::counted(n, "float") + ", rank " + std::to_string(impl.comm.rank) + " of " +
                          std::to_string(impl.comm.world_size) + ") failed with status " + std::to_string(rc));
}

}  // namespace

void all_reduce_sum(const Optimizer1State::Impl &impl, float *v, int64_t n, void *stream) {
  all_reduce(impl, v, n, QRMS_REDUCE_SUM, stream);
}

void all_reduce_max(const Optimizer1State::Impl &impl, float *v, int64_t n, void *stream) {
  impl.backend->slots(core::SlotOp::EncodeMax, v, n, nullptr, stream);
  all_reduce(impl, v, 2 * n, QRMS_REDUCE_MAX, stream);
  impl.backend->slots(core::SlotOp::DecodeMax, v, n, nullptr, stream);
}

void all_reduce_flag(const Optimizer1State::Impl &impl, int32_t *flag, void *stream) {
  float *slot = impl.slots.found();
  impl.backend->slots(core::SlotOp::FromFlag, slot, 1, flag, stream);
  all_reduce(impl, slot, 1, QRMS_REDUCE_MAX, stream);
  impl.backend->slots(core::SlotOp::ToFlag, slot, 1, flag, stream);
}

}  // namespace qrms
