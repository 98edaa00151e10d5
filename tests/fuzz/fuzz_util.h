// fuzz_util.h — shared by the fuzz targets: the loaders take paths, so each input is written to an in-memory
// file (memfd) and passed as /proc/self/fd/N. The loaders' real code path (open, gzopen, fopen, fstat) runs.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define FUZZ_PATH_MAX 64

typedef struct fuzz_file {
    int fd;
    char path[FUZZ_PATH_MAX];  // "/proc/self/fd/N"
} fuzz_file;

// Replace the file's whole content with data[0..n) (creates the memfd on first use). Aborts on failure: a
// harness that cannot write its input must not report "no bug".
void fuzz_file_set(fuzz_file *f, const void *data, size_t n);

// Little-endian u32 from 4 bytes.
uint32_t fuzz_le32(const uint8_t *p);

// Crash (abort) with a message when an invariant of a successful load does not hold: libFuzzer records the
// input as a crash, like a sanitizer report.
#define FUZZ_CHECK(cond)                                                                                   \
    do {                                                                                                   \
        if (!(cond)) fuzz_fail(__FILE__, __LINE__, #cond);                                                 \
    } while (0)
void fuzz_fail(const char *file, int line, const char *what) __attribute__((noreturn));

// libFuzzer's entry point, implemented by each target.
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
