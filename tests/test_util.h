// test_util.h — helpers shared by the cmocka tests: temp files, small generated data sets, tolerances.
#pragma once
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

// A fresh temp directory for this test process (removed at exit); returns its path.
const char *tu_tmpdir(void);
// Path inside tu_tmpdir() (static buffer rotation of 8).
const char *tu_path(const char *name);
// Write bytes to a file (raw) or gzip them (gz=1). Returns 0 on success.
int tu_write_file(const char *path, const void *data, size_t n, int gz);
// Max of |a-b| / max(1, |b|) over n values.
double tu_max_rel_err(const float *a, const float *b, size_t n);
