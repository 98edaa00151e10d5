// trace.c — the Chrome trace-event writer behind `--trace DIR` (see trace.h). Events go into a growing array
// in memory during the run; the JSON is written once, at the end, so tracing adds no I/O to the steps.
#include "trace.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "fileio.h"

#define TRACE_NAME_MAX 48
#define TRACE_MAX_EVENTS (16L * 1024 * 1024)  // ~1.3 GB: beyond this, events are counted as dropped

typedef struct trace_event {
    double t0, t1;          // now_s() values
    long long step, bytes;
    int tid, index;
    const char *cat;
    char name[TRACE_NAME_MAX];
} trace_event;

typedef struct trace_lane {
    int tid;
    char name[TRACE_NAME_MAX];
} trace_lane;

struct trace {
    FILE *f;
    char path[4096];
    char tmp[4096 + 32];  // written here, renamed to path when complete
    int rank;
    char host[64];
    double origin;
    long long step;
    trace_event *ev;
    long n, cap, dropped;
    trace_lane *lanes;
    int n_lanes, cap_lanes;
    char (*layers)[2][48];  // [index] = {name, kind}
    int n_layers;
};

// ---------------------------------------------------------------------------------------------------------
// Recording

int trace_file_path(char *buf, size_t n, const char *dir, int rank) {
    int k = snprintf(buf, n, "%s/trace_rank%d.json", dir, rank);
    return k < 0 || (size_t)k >= n ? -1 : 0;
}

int trace_is_own_head(const unsigned char *head, size_t n) {
    static const char own[] = "{\"displayTimeUnit\"";
    return n >= sizeof own - 1 && memcmp(head, own, sizeof own - 1) == 0;
}

int trace_open(trace **out, const char *dir, int rank, const char *host) {
    *out = NULL;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return ERR(ST_INPUT, "--trace %s: cannot create the directory (%s)", dir, strerror(errno));
    trace *t = calloc(1, sizeof *t);
    TRY_ALLOC(t);
    if (trace_file_path(t->path, sizeof t->path, dir, rank) != 0) {
        free(t);
        return ERR(ST_INPUT, "--trace %s: path too long", dir);
    }
    int st = output_check_kind(t->path, "--trace", trace_is_own_head, "a ddp-cnn trace", 0);
    if (st != ST_OK) {
        free(t);
        return st;
    }
    snprintf(t->tmp, sizeof t->tmp, "%s.tmp.%ld", t->path, (long)getpid());
    t->f = fopen(t->tmp, "w");
    if (!t->f) {
        int e = errno;
        free(t);
        return ERR(ST_INPUT, "--trace %s: cannot open trace_rank%d.json for writing (%s)", dir, rank, strerror(e));
    }
    t->rank = rank;
    snprintf(t->host, sizeof t->host, "%s", host ? host : "");
    t->origin = now_s();
    t->step = -1;
    *out = t;
    return ST_OK;
}

void trace_set_origin(trace *t, double origin_s) { t->origin = origin_s; }

void trace_set_step(trace *t, long long step) { t->step = step; }

void trace_name_lane(trace *t, int tid, const char *name) {
    for (int i = 0; i < t->n_lanes; i++)
        if (t->lanes[i].tid == tid) return;  // named once
    if (t->n_lanes == t->cap_lanes) {
        int cap = t->cap_lanes ? 2 * t->cap_lanes : 16;
        trace_lane *p = realloc(t->lanes, (size_t)cap * sizeof *p);
        if (!p) return;  // a missing lane name only loses a label
        t->lanes = p, t->cap_lanes = cap;
    }
    trace_lane *l = &t->lanes[t->n_lanes++];
    l->tid = tid;
    snprintf(l->name, sizeof l->name, "%s", name);
}

void trace_set_layer(trace *t, int index, const char *name, const char *kind) {
    if (!t || index < 0 || index > 4096) return;
    if (index >= t->n_layers) {
        void *p = realloc(t->layers, (size_t)(index + 1) * sizeof *t->layers);
        if (!p) return;  // the table is an annotation: without memory for it the trace is still whole
        t->layers = p;
        memset(t->layers + t->n_layers, 0, (size_t)(index + 1 - t->n_layers) * sizeof *t->layers);
        t->n_layers = index + 1;
    }
    snprintf(t->layers[index][0], sizeof t->layers[index][0], "%s", name);
    snprintf(t->layers[index][1], sizeof t->layers[index][1], "%s", kind);
}

