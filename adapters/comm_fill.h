/* The one fill of a qrms_comm, for both adapters (not installed). */
#ifndef QRMSPROP_ADAPTERS_COMM_FILL_H
#define QRMSPROP_ADAPTERS_COMM_FILL_H

#include <stddef.h>
#include <string.h>

#include "qrmsprop/qrmsprop.h"

/* Bytes of the first published qrms_comm (up to all_reduce): what the
 * exported qrms_comm_mpi / qrms_comm_nccl write. */
#define QRMS_COMM_FIRST_SIZE (offsetof(qrms_comm, all_reduce) + sizeof(((qrms_comm *)0)->all_reduce))

/* Writes the first `size` bytes of *out (the caller's sizeof(qrms_comm), at
 * most this library's) and sets struct_size to what it wrote, so a caller
 * built against an older, smaller qrms_comm loses nothing past it. */
static inline qrms_status_t qrms_comm_fill(qrms_comm *out, size_t size, qrms_comm c) {
  if (out == NULL || size < QRMS_COMM_FIRST_SIZE) return QRMS_ERROR_INVALID_ARGUMENT;
  c.struct_size = size < sizeof c ? size : sizeof c;
  memcpy(out, &c, c.struct_size);
  return QRMS_SUCCESS;
}

#endif /* QRMSPROP_ADAPTERS_COMM_FILL_H */
