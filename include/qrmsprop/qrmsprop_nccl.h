/*
 * qrmsprop over NCCL: a qrms_comm whose all-reduce is ncclAllReduce on the
 * step's stream, for optimizers on CUDA devices (docs/distributed.md).
 *
 * Library libqrmsprop_nccl (CMake option QRMS_NCCL, target qrmsprop::nccl);
 * the core library does not depend on NCCL.
 */
#ifndef QRMSPROP_QRMSPROP_NCCL_H
#define QRMSPROP_QRMSPROP_NCCL_H

#include <nccl.h>

#include "qrmsprop/qrmsprop.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fills *out with the rank, size and CUDA device of `comm` and an
 * all_reduce that enqueues ncclAllReduce(data, data, count, ncclFloat32,
 * ncclSum or ncclMax, comm, stream): ordered on the step's stream, with no
 * host synchronisation. Writes at most `size` bytes (the caller's
 * sizeof(qrms_comm)) and sets struct_size to what it wrote. `comm` must stay
 * valid while the optimizer uses *out; the optimizer must live on comm's
 * device. Errors: INVALID_ARGUMENT (out or comm NULL, size below the first
 * published qrms_comm), DEVICE (NCCL cannot tell the rank, size or device);
 * *out is then left as it was. The all_reduce returns DEVICE when
 * ncclAllReduce fails. */
QRMS_API qrms_status_t qrms_comm_nccl_sized(ncclComm_t comm, qrms_comm *out, size_t size);
/* The exported qrms_comm_nccl writes exactly the first published qrms_comm;
 * code compiled against this header calls it through the macro. */
QRMS_API qrms_status_t qrms_comm_nccl(ncclComm_t comm, qrms_comm *out);
#define qrms_comm_nccl(comm, out) qrms_comm_nccl_sized((comm), (out), sizeof *(out))

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* QRMSPROP_QRMSPROP_NCCL_H */
