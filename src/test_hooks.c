// test_hooks.c — see test_hooks.h: the hooks off, and the stall. (The DDP_TEST_* variables are read by the
// test trainer only: tests/aids/test_env.c.)
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
    h->nonfinite_rank = -1;
}


void test_hooks_stall(const test_hooks *h, int rank, const char *where) {
    if (h->stall_rank < 0 || h->stall_rank != rank) return;
    if (strcmp(h->stall_at, where) == 0) sleep((unsigned)h->stall_s);
}
