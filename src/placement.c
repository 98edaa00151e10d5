// placement.c — see placement.h.
#include "placement.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

// A launcher's word for the number of processes, or 0 when the variable is unset or not a number.
static long env_count(const char *name) {
    const char *s = getenv(name);
    long v;
    if (!s || parse_int(s, 1, 1L << 30, &v) != 0) return 0;
    return v;
}

int placement_check_launch(int world) {
    if (world > 1) return ST_OK;
    // mpirun's count is the real world when it is set (inside a Slurm allocation SLURM_NTASKS is the job's,
    // not mpirun's -np); srun sets SLURM_NTASKS per step; torchrun-style launchers set WORLD_SIZE.
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS", "WORLD_SIZE"};
    size_t n = getenv("OMPI_COMM_WORLD_SIZE") ? 1 : sizeof vars / sizeof vars[0];
    for (size_t i = 0; i < n; i++) {
        long want = env_count(vars[i]);
        if (want > 1)
            return ERR(ST_INPUT,
                       "%s=%ld says this job has %ld processes, but MPI sees this one alone: it was started without "
                       "MPI, so each process would train alone and write the same files. Start the ranks with "
                       "`srun --mpi=pmix` (Slurm; `srun --mpi=list`) or `mpirun -np %ld`",
                       vars[i], want, want, want);
    }
    return ST_OK;
}

int placement_device(const comm_info *ci, const char *backend, int fake_gpus, int *device) {
    int gpus = fake_gpus;
    *device = -1;
    if (strcmp(backend, "cuda") != 0 && gpus == 0) return ST_OK;
    if (gpus > 0 && ci->local_rank >= gpus)
        return ERR(ST_INPUT,
                   "node %s runs %d ranks but has %d GPU(s): node-local rank %d has no GPU; start at most %d task(s) "
                   "per node (--ntasks-per-node)", ci->host, ci->local_world, gpus, ci->local_rank, gpus);
    *device = ci->local_rank;
    return ST_OK;
}

int placement_print(const comm_info *ci, const char *backend, int fake_gpus) {
    int device;
    TRY(placement_device(ci, backend, fake_gpus, &device));
    char dev[32] = "none";
    if (device >= 0) snprintf(dev, sizeof dev, "%d", device);
    printf("placement: host %s rank %d of %d node-local rank %d of %d device %s%s\n", ci->host, ci->rank, ci->world,
           ci->local_rank, ci->local_world, dev, fake_gpus ? " (fake GPUs: a test hook)" : "");
    fflush(stdout);
    return ST_OK;
}
