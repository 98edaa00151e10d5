// tensorboard.c — TensorBoard event files, written by hand (no TensorFlow, no protobuf library): see tensorboard.h.
//
// An event file is a sequence of TFRecords: u64 length (little-endian), u32 masked CRC-32C of those 8 bytes,
// the data, u32 masked CRC-32C of the data; masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8. Each record's data
// is a serialized tensorflow.Event: wall_time (field 1, double), step (2, int64), and either file_version (3,
// string: "brain.Event:2", the first record) or summary (5): Summary { repeated Value value = 1 }, Value { string
// tag = 1; float simple_value = 2 }. That is all TensorBoard's scalar dashboard reads.
#include "tensorboard.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "fileio.h"

struct tboard {
    int fd;
    char path[4096 + 160];
};

// ---------------------------------------------------------------------------------------------------------
// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t tb_crc32c(const void *p, size_t n) {
    if (!crc_table[1]) crc_init();
    const unsigned char *b = p;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ b[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static uint32_t masked_crc(const void *p, size_t n) {
    uint32_t c = tb_crc32c(p, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

// ---------------------------------------------------------------------------------------------------------
// Protobuf, the few encodings an Event needs

typedef struct pbuf {
    unsigned char b[1024];
    size_t n;
} pbuf;

static void pb_bytes(pbuf *p, const void *src, size_t n) {
    if (p->n + n <= sizeof p->b) memcpy(p->b + p->n, src, n);
    p->n += n;  // an overflow is seen by the caller (n > sizeof b)
}

static void pb_varint(pbuf *p, uint64_t v) {
    unsigned char t[10];
    size_t k = 0;
    do {
        t[k++] = (unsigned char)((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
        v >>= 7;
    } while (v);
    pb_bytes(p, t, k);
}

static void pb_le(pbuf *p, uint64_t v, int bytes) {
    unsigned char t[8];
    for (int i = 0; i < bytes; i++) t[i] = (unsigned char)(v >> (8 * i));
    pb_bytes(p, t, (size_t)bytes);
}

static void pb_double(pbuf *p, int field, double v) {
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    pb_varint(p, (uint64_t)field << 3 | 1);
    pb_le(p, u, 8);
}

static void pb_float(pbuf *p, int field, float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    pb_varint(p, (uint64_t)field << 3 | 5);
    pb_le(p, u, 4);
}

static void pb_len(pbuf *p, int field, const void *data, size_t n) {
    pb_varint(p, (uint64_t)field << 3 | 2);
    pb_varint(p, n);
    pb_bytes(p, data, n);
}

// ---------------------------------------------------------------------------------------------------------
// Records

static int record_write(tboard *w, const pbuf *event) {
    if (event->n > sizeof event->b) return ERR(ST_RUNTIME, "%s: TensorBoard event too large", w->path);
    unsigned char head[12];
    uint64_t len = event->n;
    for (int i = 0; i < 8; i++) head[i] = (unsigned char)(len >> (8 * i));
    uint32_t c = masked_crc(head, 8);
    for (int i = 0; i < 4; i++) head[8 + i] = (unsigned char)(c >> (8 * i));
    unsigned char tail[4];
    c = masked_crc(event->b, event->n);
    for (int i = 0; i < 4; i++) tail[i] = (unsigned char)(c >> (8 * i));
    int e = write_all(w->fd, head, sizeof head);
    if (!e) e = write_all(w->fd, event->b, event->n);
    if (!e) e = write_all(w->fd, tail, sizeof tail);
    if (e) return ERR(ST_RUNTIME, "%s: cannot write TensorBoard events: %s", w->path, strerror(e));
    return ST_OK;
}

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int tb_open(tboard **out, const char *dir, const char *host) {
    *out = NULL;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return ERR(ST_INPUT, "--tensorboard %s: cannot create the directory (%s)", dir, strerror(errno));
    tboard *w = calloc(1, sizeof *w);
    TRY_ALLOC(w);
    // TensorBoard reads every file of a run's directory whose name holds "tfevents"; one file per run, so a
    // resumed run adds a file beside the first and the dashboard joins them by step.
    int n = snprintf(w->path, sizeof w->path, "%s/events.out.tfevents.%lld.%s.%d", dir, (long long)time(NULL), host,
                     (int)getpid());
    if (n < 0 || (size_t)n >= sizeof w->path) {
        free(w);
        return ERR(ST_INPUT, "--tensorboard %s: path too long", dir);
    }
    w->fd = open(w->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        int e = errno;
        free(w);
        return ERR(ST_INPUT, "--tensorboard: cannot create %s: %s", w->path, strerror(e));
    }
    pbuf ev = {.n = 0};
    pb_double(&ev, 1, wall_now());
    pb_len(&ev, 3, "brain.Event:2", 13);
    int st = record_write(w, &ev);
    if (st != ST_OK) {
        tb_close(w);
        return st;
    }
    *out = w;
    return ST_OK;
}

int tb_scalars(tboard *w, long long step, const tb_scalar *v, int n) {
    if (!w) return ST_OK;
    pbuf summary = {.n = 0};
    for (int i = 0; i < n; i++) {
        pbuf value = {.n = 0};
        pb_len(&value, 1, v[i].tag, strlen(v[i].tag));
        pb_float(&value, 2, (float)v[i].value);
        if (value.n > sizeof value.b) return ERR(ST_RUNTIME, "%s: TensorBoard tag too long", w->path);
        pb_len(&summary, 1, value.b, value.n);
    }
    if (summary.n > sizeof summary.b) return ERR(ST_RUNTIME, "%s: too many TensorBoard values at once", w->path);
    pbuf ev = {.n = 0};
    pb_double(&ev, 1, wall_now());
    pb_varint(&ev, 2 << 3 | 0);
    pb_varint(&ev, (uint64_t)step);
    pb_len(&ev, 5, summary.b, summary.n);
    return record_write(w, &ev);
}

int tb_close(tboard *w) {
    if (!w) return ST_OK;
    int st = ST_OK;
    if (close(w->fd) != 0) st = ERR(ST_RUNTIME, "%s: error closing TensorBoard events: %s", w->path, strerror(errno));
    free(w);
    return st;
}
