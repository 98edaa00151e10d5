// comm.h — the communication layer: one interface, a table of functions behind an opaque handle.
//
// Backends: "mpi" (the process group's all-reduce on host memory; GPU buffers are staged through host memory
// on a copy stream) and "nccl" (ncclAllReduce with ncclAvg on its own CUDA stream, ordered after the compute
// stream by events). Under both is the process group (comm_world.h): MPI, which launches the job, broadcasts
// the NCCL unique id and reduces metrics; or, in a build without MPI (TRAINER_MPI=OFF), one process alone.
//
// Asynchronous all-reduce: comm_allreduce_avg_async launches the average of buf[0..n) over all ranks, in
// place, and returns a request slot. comm_test/comm_progress move it on (MPI needs these calls to progress a
// non-blocking collective); comm_wait blocks until done or until the watchdog timeout, which is an error
// naming the request's label (e.g. "step 12 bucket 3") and the ranks that have not arrived.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct comm comm;

typedef struct comm_info {
    int rank, world;
    int local_rank, local_world;   // from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)
    char host[64];
} comm_info;

#define COMM_MAX_REQS 256
// Request slots a caller keeps free for the blocking all-reduces (comm_allreduce_avg: sync batch norm's, one at
// a time) issued while its buckets are in flight: buckets may use at most COMM_MAX_REQS - COMM_RESERVED_REQS.
#define COMM_RESERVED_REQS 8

// Start the process group (MPI_Init_thread, unless MPI is already initialised; nothing without MPI) and set
// g_rank and g_world. Once per process, before comm_create.
int comm_world_init(int *argc, char ***argv);
int comm_world_finalize(void);   // MPI_Finalize (no-op when it already ran or without MPI)
int comm_world_is_mpi(void);     // 1 when this build's process group is MPI (0: TRAINER_MPI=OFF, one process)

#define COMM_DEFAULT_TIMEOUT_S 300.0  // parallel.comm_timeout_s's default, and the bound before a config is read

// The communicators on the started group, without a backend yet (host collectives work). timeout_s: the
// watchdog for every wait and collective. Sets g_rank, g_world, g_host. Collective; bounded by the deadline.
int comm_open(comm **out, double timeout_s);
// Start the all-reduce backend ("mpi" or "nccl") on an open comm. Collective.
int comm_start(comm *c, const char *backend);
// comm_open + comm_start.
int comm_create(comm **out, const char *backend, double timeout_s);
const comm_info *comm_get_info(const comm *c);
const char *comm_backend_name(const comm *c);

// What a backend can do (flags, so callers never compare names):
enum {
    COMM_CAP_HOST_PROGRESS = 1,  // the reduction advances only while the host tests it (poll during backward)
    COMM_CAP_CAPTURE = 2,        // launches are stream work that a CUDA graph capture can hold
    COMM_CAP_COMPRESS16 = 4,     // comm_set_compress takes COMM_COMPRESS_BF16 and _FP16
    COMM_CAP_LANES = 8,          // lane 1 of comm_allreduce_avg_async_lane is ordered apart from lane 0 (comm_lanes)
};
unsigned comm_caps(const comm *c);

// For the nccl backend: the CUDA compute stream to order against (set before the first all-reduce).
// buffers_on_device: 1 when the all-reduce buffers are device memory (mpi stages them through the host).
int comm_bind_stream(comm *c, void *cuda_stream, int buffers_on_device);

// Gradients on the wire (parallel.compress): what comm_allreduce_avg_async sends from now on. The buffers stay
// float32; each rank casts its values, divided by the world size, to 16 bits, the transport sums them in 16 bits
// (float32 arithmetic, one rounding to 16 bits per hop), and the sum is cast back into the buffer. bf16 has
// float32's range; fp16 is scaled by powers of two so that nothing finite overflows (comm_half.h; the nccl
// backend agrees on one scale per bucket with a max all-reduce in stream order). Every rank receives the same
// values. comm_allreduce_avg (sync batch norm's statistics) stays float32. Every rank must set the same mode at
// the same point of its program (a request keeps the mode it was launched with); ST_INPUT when the backend lacks
// COMM_CAP_COMPRESS16.
enum { COMM_COMPRESS_NONE = 0, COMM_COMPRESS_BF16, COMM_COMPRESS_FP16 };
int comm_set_compress(comm *c, int mode);
int comm_get_compress(const comm *c);
const char *comm_compress_name(int mode);  // "none", "bf16", "fp16"

