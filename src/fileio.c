// fileio.c — opening inputs without blocking and guarding outputs (see fileio.h).
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define IO_CHUNK (1u << 30)  // stay below Linux's per-call read/write cap

const char *file_kind(mode_t m) {
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISREG(m)) return "a regular file";
    return "of an unknown kind";
}

// ---------------------------------------------------------------------------------------------------------
// Inputs

int input_open(const char *path, const char *what, int *fd_out, uint64_t *size) {
    *fd_out = -1;
    if (path == NULL || path[0] == '\0') return ERR(ST_INPUT, "%s path is empty", what);
    // O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever; fstat says what it is first.
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return ERR(ST_INPUT, "cannot open %s: %s: %s", what, strerror(errno), path);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return ERR(ST_RUNTIME, "cannot stat %s: %s: %s", what, strerror(e), path);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return ERR(ST_INPUT, "%s is %s, not a regular file (refused before reading): %s", what, file_kind(sb.st_mode),
                   path);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl != -1) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *fd_out = fd;
    *size = (uint64_t)sb.st_size;
    return ST_OK;
}

int input_pread(int fd, const char *path, void *buf, size_t n, uint64_t off) {
    unsigned char *b = buf;
    size_t got = 0;
    while (got < n) {
        size_t chunk = n - got < IO_CHUNK ? n - got : IO_CHUNK;
        ssize_t r = pread(fd, b + got, chunk, (off_t)(off + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return ERR(ST_RUNTIME, "read failed: %s: %s", strerror(errno), path);
        if (r == 0)
            return ERR(ST_INPUT, "%s: file ended at byte %llu while reading (it shrank?)", path,
                       (unsigned long long)(off + got));
        got += (size_t)r;
    }
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Outputs

void file_set_add(file_set *s, const char *path, const char *what) {
    struct stat sb;
    if (!path || !path[0] || s->n >= FILE_SET_MAX || stat(path, &sb) != 0) return;
    s->f[s->n].dev = sb.st_dev;
    s->f[s->n].ino = sb.st_ino;
    s->f[s->n].path = path;
    s->f[s->n].what = what;
    s->n++;
}

int output_not_input(const char *path, const char *opt, const file_set *s, const char *allowed) {
    struct stat sb, ab;
    if (!path || stat(path, &sb) != 0) return ST_OK;
    int have_allowed = allowed && stat(allowed, &ab) == 0;
    for (int i = 0; i < s->n; i++) {
        if (s->f[i].dev != sb.st_dev || s->f[i].ino != sb.st_ino) continue;
        if (have_allowed && ab.st_dev == sb.st_dev && ab.st_ino == sb.st_ino) continue;
        return ERR(ST_INPUT, "%s would overwrite an input of this run (the %s %s): %s", opt, s->f[i].what,
                   s->f[i].path, path);
    }
    return ST_OK;
}

int output_check_kind(const char *path, const char *opt, int (*is_kind)(const unsigned char *, size_t),
                      const char *kind, int allow_special) {
    struct stat sb;
    if (stat(path, &sb) != 0) return ST_OK;  // created by the writer (which reports its own errors)
    if (S_ISDIR(sb.st_mode)) return ERR(ST_INPUT, "%s is a directory, not a file: %s", opt, path);
    if (!S_ISREG(sb.st_mode)) {
        if (allow_special) return ST_OK;
        return ERR(ST_INPUT, "%s exists and is %s, not a regular file (refusing to replace it): %s", opt,
                   file_kind(sb.st_mode), path);
    }
    if (sb.st_size == 0) return ST_OK;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return ST_OK;  // not readable: the writer will say whether it can replace it
    unsigned char head[64];
    ssize_t r = pread(fd, head, sizeof head, 0);
    close(fd);
    if (r > 0 && !is_kind(head, (size_t)r))
        return ERR(ST_INPUT, "%s: refusing to overwrite an existing file that is not %s: %s", opt, kind, path);
    return ST_OK;
}

int write_all(int fd, const void *buf, size_t n) {
    const unsigned char *b = buf;
    while (n > 0) {
        ssize_t r = write(fd, b, n < IO_CHUNK ? n : IO_CHUNK);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return errno;
        if (r == 0) return EIO;
        b += r, n -= (size_t)r;
    }
    return 0;
}
