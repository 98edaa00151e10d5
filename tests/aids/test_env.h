// test_env.h — test aids only (linked into trainer_test and the tests): the DDP_TEST_* environment read into the
// hooks (src/test_hooks.h), and the CPU capture emulation as the hooks' backend wrapper.
#pragma once
#include "test_hooks.h"

// Every hook from its environment variable (each off when unset; a malformed value reads as it always did:
// atoi for the counts, a STALL that does not parse is off), wrap_backend set to test_aids_wrap_backend, and the
// checkpoint's crash hook from DDP_CKPT_CRASH_AFTER_BYTES (ST_INPUT when that is not a byte count).
int test_hooks_from_env(test_hooks *h);

// The recorder around the backend (tests/aids/backend_record.h); mode TEST_CPU_GRAPH_REFUSE refuses captures.
int test_aids_wrap_backend(struct backend *be, test_cpu_graph mode);