void trace_span(trace *t, int tid, const char *cat, const char *name, double t0_s, double t1_s, int index,
                long long bytes) {
    if (t->n == t->cap) {
        long cap = t->cap ? 2 * t->cap : 4096;
        if (cap > TRACE_MAX_EVENTS) cap = TRACE_MAX_EVENTS;
        trace_event *p = cap > t->cap ? realloc(t->ev, (size_t)cap * sizeof *p) : NULL;
        if (!p) {  // the run goes on; the file says how many events are missing
            t->dropped++;
            return;
        }
        t->ev = p, t->cap = cap;
    }
    trace_event *e = &t->ev[t->n++];
    e->t0 = t0_s, e->t1 = t1_s;
    e->step = t->step, e->bytes = bytes;
    e->tid = tid, e->index = index;
    e->cat = cat;
    snprintf(e->name, sizeof e->name, "%s", name);
}

// ---------------------------------------------------------------------------------------------------------
// Writing

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void write_metadata(trace *t) {
    char pname[128];
    snprintf(pname, sizeof pname, "rank %d (%s)", t->rank, t->host);
    fprintf(t->f, "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"args\":{\"name\":", t->rank);
    json_string(t->f, pname);
    fprintf(t->f, "}},\n{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"args\":{\"sort_index\":%d}}",
            t->rank, t->rank);
    for (int i = 0; i < t->n_lanes; i++) {
        fprintf(t->f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{\"name\":", t->rank,
                t->lanes[i].tid);
        json_string(t->f, t->lanes[i].name);
        fprintf(t->f, "}},\n{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{\"sort_index\":%d}}",
                t->rank, t->lanes[i].tid, t->lanes[i].tid);
    }
}

static void write_event(trace *t, const trace_event *e) {
    fprintf(t->f, ",\n{\"name\":");
    json_string(t->f, e->name);
    fprintf(t->f, ",\"cat\":\"%s\",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,\"pid\":%d,\"tid\":%d,\"args\":{", e->cat,
            (e->t0 - t->origin) * 1e6, (e->t1 - e->t0) * 1e6, t->rank, e->tid);
    const char *sep = "";
    if (e->step >= 0) fprintf(t->f, "\"step\":%lld", e->step), sep = ",";
    if (e->index >= 0) fprintf(t->f, "%s\"index\":%d", sep, e->index), sep = ",";
    if (e->bytes > 0) fprintf(t->f, "%s\"bytes\":%lld", sep, e->bytes);
    fprintf(t->f, "}}");
}

int trace_close(trace *t) {
    if (!t) return ST_OK;
    fprintf(t->f, "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"rank\":%d,\"host\":", t->rank);
    json_string(t->f, t->host);
    fprintf(t->f, ",\"events\":%ld,\"dropped_events\":%ld,\"layers\":[", t->n, t->dropped);
    for (int i = 0; i < t->n_layers; i++) {
        fprintf(t->f, "%s[", i ? "," : "");
        json_string(t->f, t->layers[i][0]);
        fprintf(t->f, ",");
        json_string(t->f, t->layers[i][1]);
        fprintf(t->f, "]");
    }
    fprintf(t->f, "]},\n\"traceEvents\":[\n");
    write_metadata(t);
    for (long i = 0; i < t->n; i++) write_event(t, &t->ev[i]);
    fprintf(t->f, "\n]}\n");
    // A stream's error flag stays set; errno from the failing flush (the last write) is the cause.
    int e = fflush(t->f) != 0 || ferror(t->f) ? errno : 0;
    if (fclose(t->f) != 0 && e == 0) e = errno;
    if (e == 0 && rename(t->tmp, t->path) != 0) e = errno;
    // Written whole under the final name, or not at all: no truncated JSON is left behind.
    if (e != 0) unlink(t->tmp);
    int st = e ? ERR(ST_RUNTIME, "%s: cannot write the trace: %s (nothing written)", t->path, strerror(e ? e : EIO))
               : ST_OK;
    free(t->ev);
    free(t->lanes);
    free(t->layers);
    free(t);
    return st;
}
