// comm_world_mpi.c — the process group on MPI (comm_world.h): a dup of MPI_COMM_WORLD with MPI_ERRORS_RETURN
// (and a second dup for lane 1's all-reduces), its per-host split, non-blocking collectives, and the arrival board that lets the watchdog name missing ranks.
//
// Every MPI call on our communicators returns a code, so a failure becomes a status with rank, host and
// file:line, and main decides whether to abort the job.
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mpi.h>

#include "comm_half.h"
#include "comm_impl.h"
#include "common.h"

_Static_assert(sizeof(MPI_Request) <= sizeof(world_req), "world_req too small for an MPI_Request");
#define REQ(r) ((MPI_Request *)(void *)(r)->opaque)

typedef struct mpi_world {
    MPI_Comm world;          // a dup of MPI_COMM_WORLD
    MPI_Comm lane1;          // another dup: lane 1's all-reduces (world_iallreduce_lane), matched in an order of their own
    MPI_Comm node;           // ranks on this host (MPI_Comm_split_type SHARED)
    // Hierarchical all-reduce (world_nodes_open; MPI_COMM_NULL until then): a node's reduce and broadcast each
    // on a communicator of its own, and the leaders (MPI_COMM_NULL on the other ranks)
    MPI_Comm node_reduce, node_bcast, leaders;
    int node_rank;
    // Arrival board: each rank publishes how many collectives it has entered in a one-int64 RMA window that
    // any rank can read without the owner's help.
    MPI_Win arrive_win;      // MPI_WIN_NULL when RMA is unavailable (the message then says so)
    long long *arrive;       // this rank's published count (window memory)
    int arrive_stuck;        // a read of the board never completed: leave the window alone at tear-down
    char (*hosts)[64];       // every rank's host, gathered at set-up: the watchdog names where a rank runs
    // 16-bit gradients (parallel.compress): their datatypes and commutative sums (MPI_DATATYPE_NULL/MPI_OP_NULL
    // until the first use)
    MPI_Datatype bf16_type, f16_block_type;
    MPI_Op bf16_sum, f16_block_sum;
} mpi_world;

// ---------------------------------------------------------------------------------------------------------
// Errors

// Argument-class errors are our own bugs (ST_RUNTIME); anything else means the job's communication failed.
static int mpi_error_status(int rc) {
    int cls = MPI_ERR_OTHER;
    if (MPI_Error_class(rc, &cls) != MPI_SUCCESS) return ST_COMM;
    switch (cls) {
    case MPI_ERR_ARG: case MPI_ERR_BUFFER: case MPI_ERR_COUNT: case MPI_ERR_TYPE: case MPI_ERR_ROOT:
    case MPI_ERR_OP: case MPI_ERR_COMM: case MPI_ERR_REQUEST: case MPI_ERR_RANK: case MPI_ERR_NO_MEM:
        return ST_RUNTIME;
    default:
        return ST_COMM;
    }
}

static int mpi_error(int rc, const char *file, int line, const char *call) {
    char text[MPI_MAX_ERROR_STRING] = "unknown MPI error";
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error code %d", rc);
    // Name only the function: the argument list is in the source at file:line.
    int name_len = (int)strcspn(call, "(");
    return err_set(mpi_error_status(rc), file, line, "rank %d (%s): %s:%d: MPI call %.*s failed: %s", g_rank,
                   g_host, file, line, name_len, call, text);
}

