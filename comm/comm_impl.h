// comm_impl.h — private to comm/: the backend table behind the opaque `comm` handle.
#pragma once
// comm_nccl.cu is C++: no MPI C++ bindings, and C linkage for comm.h, common.h and everything declared here
// (include this header before common.h there).
#ifdef __cplusplus
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "comm.h"
#include "common.h"

typedef struct comm_req_slot {
    int in_use, done;
    float *buf;          // user buffer (host or device)
    size_t n;
    double t_launch;     // now_s() at launch
    long long seq;       // its number among the collectives on world (comm.c's arrival board)
    char label[64];      // e.g. "step 12 bucket 3", for watchdog messages
    void *impl;          // backend-private per-request state; comm.c keeps it across reuses of the slot
                         // (the backend sets it in launch and frees what it owns in destroy)
} comm_req_slot;

typedef struct comm_ops {
    const char *name;
    // Launch the average of r->buf[0..r->n) over ranks; fill backend state in r->impl. Never called with n == 0.
    int (*allreduce_avg_launch)(comm *c, comm_req_slot *r);
    // Non-blocking completion check; sets *done. For NCCL "done" means the op is enqueued and ordered
    // (the compute stream will wait on its event), so the host never blocks on the GPU. Not called again
    // once it has reported done.
    int (*allreduce_test)(comm *c, comm_req_slot *r, int *done);
    // Optional (may be NULL): device timing marks of a launched request (see comm_req_marks).
    int (*req_marks)(comm *c, comm_req_slot *r, void **start, void **end);
    // Optional (may be NULL). comm.c stores cuda_stream/buffers_on_device in c after it returns ST_OK.
    int (*bind_stream)(comm *c, void *cuda_stream, int buffers_on_device);
    void (*destroy)(comm *c);
} comm_ops;

struct comm {
    const comm_ops *ops;
    void *impl;              // backend-private state
    comm_info info;
    MPI_Comm world;          // a dup of MPI_COMM_WORLD
    MPI_Comm node;           // ranks on this host (MPI_Comm_split_type SHARED)
    double timeout_s;
    int owns_mpi;            // comm_init called MPI_Init_thread
    void *cuda_stream;       // compute stream (nccl), NULL for host buffers
    int buffers_on_device;
    comm_req_slot reqs[COMM_MAX_REQS];
    // Arrival board for the watchdog (comm.c): every collective on `world` is numbered in call order (the same
    // on every rank); each rank publishes how many it has entered in a one-int64 RMA window that any rank can
    // read without the owner's help, so a timed-out rank can name the ranks that never arrived.
    long long n_coll;        // collectives entered on world so far
    MPI_Win arrive_win;      // MPI_WIN_NULL when RMA is unavailable (the message then says so)
    long long *arrive;       // this rank's published n_coll (window memory)
    int arrive_stuck;        // a read of the board never completed: leave the window alone at tear-down
    char last_label[64];     // label of the last async all-reduce launched (step context for host collectives)
    char (*hosts)[64];       // every rank's host, gathered at set-up: the watchdog names where a rank runs
};

// MPI calls on comm's communicators return codes (MPI_ERRORS_RETURN). MPI_TRY turns a failure into
// ERR(ST_COMM or ST_RUNTIME, "rank R (host): file:line: MPI_Xxx failed: <MPI_Error_string>").
int comm_mpi_error(int rc, const char *file, int line, const char *call);
#define MPI_TRY(call)                                                                                      \
    do {                                                                                                   \
        int mpi_rc__ = (call);                                                                             \
        if (mpi_rc__ != MPI_SUCCESS) return comm_mpi_error(mpi_rc__, __FILE__, __LINE__, #call);           \
    } while (0)

// Backend constructors (fill c->ops and c->impl; c->info/world/node are already set).
int comm_mpi_create(comm *c);
int comm_nccl_create(comm *c);  // only with DDP_HAVE_CUDA

#ifdef __cplusplus
}
#endif
