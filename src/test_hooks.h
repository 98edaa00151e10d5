// test_hooks.h — the test-only fault hooks and test aids of the trainer, in one place. Every DDP_TEST_*
// environment variable is listed here and read in one function, test_hooks_from_env (tests/aids/test_env.c), which
// only the test trainer (`trainer_test`: main.c built with DDP_TESTING and the test aids) calls, once at start-up;
// the release `trainer` reads none of them and holds no DDP_TEST_ string. The result travels to the trainer in
// train_opts.hooks and to placement as an argument. Library callers (the cmocka tests) fill the struct
// themselves. All of them are inert unless set.
#pragma once

struct backend;

// DDP_TEST_CPU_GRAPH: the CPU backend's emulation of CUDA stream capture (src/backend_record.h), so the graph
// path of the training step runs, and is checked bit for bit against eager steps, without a GPU.
typedef enum test_cpu_graph {
    TEST_CPU_GRAPH_OFF = 0,
    TEST_CPU_GRAPH_EMULATE,     // DDP_TEST_CPU_GRAPH=<anything else>: captures recorded, replays run them
    TEST_CPU_GRAPH_REFUSE,      // DDP_TEST_CPU_GRAPH=refuse: every capture fails (the fall-back to op by op)
} test_cpu_graph;

typedef struct test_hooks {
    // DDP_TEST_STALL=RANK:WHERE:SECONDS: rank RANK sleeps, as a stuck peer would, so the others' watchdog must
    // fire. WHERE is a global step (1-based: before that step), `replicas` (before the end-of-epoch replica
    // check's gather) or `end` (after training, before the job's shut-down). stall_rank -1: off.
    int stall_rank;
    char stall_at[32];
    int stall_s;
    // DDP_TEST_SLOW_SAVE=SECONDS: rank 0 is held this long before it writes a checkpoint, as a slow file system
    // would. slow_save 0: off.
    int slow_save;
    unsigned slow_save_s;
    // DDP_TEST_CORRUPT_RANK=R: rank R adds 1 to one parameter before the end-of-epoch replica check (np > 1),
    // to prove the check catches it; R:state: to the first running statistic instead (a model with state,
    // e.g. [batchnorm]). -1: off.
    int corrupt_rank;
    int corrupt_state;
    test_cpu_graph cpu_graph;   // DDP_TEST_CPU_GRAPH (above)
    // DDP_TEST_FAKE_GPUS=N: GPUs per node for the node-local rank -> device mapping (src/placement.h), so the
    // placement tests run without GPUs. 0: off.
    int fake_gpus;
    // DDP_TEST_FAKE_NODES=N: parallel.hierarchy's nodes are ranks [k*world/N, (k+1)*world/N) instead of the hosts
    // (comm_set_hierarchy), so one host runs N "nodes" (np 4, N 2: 2 nodes x 2 ranks). 0: off.
    int fake_nodes;
    // DDP_TEST_COMM_FAIL=STEP: before global step STEP (1-based) this rank fails as a watchdog timeout would
    // (ST_COMM, a local failure), so the tests can see what the trainer does after a communication failure (it
    // stops the communicator before touching device memory). 0: off.
    long long comm_fail_step;
    // DDP_TEST_NONFINITE_GRAD=RANK:STEP: rank RANK puts an Inf into its loss gradient at global step STEP (1-based),
    // as an fp16 overflow in backward would, so that every gradient it all-reduces is non-finite (fp16: the loss
    // scaler must skip that step on every rank; otherwise the divergence check stops the run). -1: off.
    int nonfinite_rank;
    long long nonfinite_step;
    // DDP_TEST_GRADS32=1: under net.precision=bf16 with compress=bf16 the backward writes float32 parameter
    // gradients and the comm casts them to bf16 (what ran before backward wrote bf16), so that a test can hold the
    // two paths to the same result bit for bit. 0: off.
    int grads32;
    // The CPU capture emulation, injected by the test aids (tests/aids/backend_record.h) when cpu_graph is set:
    // wraps the backend in the recorder (mode TEST_CPU_GRAPH_REFUSE: one that refuses every capture). NULL in the
    // product, which then has no emulation to offer.
    int (*wrap_backend)(struct backend *be, test_cpu_graph mode);
} test_hooks;

// DDP_CKPT_CRASH_AFTER_BYTES, the checkpoint writer's crash hook, is the checkpoint library's setter
// (ckpt_set_crash_after, src/checkpoint.h); the test trainer calls it from that variable.

// Every hook off.
void test_hooks_off(test_hooks *h);


// DDP_TEST_STALL: sleep when this is the stalling rank and `where` (a step number as text, `replicas`, `end`)
// is its place.
void test_hooks_stall(const test_hooks *h, int rank, const char *where);