#define MPI_TRY(call)                                                                                      \
    do {                                                                                                   \
        int mpi_rc__ = (call);                                                                             \
        if (mpi_rc__ != MPI_SUCCESS) return mpi_error(mpi_rc__, __FILE__, __LINE__, #call);                \
    } while (0)

// ---------------------------------------------------------------------------------------------------------
// Process start-up and end

static void host_name(char *out, size_t size);

int world_has_mpi(void) { return 1; }

int world_started(void) {
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    return inited && !finalized;
}

int world_init(int *argc, char ***argv, int *owns) {
    *owns = 0;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        // Open MPI's non-blocking all-reduce (coll/libnbc) picks, below 4 ranks, reduce-then-broadcast: the whole
        // vector crosses the link twice, one way after the other. The ring sends each half once each way, at
        // the same time: half the time on a slow link (a 44.7 MB gradient at 20 Mbit/s between 2 nodes: 37.7 s
        // per step, against 20.9 s for PyTorch's gloo ring). At 2 ranks both add each value once (a + b), so
        // results are unchanged. A user's own setting of the variable wins (overwrite 0).
        setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", 0);
        // One thread calls MPI; FUNNELED leaves room for helper threads (BLAS) that never touch it.
        int provided = 0;
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return ERR(ST_RUNTIME, "rank ? (%s): MPI_Init_thread failed", g_host);
        *owns = 1;
    }
    // Errors come back as codes everywhere, also from a request of a non-blocking collective that MPI reports
    // on the world communicator (never MPI_ERRORS_ARE_FATAL's abort with MPI's own message).
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_world);
    host_name(g_host, sizeof g_host);
    return ST_OK;
}

int world_finalize(void) {
    if (world_started() && MPI_Finalize() != MPI_SUCCESS)
        return ERR(ST_RUNTIME, "rank %d (%s): MPI_Finalize failed", g_rank, g_host);
    return ST_OK;
}

void world_abort(int code) {
    fflush(stdout);
    fflush(stderr);
    // MPI_COMM_WORLD, not our dup: the whole job must go even if the comm is half-built.
    if (world_started()) MPI_Abort(MPI_COMM_WORLD, code);
    _exit(code);
}

// ---------------------------------------------------------------------------------------------------------
// Per-comm state

static void host_name(char *out, size_t size) {
    char name[MPI_MAX_PROCESSOR_NAME] = "";
    int len = 0;
    if (MPI_Get_processor_name(name, &len) != MPI_SUCCESS || len <= 0) {
        if (gethostname(name, sizeof name) != 0) snprintf(name, sizeof name, "unknown-host");
        name[sizeof name - 1] = '\0';
    }
    snprintf(out, size, "%s", name);
}

static int comms_create(mpi_world *m, comm_info *ci) {
    MPI_TRY(MPI_Comm_dup(MPI_COMM_WORLD, &m->world));
    MPI_TRY(MPI_Comm_set_errhandler(m->world, MPI_ERRORS_RETURN));
    MPI_TRY(MPI_Comm_dup(MPI_COMM_WORLD, &m->lane1));
    MPI_TRY(MPI_Comm_set_errhandler(m->lane1, MPI_ERRORS_RETURN));
    MPI_TRY(MPI_Comm_rank(m->world, &ci->rank));
    MPI_TRY(MPI_Comm_size(m->world, &ci->world));
    MPI_TRY(MPI_Comm_split_type(m->world, MPI_COMM_TYPE_SHARED, ci->rank, MPI_INFO_NULL, &m->node));
    MPI_TRY(MPI_Comm_set_errhandler(m->node, MPI_ERRORS_RETURN));
    MPI_TRY(MPI_Comm_rank(m->node, &ci->local_rank));
    MPI_TRY(MPI_Comm_size(m->node, &ci->local_world));
    // Best effort: without it the watchdog names ranks without their hosts.
    m->hosts = calloc((size_t)ci->world, sizeof *m->hosts);
    if (m->hosts && MPI_Allgather(ci->host, sizeof *m->hosts, MPI_CHAR, m->hosts, sizeof *m->hosts, MPI_CHAR,
                                  m->world) != MPI_SUCCESS) {
        free(m->hosts);
        m->hosts = NULL;
    }
    return ST_OK;
}

static void arrivals_create(mpi_world *m) {
    long long *base = NULL;
    // Best effort: without RMA the watchdog still fires; its message then cannot name the missing ranks.
    if (MPI_Win_allocate((MPI_Aint)sizeof *base, (int)sizeof *base, MPI_INFO_NULL, m->world, &base,
                         &m->arrive_win) != MPI_SUCCESS) {
        m->arrive_win = MPI_WIN_NULL;
        return;
    }
    MPI_Win_set_errhandler(m->arrive_win, MPI_ERRORS_RETURN);
    *(volatile long long *)base = 0;
    m->arrive = base;
}

