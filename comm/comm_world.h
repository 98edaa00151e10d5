// comm_world.h — private to comm/: the process group under the communication layer.
//
// Exactly one implementation is linked, chosen at build time (CMake TRAINER_MPI):
//   comm_world_mpi.c   MPI: any number of ranks, launched by mpirun/srun (or alone, as a singleton)
//   comm_world_self.c  one process and no MPI at all (TRAINER_MPI=OFF): every collective completes at once
// comm.c builds request slots, the watchdog and every collective the trainer uses on top of these calls;
// the all-reduce backends (comm_mpi.c, comm_nccl.cu) use them too, so none of comm/ but the MPI world names MPI.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct comm comm;

// A non-blocking collective in flight: the transport's request, kept opaque here.
typedef struct world_req {
    long long opaque[2];
} world_req;

// WORLD_BF16: bfloat16 values (uint16_t), summed in float32 and rounded back to 16 bits at every hop;
// WORLD_F16_BLOCKS: scaled half blocks (comm_half.h), the count in blocks. Both only with WORLD_SUM.
typedef enum { WORLD_F32, WORLD_F64, WORLD_I32, WORLD_U64, WORLD_BF16, WORLD_F16_BLOCKS } world_type;
typedef enum { WORLD_SUM, WORLD_MAX } world_op;

// Process start-up and end. world_init is idempotent; *owns is 1 when this call started the transport.
int world_init(int *argc, char ***argv, int *owns);
int world_started(void);      // initialised and not yet finalised
int world_finalize(void);
void world_abort(int code) __attribute__((noreturn));  // the whole job; never returns
int world_has_mpi(void);      // 1 when this build's world is MPI

// Per-comm state: fills c->info (rank, world, local rank and size, host) and c->w; world_close undoes it.
int world_open(comm *c);
void world_close(comm *c);

// Non-blocking collectives on c's group, completed by world_test. Counts fit in an int (callers chunk).
int world_ibcast(comm *c, void *buf, int bytes, int root, world_req *r);
int world_iallreduce(comm *c, void *buf, int n, world_type t, world_op op, world_req *r);
// The same on lane `lane` (0 or 1; comm.h's comm_allreduce_avg_async_lane): lane 0 is the group's communicator
// (world_iallreduce), lane 1 a communicator of its own over the same ranks, so that the collectives of each are
// matched in their own order (MPI matches non-blocking collectives by their order per communicator).
int world_iallreduce_lane(comm *c, int lane, void *buf, int n, world_type t, world_op op, world_req *r);
int world_iallgather(comm *c, const void *mine, void *all, int n, world_type t, world_req *r);
int world_ibarrier(comm *c, world_req *r);
int world_test(comm *c, world_req *r, int *done);

// ---- nodes, for the hierarchical all-reduce (comm_set_hierarchy)
//
// A node is the ranks of one host (MPI_Comm_split_type SHARED), or with fake_nodes > 0 (a test hook) the ranks
// [k·world/N, (k+1)·world/N) of node k. Its rank 0 is its leader. The leaders form a communicator of their own.
typedef struct world_nodes {
    int node, nodes;           // this rank's node (0..nodes-1, in the order of their leaders' ranks) and how many
    int node_rank, node_size;  // this rank's place in its node (0: the leader) and the node's ranks
    int size_min, size_max;    // ranks per node, fewest and most over the nodes
} world_nodes;

// Collective and blocking on c's group (the caller arms the deadline): the node and leader communicators.
int world_nodes_open(comm *c, int fake_nodes, world_nodes *out);
void world_nodes_close(comm *c);  // (also done by world_close)
// The three steps of a hierarchical sum (WORLD_F32, WORLD_BF16, WORLD_F16_BLOCKS; the same operator as
// world_iallreduce's), non-blocking, completed by world_test. The reduce and the broadcast run on two
// communicators of the node, so each of them sees its collectives in one order (bucket order) on every rank.
int world_ireduce_node(comm *c, void *buf, int n, world_type t, world_req *r);      // sum to the leader (in place)
int world_iallreduce_leaders(comm *c, void *buf, int n, world_type t, world_req *r); // leaders only: sum over nodes
int world_ibcast_node(comm *c, void *buf, int n, world_type t, world_req *r);       // the leader's values to its node

// Watchdog support: publish how many collectives this rank has entered; describe who has not entered seq.
void world_publish(comm *c, long long n_entered);
void world_describe_missing(comm *c, long long seq, char *out, size_t n);

#ifdef __cplusplus
}
#endif