// Hierarchical all-reduce (parallel.hierarchy; Horovod's): each node's ranks sum into their leader (node rank 0),
// the leaders all-reduce across nodes, and each leader broadcasts the result to its node -- mpi: MPI_Ireduce on
// the node -> MPI_Iallreduce among leaders -> MPI_Ibcast on the node, moved on by comm_test/comm_progress/comm_wait
// in the same order on every rank; nccl: ncclReduce, ncclAllReduce, ncclBroadcast on the comm stream. The average
// is taken once (the sum times 1/world; compressed values are divided before the cast, as flat ones are) and
// every rank receives the same values. The result equals the flat all-reduce's up to float32 summation order.
// COMM_HIERARCHY_AUTO groups by node when there is more than one node and some node has several ranks; NODE
// with one node, or one rank per node, runs flat too (comm_hierarchy_line says so). Nodes of different sizes
// work. fake_nodes > 0 (a test hook): node k is ranks [k*world/N, (k+1)*world/N) whatever their hosts.
// Collective; once, with nothing in flight, before the all-reduces it should apply to. comm_allreduce_avg (sync
// batch norm) stays flat.
enum { COMM_HIERARCHY_FLAT = 0, COMM_HIERARCHY_NODE, COMM_HIERARCHY_AUTO };
int comm_set_hierarchy(comm *c, int mode, int fake_nodes);
int comm_hierarchy(const comm *c);  // what runs: COMM_HIERARCHY_FLAT or _NODE
// What runs, as a start-up line ("hierarchy: node (2 nodes x 2 ranks; leaders all-reduce across nodes)", or why
// it is flat); "" when flat was asked for.
const char *comm_hierarchy_line(const comm *c);

// ---- data-parallel all-reduce (float32 buffers, average over ranks, in place; 16 bits on the wire after
// comm_set_compress)
int comm_allreduce_avg_async(comm *c, float *buf, size_t n, const char *label, int *req);
// Gradients that are bf16 already (uint16_t bit patterns: under net.precision=bf16 with compress=bf16 the backward
// writes them so, docs/precision.md): the sum of wire[0..n) over the ranks, in bf16 on the wire exactly as a
// COMM_COMPRESS_BF16 request sums (float32 arithmetic, one rounding to bf16 per addition), times 1/world in float32
// into out[0..n) (float32). No cast before the transport. wire is the transport's until the request is done: it
// ends up holding the bf16 sum (host buffers, and nccl), except that mpi's staged device buffers sum a host copy
// and leave it as it was. Both buffers in the same memory as the float32 all-reduces' (host, or device after
// comm_bind_stream(.., 1)). Needs COMM_CAP_COMPRESS16, whatever comm_set_compress says; hierarchical when
// comm_set_hierarchy grouped by node (lane 0). Tested, waited on and timed like the others' requests. With a
// power-of-two world the result is bit for bit comm_allreduce_avg_async's under COMM_COMPRESS_BF16 of the float32
// values the bf16 ones were rounded from (scaling by 2^-k commutes with rounding, away from bf16's subnormals and
// overflow), tested.
int comm_allreduce_avg_bf16_async(comm *c, uint16_t *wire, float *out, size_t n, const char *label, int *req);
// Lanes: every rank must launch the all-reduces of one lane in the same order, but not those of two lanes: lane 0
// (comm_allreduce_avg_async, and every other collective) and lane 1 are matched apart (mpi: lane 1 is a
// communicator of its own), so a rank may launch lane 1's next all-reduce whenever its own view of the timing says
// (PowerSGD's Q as soon as this rank has its P: src/train_ddp.c). comm_lanes says how many lanes are apart: 2 with
// COMM_CAP_LANES and flat all-reduces; 1 otherwise -- nccl (one stream, launches never ordered by the host's
// view), or hierarchical requests (their stages are ordered by launch over all requests, comm_mpi.c) -- and then
// lane 1 is lane 0: the caller must launch in one order over both, as with comm_allreduce_avg_async alone.
#define COMM_LANES 2
int comm_allreduce_avg_async_lane(comm *c, int lane, float *buf, size_t n, const char *label, int *req);
int comm_lanes(const comm *c);
// The same, waited on at once (sync BN's statistics in the middle of forward and backward): in stream order
// for nccl (the compute stream waits, the host does not: capturable), on the host for mpi (not capturable with
// device buffers: the COMM_CAP_CAPTURE flag says which).
int comm_allreduce_avg(comm *c, float *buf, size_t n, const char *label);
int comm_test(comm *c, int req, int *done);
int comm_wait(comm *c, int req);
int comm_progress(comm *c);        // test every outstanding request once (cheap; no-op when none)
// Device timing of a launched all-reduce (nccl): marks recorded on the comm stream when the all-reduce starts
// and when it ends -- CUDA events, measurable with the CUDA backend's mark_elapsed (backend.h). Backends that
// reduce on the host (mpi) give NULL for both: time those with the host clock. Valid until the slot is reused.
int comm_req_marks(comm *c, int req, void **start, void **end);
int comm_outstanding(const comm *c);
// Errors the backend learns of outside any call (NCCL's asynchronous errors, e.g. a peer that died during a
// replayed CUDA graph): ST_COMM naming rank and host. Cheap; call it from every bounded wait.
int comm_check(comm *c);
// Forget request req without waiting: its launch went into a CUDA graph capture that was discarded, so it
// never runs.
int comm_discard(comm *c, int req);

