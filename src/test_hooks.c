// test_hooks.c — see test_hooks.h. The one place that reads the DDP_TEST_* variables.
#include "test_hooks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

void test_hooks_off(test_hooks *h) {
    memset(h, 0, sizeof *h);
    h->stall_rank = -1;
    h->corrupt_rank = -1;
}

void test_hooks_from_env(test_hooks *h) {
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
    if ((s = getenv("DDP_TEST_COMM_FAIL")) && parse_int(s, 1, 1L << 40, &v) == 0) h->comm_fail_step = v;
}

void test_hooks_stall(const test_hooks *h, int rank, const char *where) {
    if (h->stall_rank < 0 || h->stall_rank != rank) return;
    if (strcmp(h->stall_at, where) == 0) sleep((unsigned)h->stall_s);
}
