/* qrms_comm over NCCL (include/qrmsprop/qrmsprop_nccl.h). */
#include <limits.h>
#include <string.h>

#include "qrmsprop/qrmsprop_nccl.h"

static qrms_status_t nccl_all_reduce(void *user, float *data, int64_t count, qrms_reduce_op_t op,
                                     qrms_stream_t stream) {
  if (count < 0 || (op != QRMS_REDUCE_SUM && op != QRMS_REDUCE_MAX)) return QRMS_ERROR_INVALID_ARGUMENT;
  /* qrms_stream_t has cudaStream_t's ABI (both are struct CUstream_st *). */
  if (ncclAllReduce(data, data, (size_t)count, ncclFloat32, op == QRMS_REDUCE_SUM ? ncclSum : ncclMax,
                    (ncclComm_t)user, (cudaStream_t)stream) != ncclSuccess)
    return QRMS_ERROR_DEVICE;
  return QRMS_SUCCESS;
}

qrms_status_t qrms_comm_nccl(ncclComm_t comm, qrms_comm *out) {
  int rank = 0, size = 0, device = 0;
  if (out == NULL || comm == NULL) return QRMS_ERROR_INVALID_ARGUMENT;
  if (ncclCommUserRank(comm, &rank) != ncclSuccess || ncclCommCount(comm, &size) != ncclSuccess ||
      ncclCommCuDevice(comm, &device) != ncclSuccess)
    return QRMS_ERROR_DEVICE;
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  out->rank = rank;
  out->world_size = size;
  out->device = QRMS_DEVICE_CUDA;
  out->device_index = device;
  out->user = comm;
  out->all_reduce = nccl_all_reduce;
  return QRMS_SUCCESS;
}