void world_close(comm *c) {
    mpi_world *m = c->w;
    if (m == NULL) return;
    // Best effort: at tear-down there is nobody left to report a failure to.
    // A board read that never completed holds the window in an access epoch: freeing it would block.
    if (m->arrive_win != MPI_WIN_NULL && !m->arrive_stuck) MPI_Win_free(&m->arrive_win);
    if (m->bf16_sum != MPI_OP_NULL) MPI_Op_free(&m->bf16_sum);
    if (m->f16_block_sum != MPI_OP_NULL) MPI_Op_free(&m->f16_block_sum);
    if (m->bf16_type != MPI_DATATYPE_NULL) MPI_Type_free(&m->bf16_type);
    if (m->f16_block_type != MPI_DATATYPE_NULL) MPI_Type_free(&m->f16_block_type);
    world_nodes_close(c);
    if (m->node != MPI_COMM_NULL) MPI_Comm_free(&m->node);
    if (m->lane1 != MPI_COMM_NULL) MPI_Comm_free(&m->lane1);
    if (m->world != MPI_COMM_NULL) MPI_Comm_free(&m->world);
    free(m->hosts);
    free(m);
    c->w = NULL;
}

int world_open(comm *c) {
    if (!world_started()) return ERR(ST_RUNTIME, "comm_create: MPI is not initialised (call comm_world_init)");
    mpi_world *m = calloc(1, sizeof *m);
    TRY_ALLOC(m);
    m->world = m->lane1 = m->node = MPI_COMM_NULL;
    m->node_reduce = m->node_bcast = m->leaders = MPI_COMM_NULL;
    m->arrive_win = MPI_WIN_NULL;
    m->bf16_type = m->f16_block_type = MPI_DATATYPE_NULL;
    m->bf16_sum = m->f16_block_sum = MPI_OP_NULL;
    c->w = m;
    host_name(c->info.host, sizeof c->info.host);
    snprintf(g_host, sizeof g_host, "%s", c->info.host);
    int st = comms_create(m, &c->info);
    if (st != ST_OK) {
        world_close(c);
        return st;
    }
    arrivals_create(m);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Collectives

static MPI_Datatype mpi_type(world_type t) {
    switch (t) {
    case WORLD_F32: return MPI_FLOAT;
    case WORLD_F64: return MPI_DOUBLE;
    case WORLD_I32: return MPI_INT32_T;
    default: return MPI_UINT64_T;
    }
}

int world_ibcast(comm *c, void *buf, int bytes, int root, world_req *r) {
    mpi_world *m = c->w;
    MPI_TRY(MPI_Ibcast(buf, bytes, MPI_BYTE, root, m->world, REQ(r)));
    return ST_OK;
}

// ---- 16-bit sums: user-defined operators (MPI has no 16-bit float types), each hop in float32, rounded once

static void bf16_sum(void *in, void *inout, int *len, MPI_Datatype *type) {
    (void)type;
    const uint16_t *a = in;
    uint16_t *b = inout;
    for (int i = 0; i < *len; i++) b[i] = half_bf16_from_f32(half_bf16_to_f32(a[i]) + half_bf16_to_f32(b[i]));
}

static void f16_block_sum(void *in, void *inout, int *len, MPI_Datatype *type) {
    (void)type;
    const half_block *a = in;
    half_block *b = inout;
    for (int i = 0; i < *len; i++) half_block_add(&a[i], &b[i]);
}

// The datatype and operator of a 16-bit type, made at first use (local calls: not collective).
static int half_type_op(mpi_world *m, world_type t, MPI_Datatype *type, MPI_Op *op) {
    const int bf16 = t == WORLD_BF16;
    MPI_Datatype *ty = bf16 ? &m->bf16_type : &m->f16_block_type;
    MPI_Op *o = bf16 ? &m->bf16_sum : &m->f16_block_sum;
    if (*ty == MPI_DATATYPE_NULL) {
        MPI_Datatype made;
        MPI_TRY(MPI_Type_contiguous(bf16 ? (int)sizeof(uint16_t) : (int)sizeof(half_block), MPI_BYTE, &made));
        MPI_TRY(MPI_Type_commit(&made));
        *ty = made;
    }
    if (*o == MPI_OP_NULL) MPI_TRY(MPI_Op_create(bf16 ? bf16_sum : f16_block_sum, 1, o));
    *type = *ty;
    *op = *o;
    return ST_OK;
}

int world_iallreduce(comm *c, void *buf, int n, world_type t, world_op op, world_req *r) {
    return world_iallreduce_lane(c, 0, buf, n, t, op, r);
}

int world_iallreduce_lane(comm *c, int lane, void *buf, int n, world_type t, world_op op, world_req *r) {
    mpi_world *m = c->w;
    if (lane != 0 && lane != 1) return ERR(ST_RUNTIME, "rank %d (%s): all-reduce on lane %d (want 0 or 1)", g_rank, g_host, lane);
    MPI_Datatype type = MPI_DATATYPE_NULL;
    MPI_Op mop = op == WORLD_SUM ? MPI_SUM : MPI_MAX;
    if (t == WORLD_BF16 || t == WORLD_F16_BLOCKS) {
        if (op != WORLD_SUM) return ERR(ST_RUNTIME, "rank %d (%s): a 16-bit all-reduce can only sum", g_rank, g_host);
        TRY(half_type_op(m, t, &type, &mop));
    } else {
        type = mpi_type(t);
    }
    MPI_TRY(MPI_Iallreduce(MPI_IN_PLACE, buf, n, type, mop, lane ? m->lane1 : m->world, REQ(r)));
    return ST_OK;
}

// ---- the hierarchical all-reduce's communicators and steps

void world_nodes_close(comm *c) {
    mpi_world *m = c->w;
    if (m == NULL) return;
    if (m->leaders != MPI_COMM_NULL) MPI_Comm_free(&m->leaders);
    if (m->node_bcast != MPI_COMM_NULL) MPI_Comm_free(&m->node_bcast);
    if (m->node_reduce != MPI_COMM_NULL) MPI_Comm_free(&m->node_reduce);
}

static int comm_errors_return(MPI_Comm cm) {
    MPI_TRY(MPI_Comm_set_errhandler(cm, MPI_ERRORS_RETURN));
    return ST_OK;
}

int world_nodes_open(comm *c, int fake_nodes, world_nodes *out) {
    mpi_world *m = c->w;
    const int rank = c->info.rank, world = c->info.world;
    memset(out, 0, sizeof *out);
    world_nodes_close(c);
    if (fake_nodes > 0)
        MPI_TRY(MPI_Comm_split(m->world, (int)((long long)rank * fake_nodes / world), rank, &m->node_reduce));
    else
        MPI_TRY(MPI_Comm_dup(m->node, &m->node_reduce));
    TRY(comm_errors_return(m->node_reduce));
    MPI_TRY(MPI_Comm_dup(m->node_reduce, &m->node_bcast));
    TRY(comm_errors_return(m->node_bcast));
    MPI_TRY(MPI_Comm_rank(m->node_reduce, &out->node_rank));
    MPI_TRY(MPI_Comm_size(m->node_reduce, &out->node_size));
    m->node_rank = out->node_rank;
    MPI_TRY(MPI_Comm_split(m->world, out->node_rank == 0 ? 0 : MPI_UNDEFINED, rank, &m->leaders));
    int v[2] = {0, 0};  // node, nodes: the leader knows them, and tells its node
    if (m->leaders != MPI_COMM_NULL) {
        TRY(comm_errors_return(m->leaders));
        MPI_TRY(MPI_Comm_rank(m->leaders, &v[0]));
        MPI_TRY(MPI_Comm_size(m->leaders, &v[1]));
    }
    MPI_TRY(MPI_Bcast(v, 2, MPI_INT, 0, m->node_reduce));
    out->node = v[0], out->nodes = v[1];
    int sizes[2] = {-out->node_size, out->node_size};
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, sizes, 2, MPI_INT, MPI_MAX, m->world));
    out->size_min = -sizes[0], out->size_max = sizes[1];
    return ST_OK;
}

