// comm_world_self.c — the process group of one process, without MPI (TRAINER_MPI=OFF; comm_world.h).
//
// A single-GPU or single-CPU run needs no launcher: every collective of one rank completes at once (a sum or
// max over one rank is the value itself), so the trainer, the comm backends and the watchdog run unchanged.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm_half.h"
#include "comm_impl.h"
#include "common.h"

static int g_started;

int world_has_mpi(void) { return 0; }
int world_started(void) { return g_started; }

int world_init(int *argc, char ***argv, int *owns) {
    (void)argc, (void)argv;
    *owns = !g_started;
    g_started = 1;
    g_rank = 0;
    g_world = 1;
    return ST_OK;
}

int world_finalize(void) {
    g_started = 0;
    return ST_OK;
}

void world_abort(int code) {
    fflush(stdout);
    fflush(stderr);
    _exit(code);
}

int world_open(comm *c) {
    if (!g_started) return ERR(ST_RUNTIME, "comm_create: the process group is not initialised (call comm_world_init)");
    c->info.rank = 0, c->info.world = 1;
    c->info.local_rank = 0, c->info.local_world = 1;
    char name[256] = "";
    if (gethostname(name, sizeof name) != 0) snprintf(name, sizeof name, "unknown-host");
    name[sizeof name - 1] = '\0';
    snprintf(c->info.host, sizeof c->info.host, "%s", name);
    snprintf(g_host, sizeof g_host, "%s", c->info.host);
    return ST_OK;
}

void world_close(comm *c) { c->w = NULL; }

static size_t type_size(world_type t) {
    switch (t) {
    case WORLD_F32: case WORLD_I32: return 4;
    case WORLD_BF16: return sizeof(uint16_t);
    case WORLD_F16_BLOCKS: return sizeof(half_block);
    default: return 8;
    }
}

// One rank: the result of every collective is already in place, except a gather's copy of our own value.
int world_ibcast(comm *c, void *buf, int bytes, int root, world_req *r) {
    (void)c, (void)buf, (void)bytes, (void)root, (void)r;
    if (root != 0) return ERR(ST_RUNTIME, "rank 0 (%s): broadcast from root %d of a 1-rank group", g_host, root);
    return ST_OK;
}

int world_iallreduce(comm *c, void *buf, int n, world_type t, world_op op, world_req *r) {
    (void)c, (void)buf, (void)n, (void)t, (void)op, (void)r;
    return ST_OK;
}

int world_iallreduce_lane(comm *c, int lane, void *buf, int n, world_type t, world_op op, world_req *r) {
    (void)lane;  // one rank: no order to match
    return world_iallreduce(c, buf, n, t, op, r);
}

int world_iallgather(comm *c, const void *mine, void *all, int n, world_type t, world_req *r) {
    (void)c, (void)r;
    if (n > 0) memmove(all, mine, (size_t)n * type_size(t));
    return ST_OK;
}

int world_ibarrier(comm *c, world_req *r) {
    (void)c, (void)r;
    return ST_OK;
}

int world_test(comm *c, world_req *r, int *done) {
    (void)c, (void)r;
    *done = 1;
    return ST_OK;
}

// One process is one node of one rank: its leader. Every step of a hierarchical sum is the value itself.
int world_nodes_open(comm *c, int fake_nodes, world_nodes *out) {
    (void)c, (void)fake_nodes;
    memset(out, 0, sizeof *out);
    out->nodes = out->node_size = out->size_min = out->size_max = 1;
    return ST_OK;
}

void world_nodes_close(comm *c) { (void)c; }

int world_ireduce_node(comm *c, void *buf, int n, world_type t, world_req *r) {
    (void)c, (void)buf, (void)n, (void)t, (void)r;
    return ST_OK;
}

int world_iallreduce_leaders(comm *c, void *buf, int n, world_type t, world_req *r) {
    (void)c, (void)buf, (void)n, (void)t, (void)r;
    return ST_OK;
}

int world_ibcast_node(comm *c, void *buf, int n, world_type t, world_req *r) {
    (void)c, (void)buf, (void)n, (void)t, (void)r;
    return ST_OK;
}

void world_publish(comm *c, long long n_entered) { (void)c, (void)n_entered; }

void world_describe_missing(comm *c, long long seq, char *out, size_t n) {
    (void)c, (void)seq;
    snprintf(out, n, "this is the only rank (the device or the host is stuck)");
}
