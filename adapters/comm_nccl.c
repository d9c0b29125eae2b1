/* qrms_comm over NCCL (include/qrmsprop/qrmsprop_nccl.h). */
#include <limits.h>
#include <string.h>

#include "qrmsprop/qrmsprop_nccl.h"
#include "comm_fill.h"

static qrms_status_t nccl_all_reduce(void *user, float *data, int64_t count, qrms_reduce_op_t op,
                                     qrms_stream_t stream) {
  if (count < 0 || (op != QRMS_REDUCE_SUM && op != QRMS_REDUCE_MAX)) return QRMS_ERROR_INVALID_ARGUMENT;
  /* qrms_stream_t has cudaStream_t's ABI (both are struct CUstream_st *). */
  if (ncclAllReduce(data, data, (size_t)count, ncclFloat32, op == QRMS_REDUCE_SUM ? ncclSum : ncclMax,
                    (ncclComm_t)user, (cudaStream_t)stream) != ncclSuccess)
    return QRMS_ERROR_DEVICE;
  return QRMS_SUCCESS;
}

qrms_status_t qrms_comm_nccl_sized(ncclComm_t comm, qrms_comm *out, size_t size) {
  int rank = 0, world = 0, device = 0;
  qrms_comm c;
  if (out == NULL || size < QRMS_COMM_FIRST_SIZE || comm == NULL) return QRMS_ERROR_INVALID_ARGUMENT;
  if (ncclCommUserRank(comm, &rank) != ncclSuccess || ncclCommCount(comm, &world) != ncclSuccess ||
      ncclCommCuDevice(comm, &device) != ncclSuccess)
    return QRMS_ERROR_DEVICE;
  memset(&c, 0, sizeof c);
  c.rank = rank;
  c.world_size = world;
  c.device = QRMS_DEVICE_CUDA;
  c.device_index = device;
  c.user = comm;
  c.all_reduce = nccl_all_reduce;
  return qrms_comm_fill(out, size, c);
}

/* Parenthesised: the header's qrms_comm_nccl macro must not expand here. */
qrms_status_t(qrms_comm_nccl)(ncclComm_t comm, qrms_comm *out) {
  return qrms_comm_nccl_sized(comm, out, QRMS_COMM_FIRST_SIZE);
}