// A sum's datatype and operator: float32's, or a 16-bit type's own.
static int sum_type_op(mpi_world *m, world_type t, MPI_Datatype *type, MPI_Op *op) {
    if (t == WORLD_BF16 || t == WORLD_F16_BLOCKS) return half_type_op(m, t, type, op);
    if (t != WORLD_F32) return ERR(ST_RUNTIME, "rank %d (%s): a hierarchical sum takes float32 or 16 bits", g_rank, g_host);
    *type = MPI_FLOAT;
    *op = MPI_SUM;
    return ST_OK;
}

static int nodes_check(const mpi_world *m, MPI_Comm cm, const char *what) {
    if (cm == MPI_COMM_NULL)
        return ERR(ST_RUNTIME, "rank %d (%s): %s without its communicator (world_nodes_open first%s)", g_rank, g_host,
                   what, m->node_reduce != MPI_COMM_NULL ? "; only leaders join the leaders' sum" : "");
    return ST_OK;
}

int world_ireduce_node(comm *c, void *buf, int n, world_type t, world_req *r) {
    mpi_world *m = c->w;
    TRY(nodes_check(m, m->node_reduce, "the node's reduce"));
    MPI_Datatype type;
    MPI_Op op;
    TRY(sum_type_op(m, t, &type, &op));
    if (m->node_rank == 0) MPI_TRY(MPI_Ireduce(MPI_IN_PLACE, buf, n, type, op, 0, m->node_reduce, REQ(r)));
    else MPI_TRY(MPI_Ireduce(buf, NULL, n, type, op, 0, m->node_reduce, REQ(r)));
    return ST_OK;
}

