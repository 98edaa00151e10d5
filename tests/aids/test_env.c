// test_env.c — the test trainer's reading of the DDP_TEST_* environment (and the checkpoint's crash hook):
// linked only into `trainer_test` and the tests, never into the release trainer. See src/test_hooks.h.
#include "test_env.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_record.h"
#include "checkpoint.h"
#include "common.h"

int test_aids_wrap_backend(struct backend *be, test_cpu_graph mode) {
    TRY(backend_record_wrap(be));
    if (mode == TEST_CPU_GRAPH_REFUSE) TRY(backend_record_refuse_captures(be));
    return ST_OK;
}

int test_hooks_from_env(test_hooks *h) {
    test_hooks_off(h);
    const char *s = getenv("DDP_TEST_STALL");
    int rank = -1, secs = 0;
    char at[sizeof h->stall_at] = "";
    if (s && sscanf(s, "%d:%31[^:]:%d", &rank, at, &secs) == 3) {
        h->stall_rank = rank;
        snprintf(h->stall_at, sizeof h->stall_at, "%s", at);
        h->stall_s = secs;
    }
    if ((s = getenv("DDP_TEST_SLOW_SAVE"))) h->slow_save = 1, h->slow_save_s = (unsigned)atoi(s);
    if ((s = getenv("DDP_TEST_CORRUPT_RANK"))) {
        h->corrupt_rank = atoi(s);
        const char *colon = strchr(s, ':');
        h->corrupt_state = colon && strcmp(colon + 1, "state") == 0;
    }
    if ((s = getenv("DDP_TEST_CPU_GRAPH")))
        h->cpu_graph = strcmp(s, "refuse") == 0 ? TEST_CPU_GRAPH_REFUSE : TEST_CPU_GRAPH_EMULATE;
    long v;
    if ((s = getenv("DDP_TEST_FAKE_GPUS")) && parse_int(s, 0, 1 << 16, &v) == 0) h->fake_gpus = (int)v;
    if ((s = getenv("DDP_TEST_FAKE_NODES")) && parse_int(s, 0, 1 << 20, &v) == 0) h->fake_nodes = (int)v;
    if ((s = getenv("DDP_TEST_COMM_FAIL")) && parse_int(s, 1, 1L << 40, &v) == 0) h->comm_fail_step = v;
    if ((s = getenv("DDP_TEST_NONFINITE_GRAD"))) {
        long long step = 0;
        if (sscanf(s, "%d:%lld", &rank, &step) != 2 || rank < 0 || step < 1)
            return ERR(ST_INPUT, "DDP_TEST_NONFINITE_GRAD='%s' is not RANK:STEP (STEP from 1)", s);
        h->nonfinite_rank = rank, h->nonfinite_step = step;
    }
    if ((s = getenv("DDP_TEST_GRADS32"))) h->grads32 = atoi(s) != 0;
    h->wrap_backend = test_aids_wrap_backend;
    if ((s = getenv("DDP_CKPT_CRASH_AFTER_BYTES")) && *s) {
        if (parse_int(s, 0, LONG_MAX, &v) != 0)
            return ERR(ST_INPUT, "DDP_CKPT_CRASH_AFTER_BYTES='%s' is not a byte count", s);
        ckpt_set_crash_after(v);
    }
    return ST_OK;
}
