/*
 * qrmsprop over MPI: a qrms_comm whose all-reduce is MPI_Allreduce on an MPI
 * communicator, for optimizers on the CPU (docs/distributed.md).
 *
 * Library libqrmsprop_mpi (CMake option QRMS_MPI, target qrmsprop::mpi); the
 * core library does not depend on MPI.
 */
#ifndef QRMSPROP_QRMSPROP_MPI_H
#define QRMSPROP_QRMSPROP_MPI_H

#include <mpi.h>

#include "qrmsprop/qrmsprop.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fills *out with the rank and size of `comm` and an all_reduce that calls
 * MPI_Allreduce(MPI_IN_PLACE, ..., MPI_FLOAT, MPI_SUM or MPI_MAX, comm),
 * blocking, on the CPU (device QRMS_DEVICE_CPU; the stream is ignored).
 * Writes at most `size` bytes (the caller's sizeof(qrms_comm)) and sets
 * struct_size to what it wrote. `comm` is kept by handle (as MPI_Comm_c2f):
 * it must stay valid while the optimizer uses *out. MPI must be
 * initialised. Errors: INVALID_ARGUMENT (out NULL, size below the first
 * published qrms_comm, comm MPI_COMM_NULL, MPI not initialised; *out is left
 * as it was); the all_reduce returns DEVICE when MPI_Allreduce fails (under
 * MPI's default error handler MPI aborts first). */
QRMS_API qrms_status_t qrms_comm_mpi_sized(MPI_Comm comm, qrms_comm *out, size_t size);
/* The exported qrms_comm_mpi writes exactly the first published qrms_comm
 * (40 bytes on 64-bit machines, up to all_reduce); code compiled against this
 * header calls it through the macro, which passes its own sizeof. */
QRMS_API qrms_status_t qrms_comm_mpi(MPI_Comm comm, qrms_comm *out);
#define qrms_comm_mpi(comm, out) qrms_comm_mpi_sized((comm), (out), sizeof *(out))

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* QRMSPROP_QRMSPROP_MPI_H */
