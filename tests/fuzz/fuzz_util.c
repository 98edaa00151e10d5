// fuzz_util.c — in-memory files for the fuzz targets (see fuzz_util.h).
#define _GNU_SOURCE
#include "fuzz_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

void fuzz_fail(const char *file, int line, const char *what) {
    fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", file, line, what);
    abort();
}

static void write_all(int fd, const unsigned char *p, size_t n) {
    off_t off = 0;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w <= 0) fuzz_fail(__FILE__, __LINE__, "pwrite to the memfd");
        p += w, n -= (size_t)w, off += w;
    }
}

void fuzz_file_set(fuzz_file *f, const void *data, size_t n) {
    if (f->path[0] == '\0') {
        f->fd = memfd_create("fuzz-input", MFD_CLOEXEC);
        if (f->fd < 0) fuzz_fail(__FILE__, __LINE__, "memfd_create");
        snprintf(f->path, sizeof f->path, "/proc/self/fd/%d", f->fd);
    }
    if (ftruncate(f->fd, 0) != 0) fuzz_fail(__FILE__, __LINE__, "ftruncate of the memfd");
    write_all(f->fd, data, n);
}

uint32_t fuzz_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
