// trace.h — a per-rank timeline in Chrome trace-event JSON (loadable in Perfetto / chrome://tracing).
//
// `trainer --trace DIR` makes every rank write DIR/trace_rank<R>.json: complete events ("ph":"X", ts/dur in
// µs) with pid = rank and tid = lane (TRACE_TID_MAIN for the step's phases and layers, one lane per gradient
// bucket for its all-reduce from launch to completion). Events are buffered in host memory and written once,
// by trace_close. Timestamps count from trace_set_origin, which train.c takes right after a barrier, so the
// ranks' files line up when launch/trace_merge.py puts them into one.
//
// Tracing off is a NULL trace pointer: callers test it before taking any timestamp, so the cost is one branch.
#pragma once
#include <stddef.h>

typedef struct trace trace;

enum {
    TRACE_TID_MAIN = 0,       // data, forward/backward (per layer), wait, optimizer, eval
    TRACE_TID_BUCKET0 = 100,  // the all-reduce of bucket i runs on lane TRACE_TID_BUCKET0 + i
};

// Creates DIR if needed and opens a temp file next to DIR/trace_rank<rank>.json for writing (so a bad path fails
// at start-up, ST_INPUT naming it); an existing trace_rank<rank>.json that is not a trace is refused. host is
// shown in the process name.
int trace_open(trace **out, const char *dir, int rank, const char *host);
// Timestamps are now_s() values; they are written relative to this one.
void trace_set_origin(trace *t, double origin_s);
// The global step recorded with every following event (-1: none, e.g. evaluation).
void trace_set_step(trace *t, long long step);
// Name a lane (a "thread_name" metadata event); names are copied.
void trace_name_lane(trace *t, int tid, const char *name);
// Layer `index`'s name and kind (its config section), written once in the file's otherData "layers", so that
// per-layer spans (their "index" argument) can be summed by kind (launch/trace_layers.py). Copied.
void trace_set_layer(trace *t, int index, const char *name, const char *kind);
// One complete span [t0_s, t1_s] (now_s() values) on lane tid. cat is a static string ("forward", "comm");
// name is copied (truncated to 47 characters). index: a bucket or layer number written as an argument, or -1.
// bytes: written as an argument when > 0.
void trace_span(trace *t, int tid, const char *cat, const char *name, double t0_s, double t1_s, int index,
                long long bytes);
// Writes the file, closes it, renames it to its final name and frees t. NULL: no-op. On a write error the temp
// file is removed (no truncated JSON is left) and the status is ST_RUNTIME naming the file and the errno's text.
int trace_close(trace *t);
// DIR/trace_rank<rank>.json into buf; -1 when it does not fit.
int trace_file_path(char *buf, size_t n, const char *dir, int rank);
// The first bytes of an existing file look like a trace this program wrote.
int trace_is_own_head(const unsigned char *head, size_t n);