int world_iallreduce_leaders(comm *c, void *buf, int n, world_type t, world_req *r) {
    mpi_world *m = c->w;
    TRY(nodes_check(m, m->leaders, "the leaders' sum"));
    MPI_Datatype type;
    MPI_Op op;
    TRY(sum_type_op(m, t, &type, &op));
    MPI_TRY(MPI_Iallreduce(MPI_IN_PLACE, buf, n, type, op, m->leaders, REQ(r)));
    return ST_OK;
}

int world_ibcast_node(comm *c, void *buf, int n, world_type t, world_req *r) {
    mpi_world *m = c->w;
    TRY(nodes_check(m, m->node_bcast, "the node's broadcast"));
    MPI_Datatype type;
    MPI_Op op;
    TRY(sum_type_op(m, t, &type, &op));
    MPI_TRY(MPI_Ibcast(buf, n, type, 0, m->node_bcast, REQ(r)));
    return ST_OK;
}

int world_iallgather(comm *c, const void *mine, void *all, int n, world_type t, world_req *r) {
    mpi_world *m = c->w;
    MPI_TRY(MPI_Iallgather(mine, n, mpi_type(t), all, n, mpi_type(t), m->world, REQ(r)));
    return ST_OK;
}

int world_ibarrier(comm *c, world_req *r) {
    mpi_world *m = c->w;
    MPI_TRY(MPI_Ibarrier(m->world, REQ(r)));
    return ST_OK;
}

