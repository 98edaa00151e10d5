// comm_impl.h — private to comm/: the backend table behind the opaque `comm` handle.
#pragma once
// comm_nccl.cu is C++: C linkage for comm.h, common.h and everything declared here (include this header before
// common.h there).
#ifdef __cplusplus
extern "C" {
#endif

#include "comm.h"
#include "comm_world.h"
#include "common.h"

typedef struct comm_req_slot {
    int in_use, done;
    float *buf;          // user buffer (host or device): the float32 values, or a bf16 request's average
    uint16_t *src16;     // comm_allreduce_avg_bf16_async's bf16 values, summed in place (NULL for the others)
    size_t n;
    int compress;        // COMM_COMPRESS_*: what goes on the wire (the comm's setting at launch; none for sync BN)
    int hier;            // hierarchical (comm_set_hierarchy: node; the comm's setting at launch; flat for sync BN)
    int lane;            // 0, or 1 for an all-reduce matched apart from lane 0's (comm_lanes() == 2 at launch)
    double t_launch;     // now_s() at launch
    long long seq;       // its number among the collectives on world (comm.c's arrival board)
    char label[64];      // e.g. "step 12 bucket 3", for watchdog messages
    void *impl;          // backend-private per-request state; comm.c keeps it across reuses of the slot
                         // (the backend sets it in launch and frees what it owns in destroy)
} comm_req_slot;

typedef struct comm_ops {
    const char *name;
    unsigned caps;  // COMM_CAP_* (comm.h)
    // Launch the average of r->buf[0..r->n) over ranks, as r->compress says (with r->src16: of those bf16 values,
    // into r->buf); fill backend state in r->impl. Never called with n == 0.
    int (*allreduce_avg_launch)(comm *c, comm_req_slot *r);
    // Non-blocking completion check; sets *done. For NCCL "done" means the op is enqueued and ordered
    // (the compute stream will wait on its event), so the host never blocks on the GPU. Not called again
    // once it has reported done.
    int (*allreduce_test)(comm *c, comm_req_slot *r, int *done);
    // Optional (may be NULL): device timing marks of a launched request (see comm_req_marks).
    int (*req_marks)(comm *c, comm_req_slot *r, void **start, void **end);
    // Optional (may be NULL). comm.c stores cuda_stream/buffers_on_device in c after it returns ST_OK.
    int (*bind_stream)(comm *c, void *cuda_stream, int buffers_on_device);
    // Optional (may be NULL): errors the backend learns of outside any call (NCCL's asynchronous errors).
    int (*check)(comm *c);
    // Optional (may be NULL): forget a request whose launch went into a discarded CUDA graph capture.
    void (*discard)(comm *c, comm_req_slot *r);
    // Optional (may be NULL): after a communication failure, end every collective in flight at once (NCCL:
    // ncclCommAbort, whose kernels would otherwise spin on the device for a dead peer) and make the backend's
    // communicator unusable. What follows (freeing device memory, syncing streams, destroy) then cannot hang.
    void (*stop)(comm *c);
    void (*destroy)(comm *c);
    // Optional (may be NULL): set up hierarchical all-reduces over c->nodes (nccl: the node and leader
    // communicators). Collective; called once by comm_set_hierarchy when it groups by node.
    int (*hierarchy_start)(comm *c);
} comm_ops;

struct comm {
    const comm_ops *ops;
    int stopped;             // comm_stop ran: no further collective may be launched
    void *impl;              // backend-private state
    comm_info info;
    void *w;                 // the process group's state (comm_world.h)
    double timeout_s;
    void *cuda_stream;       // compute stream (nccl), NULL for host buffers
    int buffers_on_device;
    int compress;            // COMM_COMPRESS_* for comm_allreduce_avg_async (comm_set_compress)
    int hier;                // comm_allreduce_avg_async is hierarchical (comm_set_hierarchy grouped by node)
    int hier_set;            // comm_set_hierarchy ran
    world_nodes nodes;       // this rank's node (valid when hier)
    char hier_line[160];     // comm_hierarchy_line
    comm_req_slot reqs[COMM_MAX_REQS];
    // Every collective on the group is numbered in call order and the count is published (world_publish), so a
    // timed-out rank can name the ranks that never arrived. The numbering is the same on every rank for lane 0;
    // lane 1's all-reduces (comm_allreduce_avg_async_lane) are counted too, but launched at each rank's own time,
    // so between two collectives of lane 0 the counts may differ by lane 1's launches (see comm_arrive).
    long long n_coll;        // collectives entered so far
    char last_label[64];     // label of the last async all-reduce launched (step context for host collectives)
};

// A collective of the group, waited on like a bucket: bounded by the watchdog (comm.c).
int comm_host_wait(comm *c, world_req *r, long long seq, const char *what);
// Enter the next collective: its number, published for the watchdog.
long long comm_arrive(comm *c);

// Backend constructors (fill c->ops and c->impl; c->info/world/node are already set).
int comm_mpi_create(comm *c);
int comm_nccl_create(comm *c);  // only with DDP_HAVE_CUDA

#ifdef __cplusplus
}
#endif
