// comm_start.c — the all-reduce backends by name: comm_start gives an open comm its backend ("mpi", or "nccl" in
// a CUDA build), comm_create opens and starts one. Above comm.c and the backends, which use comm.c's host
// collectives (NCCL's set-up agrees and broadcasts over them): so no file of comm/ calls another in a loop.
#include <string.h>

#include "comm_impl.h"
#include "common.h"

static int backend_check(const char *backend) {
    if (backend == NULL) return ERR(ST_INPUT, "comm: no backend given (want 'mpi' or 'nccl')");
    if (strcmp(backend, "mpi") == 0) return ST_OK;
    if (strcmp(backend, "nccl") == 0) {
#ifdef DDP_HAVE_CUDA
        return ST_OK;
#else
        return ERR(ST_INPUT, "comm 'nccl' needs a CUDA build (this build has only 'mpi')");
#endif
    }
    return ERR(ST_INPUT, "comm: unknown backend '%s' (want 'mpi' or 'nccl')", backend);
}

static int backend_create(comm *c, const char *backend) {
    if (strcmp(backend, "mpi") == 0) return comm_mpi_create(c);
#ifdef DDP_HAVE_CUDA
    return comm_nccl_create(c);
#else
    return ERR(ST_INPUT, "comm 'nccl' needs a CUDA build (this build has only 'mpi')");
#endif
}

int comm_start(comm *c, const char *backend) {
    if (c->ops) return ERR(ST_RUNTIME, "rank %d (%s): comm_start: backend '%s' already started", c->info.rank,
                           c->info.host, c->ops->name);
    TRY(backend_check(backend));
    int st = backend_create(c, backend);
    if (st != ST_OK) c->ops = NULL;
    return st;
}

int comm_create(comm **out, const char *backend, double timeout_s) {
    *out = NULL;
    TRY(backend_check(backend));
    TRY(comm_open(out, timeout_s));
    int st = comm_start(*out, backend);
    if (st != ST_OK) {
        comm_destroy(*out);
        *out = NULL;
    }
    return st;
}
