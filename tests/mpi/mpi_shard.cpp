// Sharded optimizers with ranks as MPI processes (run by mpirun with 1, 2 or
// 3 ranks): every case of shard_harness.hpp through qrms_comm_mpi, each rank
// against one process holding whole tensors, then save, merge and resume on
// one rank fewer (a communicator split off MPI_COMM_WORLD). Prints one line
// per case and rank; exits non-zero on every rank when any rank failed.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "qrmsprop/qrmsprop_mpi.h"
#include "../shard_harness.hpp"

namespace {

std::vector<std::vector<uint8_t>> all_gather(const std::vector<uint8_t> &blob, MPI_Comm comm) {
  int world = 0;
  MPI_Comm_size(comm, &world);
  const int mine = static_cast<int>(blob.size());
  std::vector<int> sizes(static_cast<size_t>(world)), displs(static_cast<size_t>(world));
  MPI_Allgather(&mine, 1, MPI_INT, sizes.data(), 1, MPI_INT, comm);
  int total = 0;
  for (int r = 0; r < world; ++r) {
    displs[static_cast<size_t>(r)] = total;
    total += sizes[static_cast<size_t>(r)];
  }
  std::vector<uint8_t> all(static_cast<size_t>(total));
  MPI_Allgatherv(blob.data(), mine, MPI_BYTE, all.data(), sizes.data(), displs.data(), MPI_BYTE, comm);
  std::vector<std::vector<uint8_t>> out;
  for (int r = 0; r < world; ++r)
    out.emplace_back(all.begin() + displs[static_cast<size_t>(r)],
                     all.begin() + displs[static_cast<size_t>(r)] + sizes[static_cast<size_t>(r)]);
  return out;
}

// The adapter writes only the caller's bytes: a larger buffer keeps its
// guard bytes past this header's qrms_comm, a size below the first layout
// is refused with *out untouched, and the exported function (the first
// layout) matches the macro's fill.
std::string check_adapter_sizes() {
  struct {
    qrms_comm comm;
    unsigned char guard[64];
  } big;
  std::memset(&big, 0xab, sizeof big);
  if (qrms_comm_mpi_sized(MPI_COMM_WORLD, &big.comm, sizeof big) != QRMS_SUCCESS) return "sized fill failed";
  if (big.comm.struct_size != sizeof(qrms_comm)) return "struct_size " + std::to_string(big.comm.struct_size);
  for (unsigned char b : big.guard)
    if (b != 0xab) return "wrote past qrms_comm";
  qrms_comm small;
  std::memset(&small, 0xab, sizeof small);
  if (qrms_comm_mpi_sized(MPI_COMM_WORLD, &small, sizeof small - 1) != QRMS_ERROR_INVALID_ARGUMENT)
    return "a size below the first layout was accepted";
  for (size_t i = 0; i < sizeof small; ++i)
    if (reinterpret_cast<const unsigned char *>(&small)[i] != 0xab) return "a refused fill wrote";
  qrms_comm first;
  if ((qrms_comm_mpi)(MPI_COMM_WORLD, &first) != QRMS_SUCCESS || first.struct_size != sizeof(qrms_comm) ||
      first.rank != big.comm.rank || first.all_reduce != big.comm.all_reduce)
    return "the exported qrms_comm_mpi differs from the sized fill";
  return "";
}

}  // namespace

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  const int resume_world = world > 1 ? world - 1 : 1;
  MPI_Comm resume_mpi = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, rank < resume_world ? 0 : MPI_UNDEFINED, rank, &resume_mpi);

  qrms_comm comm, resume;
  int failures = 0;
  if (qrms_comm_mpi(MPI_COMM_WORLD, &comm) != QRMS_SUCCESS ||
      (resume_mpi != MPI_COMM_NULL && qrms_comm_mpi(resume_mpi, &resume) != QRMS_SUCCESS)) {
    std::printf("rank %d: qrms_comm_mpi failed\n", rank);
    failures = 1;
  }
  const std::string sizes = check_adapter_sizes();
  std::printf("rank %d of %d: adapter sizes: %s\n", rank, world, sizes.empty() ? "ok" : sizes.c_str());
  if (!sizes.empty()) failures = 1;
  const shard::Gather gather = [](const std::vector<uint8_t> &b) { return all_gather(b, MPI_COMM_WORLD); };
  for (const shard::Case &c : shard::cases()) {
    if (failures) break;
    const std::string err = shard::run_case(c, comm, gather, resume_mpi != MPI_COMM_NULL ? &resume : nullptr);
    std::printf("rank %d of %d: %s: %s\n", rank, world, c.name.c_str(), err.empty() ? "ok" : err.c_str());
    std::fflush(stdout);
    if (!err.empty()) failures = 1;
    // Every rank learns of a failure, so that none waits in a collective the others left.
    MPI_Allreduce(MPI_IN_PLACE, &failures, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  }
  if (resume_mpi != MPI_COMM_NULL) MPI_Comm_free(&resume_mpi);
  if (rank == 0)
    std::printf("%s: %zu cases at %d ranks (resumed at %d)\n", failures ? "FAILED" : "passed", shard::cases().size(),
                world, resume_world);
  MPI_Finalize();
  return failures ? 1 : 0;
}