int world_test(comm *c, world_req *r, int *done) {
    (void)c;
    *done = 0;
    MPI_TRY(MPI_Test(REQ(r), done, MPI_STATUS_IGNORE));
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Arrival board: collective k has been entered by rank p iff p's published count >= k.

void world_publish(comm *c, long long n_entered) {
    mpi_world *m = c->w;
    if (m && m->arrive) *(volatile long long *)m->arrive = n_entered;
}

#define ARRIVALS_READ_S 2.0   // a rank whose count cannot be read within this is reported as not answering
#define ARRIVALS_LIST_MAX 16  // ranks named in a message; then a count

static void rank_list_add(char *out, size_t n, int *listed, int rank) {
    size_t used = strlen(out);
    if (*listed < ARRIVALS_LIST_MAX && used < n)
        snprintf(out + used, n - used, "%s%d", *listed ? ", " : "", rank);
    else if (*listed == ARRIVALS_LIST_MAX && used < n)
        snprintf(out + used, n - used, ", ...");
    ++*listed;
}

// " (on host n2)", " (on hosts n2, n3)": where the listed ranks run, in the same order.
static void hosts_list_add(const mpi_world *m, char *out, size_t n, int listed, int rank) {
    size_t used = strlen(out);
    if (!m->hosts || listed > ARRIVALS_LIST_MAX || used + 2 >= n) return;
    if (listed == ARRIVALS_LIST_MAX) {
        snprintf(out + used - 1, n - used + 1, ", ...)");
        return;
    }
    if (listed == 0) snprintf(out, n, " (on host %.40s)", m->hosts[rank]);
    else {
        if (listed == 1) {  // "host" -> "hosts"
            char *h = strstr(out, " host ");
            if (h) memmove(h + 6, h + 5, strlen(h + 5) + 1), h[5] = 's';
            used = strlen(out);
        }
        snprintf(out + used - 1, n - used + 1, ", %.40s)", m->hosts[rank]);
    }
}

// Read every rank's count (passive-target gets, which need nothing from the owner on shared memory or RDMA
// networks) and describe who has not entered collective seq. Bounded: a get that does not complete within
// ARRIVALS_READ_S leaves its rank named as not answering.
void world_describe_missing(comm *c, long long seq, char *out, size_t n) {
    mpi_world *m = c->w;
    int w = c->info.world, me = c->info.rank;
    long long *vals = calloc((size_t)w, sizeof *vals);
    MPI_Request *reqs = malloc((size_t)w * sizeof *reqs);
    int ok = vals && reqs && m && m->arrive_win != MPI_WIN_NULL && !m->arrive_stuck &&
             MPI_Win_lock_all(MPI_MODE_NOCHECK, m->arrive_win) == MPI_SUCCESS;
    if (!ok) {
        snprintf(out, n, "which ranks did not arrive is unknown (no RMA window)");
        free(vals), free(reqs);
        return;
    }
    int pending = 0;
    for (int p = 0; p < w; p++) {
        reqs[p] = MPI_REQUEST_NULL;
        if (p == me) vals[p] = c->n_coll;
        else if (MPI_Rget(&vals[p], 1, MPI_LONG_LONG, p, 0, 1, MPI_LONG_LONG, m->arrive_win, &reqs[p]) == MPI_SUCCESS)
            pending++;
        else
            vals[p] = -1, reqs[p] = MPI_REQUEST_NULL;
    }
    double t0 = now_s();
    while (pending > 0 && now_s() - t0 < ARRIVALS_READ_S) {
        for (int p = 0; p < w; p++) {
            int flag = 0;
            if (reqs[p] != MPI_REQUEST_NULL && MPI_Test(&reqs[p], &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag)
                pending--;
        }
        if (pending > 0) sched_yield();
    }
    if (pending == 0) MPI_Win_unlock_all(m->arrive_win);
    else m->arrive_stuck = 1;
    char missing[256] = "", silent[256] = "", missing_at[1024] = "", silent_at[1024] = "";
    int n_missing = 0, n_silent = 0;
    for (int p = 0; p < w; p++) {
        if (reqs[p] != MPI_REQUEST_NULL || vals[p] < 0) {
            hosts_list_add(m, silent_at, sizeof silent_at, n_silent, p);
            rank_list_add(silent, sizeof silent, &n_silent, p);
        } else if (vals[p] < seq) {
            hosts_list_add(m, missing_at, sizeof missing_at, n_missing, p);
            rank_list_add(missing, sizeof missing, &n_missing, p);
        }
    }
    if (n_missing == 0 && n_silent == 0) snprintf(out, n, "every rank has entered it (the network or MPI is stuck)");
    int used = n_missing ? snprintf(out, n, "%s %s did not arrive%s", n_missing > 1 ? "ranks" : "rank", missing,
                                    missing_at) : 0;
    if (n_silent && used >= 0 && (size_t)used < n)
        snprintf(out + used, n - (size_t)used, "%s%s %s did not answer%s", used ? "; " : "",
                 n_silent > 1 ? "ranks" : "rank", silent, silent_at);
    free(vals), free(reqs);
}
