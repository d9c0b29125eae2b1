/* qrms_comm over MPI (include/qrmsprop/qrmsprop_mpi.h). */
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "qrmsprop/qrmsprop_mpi.h"
#include "comm_fill.h"

static qrms_status_t mpi_all_reduce(void *user, float *data, int64_t count, qrms_reduce_op_t op,
                                    qrms_stream_t stream) {
  const MPI_Comm comm = MPI_Comm_f2c((MPI_Fint)(intptr_t)user);
  (void)stream; /* CPU memory: MPI_Allreduce returns when the data is reduced */
  if (count < 0 || count > INT_MAX || (op != QRMS_REDUCE_SUM && op != QRMS_REDUCE_MAX))
    return QRMS_ERROR_INVALID_ARGUMENT;
  if (MPI_Allreduce(MPI_IN_PLACE, data, (int)count, MPI_FLOAT, op == QRMS_REDUCE_SUM ? MPI_SUM : MPI_MAX, comm) !=
      MPI_SUCCESS)
    return QRMS_ERROR_DEVICE;
  return QRMS_SUCCESS;
}

qrms_status_t qrms_comm_mpi_sized(MPI_Comm comm, qrms_comm *out, size_t size) {
  int initialized = 0, rank = 0, world = 0;
  qrms_comm c;
  if (out == NULL || size < QRMS_COMM_FIRST_SIZE || comm == MPI_COMM_NULL) return QRMS_ERROR_INVALID_ARGUMENT;
  if (MPI_Initialized(&initialized) != MPI_SUCCESS || !initialized) return QRMS_ERROR_INVALID_ARGUMENT;
  if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &world) != MPI_SUCCESS)
    return QRMS_ERROR_INVALID_ARGUMENT;
  memset(&c, 0, sizeof c);
  c.rank = rank;
  c.world_size = world;
  c.device = QRMS_DEVICE_CPU;
  c.device_index = 0;
  c.user = (void *)(intptr_t)MPI_Comm_c2f(comm);
  c.all_reduce = mpi_all_reduce;
  return qrms_comm_fill(out, size, c);
}

/* Parenthesised: the header's qrms_comm_mpi macro must not expand here. */
qrms_status_t(qrms_comm_mpi)(MPI_Comm comm, qrms_comm *out) {
  return qrms_comm_mpi_sized(comm, out, QRMS_COMM_FIRST_SIZE);
}
