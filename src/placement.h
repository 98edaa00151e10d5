// placement.h — where a rank runs: the launch check (a process started without MPI while its launcher's
// environment says the job has more), and node-local rank -> GPU.
#pragma once
#include "comm.h"

// After MPI is initialised, with the world size MPI reports. A process that is alone in its MPI world while
// OMPI_COMM_WORLD_SIZE, SLURM_NTASKS or WORLD_SIZE says the job has more processes was started without MPI
// (srun without --mpi, a plain loop over hosts): every such process would train alone and write the same files.
// Returns ST_INPUT naming `srun --mpi=pmix` or `mpirun`; ST_OK otherwise.
int placement_check_launch(int world);

// The GPU a rank drives: its node-local rank (the job scripts start one task per GPU on each node). -1 for the
// CPU backend. ST_INPUT when a node runs more ranks than it has GPUs, as far as that is known here: fake_gpus > 0
// (GPUs per node, the test aid DDP_TEST_FAKE_GPUS of src/test_hooks.h, for placement tests on machines without
// GPUs) fixes the count; else the CUDA backend checks the device exists when it opens it.
int placement_device(const comm_info *ci, const char *backend, int fake_gpus, int *device);

// One line on stdout for this rank: host, rank, node-local rank and device (--print-placement).
int placement_print(const comm_info *ci, const char *backend, int fake_gpus);