// ---- host-side collectives for setup and metrics (blocking, MPI, on host memory)
int comm_bcast(comm *c, void *buf, size_t bytes, int root);
int comm_allreduce_sum_f64(comm *c, double *buf, int n);
int comm_allreduce_max_f64(comm *c, double *buf, int n);
int comm_allreduce_max_i32(comm *c, int32_t *buf, int n);
int comm_allgather_u64(comm *c, uint64_t value, uint64_t *all /* world entries */);
int comm_barrier(comm *c);
// A barrier with its own deadline and description, for a wait known to be long (rank 0 writing a checkpoint):
// on timeout the message says `what` and names the ranks that did not arrive.
int comm_barrier_within(comm *c, double timeout_s, const char *what);
// Every rank must hold the same text (e.g. its effective configuration; lines starting with '#' are ignored).
// ST_OK when all do; otherwise ST_INPUT on every rank, with one message naming the first differing line
// ("section.key") of the lowest differing rank next to rank 0's, and the ranks that differ.
int comm_agree_text(comm *c, const char *text, const char *what);
// Agree on a status: every rank passes its own; returns the max over ranks (0 when all are OK), and in
// *first_bad the lowest rank with a non-zero status (-1 when none). For collective error handling.
int comm_agree_status(comm *c, int status, int *first_bad);
// comm_agree_status for a program's phases: returns ST_OK when every rank passed ST_OK. Otherwise the failure
// is collective (err_mark_collective: every rank stops cleanly with the same code, and the lowest failing rank
// is the origin that reports its own message; the others say "rank R failed during <during> (see its
// message)"), unless the agreement itself failed (a peer is stuck): then a local ST_COMM, to abort the job.
int comm_agree(comm *c, int status, const char *during);

// Guard for calls that block inside MPI and cannot be polled: if not disarmed within `seconds`, the process
// prints "<what> did not complete within …" and exits ST_COMM (the launcher then ends the job). One at a time.
void comm_deadline_arm(double seconds, const char *what);
void comm_deadline_disarm(void);

// After a communication failure (a dead or stuck peer, a watchdog timeout): end every collective in flight and
// retire the backend's communicator (NCCL: ncclCommAbort), so that freeing device memory and syncing streams
// afterwards cannot wait forever on a kernel that waits for the peer. Idempotent; later launches are refused.
void comm_stop(comm *c);
int comm_stopped(const comm *c);  // 1 once comm_stop ran (tests)

// Kill the whole job (MPI_Abort) with this exit code; never returns.
void comm_abort(comm *c, int code) __attribute__((noreturn));
int comm_finalize(comm *c);  // destroys c and finalises the group
void comm_destroy(comm *c);  // destroys c, leaves the group initialised (tests)
