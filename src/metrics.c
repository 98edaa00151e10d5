// metrics.c — scaling efficiency, baseline file, JSON Lines output.
#include "metrics.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "fileio.h"

double scaling_efficiency(const epoch_metrics *m, const baseline *b, const char **kind) {
    if (b && b->present && b->images_per_s > 0 && b->step_s > 0) {
        *kind = "baseline";
        if (m->scaling == SCALING_STRONG) return b->step_s / ((double)m->world * m->t.step_s);
        return m->images_per_s / ((double)m->world * b->images_per_s);
    }
    *kind = "estimate";
    if (m->t.step_s <= 0) return 0;
    return (m->t.step_s - m->t.exposed_comm_s) / m->t.step_s;
}

// (start, index) after (s0, i0) in lexicographic order.
static int busy_after(double s, int i, double s0, int i0) { return s > s0 || (s == s0 && i > i0); }

double metrics_busy_s(int n, const double *t0, const double *t1) {
    // Sweep in start order, each next interval found by a scan: n is a step's bucket count (a few dozen).
    double busy = 0, reach = -INFINITY;  // reach: where the union so far ends
    double s0 = -INFINITY;
    int i0 = -1;
    for (int k = 0; k < n; k++) {
        int j = -1;
        for (int i = 0; i < n; i++)
            if (busy_after(t0[i], i, s0, i0) && (j < 0 || busy_after(t0[j], j, t0[i], i))) j = i;
        if (j < 0) break;  // the rest start at NaN
        s0 = t0[j], i0 = j;
        if (!(t1[j] > t0[j])) continue;
        const double from = t0[j] > reach ? t0[j] : reach;
        if (t1[j] > from) busy += t1[j] - from;
        if (t1[j] > reach) reach = t1[j];
    }
    return busy;
}

// Only the end of the file is read (a metrics file's last line is well under this), so the time and memory a
// baseline costs do not grow with the file; the file must be a regular one (src/fileio.h): --baseline /dev/zero
// or a FIFO is refused before anything is read.
#define BASELINE_TAIL 65536

// The last line of the file's tail that starts with '{' (empty when none), NUL-terminated in last.
static int baseline_last_line(const char *path, char *last) {
    int fd = -1;
    uint64_t size = 0;
    TRY(input_open(path, "baseline", &fd, &size));
    size_t n = size < BASELINE_TAIL ? (size_t)size : BASELINE_TAIL;
    char *tail = malloc(n + 1);
    int st = tail ? input_pread(fd, path, tail, n, size - n) : ERR(ST_RUNTIME, "%s: out of host memory", path);
    close(fd);
    last[0] = '\0';
    if (st == ST_OK) {
        tail[n] = '\0';
        // Lines start at the tail's first byte only when that is the file's first byte.
        for (size_t i = 0; i < n; i++) {
            int line_start = i == 0 ? n == size : tail[i - 1] == '\n';
            if (!line_start || tail[i] != '{') continue;
            size_t e = i;
            while (e < n && tail[e] != '\n') e++;
            memcpy(last, tail + i, e - i);
            last[e - i] = '\0';
            i = e;
        }
    }
    free(tail);
    return st;
}

int baseline_load(const char *path, baseline *b) {
    memset(b, 0, sizeof *b);
    char last[BASELINE_TAIL + 1];
    TRY(baseline_last_line(path, last));
    cJSON *j = cJSON_Parse(last);
    if (!j) return ERR(ST_INPUT, "%s: no JSON line found (want the --metrics file of an np 1 run)", path);
    const cJSON *ips = cJSON_GetObjectItemCaseSensitive(j, "images_per_s");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "step_s");
    const cJSON *ws = cJSON_GetObjectItemCaseSensitive(j, "world_size");
    const cJSON *gb = cJSON_GetObjectItemCaseSensitive(j, "global_batch");
    int st_ok = cJSON_IsNumber(ips) && cJSON_IsNumber(st) && cJSON_IsNumber(ws) && cJSON_IsNumber(gb);
    if (st_ok) {
        b->images_per_s = ips->valuedouble;
        b->step_s = st->valuedouble;
        b->global_batch = gb->valueint;
    }
    int world = st_ok ? ws->valueint : 0;
    cJSON_Delete(j);
    if (!st_ok) return ERR(ST_INPUT, "%s: last line lacks images_per_s/step_s/world_size/global_batch", path);
    if (world != 1) return ERR(ST_INPUT, "%s: baseline must come from an np 1 run (world_size is %d)", path, world);
    if (!(b->images_per_s > 0) || !(b->step_s > 0)) return ERR(ST_INPUT, "%s: baseline has no positive timing", path);
    b->present = 1;
    return ST_OK;
}

int metrics_open(const char *path, int append, int *fd_out) {
    // O_NONBLOCK: a FIFO with no reader fails (ENXIO) instead of waiting; writes then block as usual.
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (append ? O_APPEND : O_TRUNC), 0644);
    if (fd < 0) return ERR(ST_INPUT, "%s: cannot open metrics file for writing: %s", path, strerror(errno));
    int fl = fcntl(fd, F_GETFL);
    if (fl != -1) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *fd_out = fd;
    return ST_OK;
}

int metrics_is_jsonl_head(const unsigned char *head, size_t n) { return n > 0 && head[0] == '{'; }

// A number, or null where it is not finite (JSON has no NaN or Inf; a diverged epoch must still be valid JSON).
static void add_num(cJSON *o, const char *key, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, key, v);
    else cJSON_AddNullToObject(o, key);
}

static int write_record(int fd, const char *path, cJSON *o);

int metrics_write_jsonl(int fd, const char *path, const epoch_metrics *m) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return ERR(ST_RUNTIME, "%s: out of host memory writing metrics", path);
    cJSON_AddNumberToObject(o, "epoch", m->epoch);
    cJSON_AddNumberToObject(o, "step", (double)m->step);
    const struct { const char *k; double v; } nums[] = {
        {"train_loss", m->train_loss}, {"train_acc", m->train_acc}, {"test_loss", m->test_loss},
        {"test_acc", m->test_acc}, {"images_per_s", m->images_per_s}, {"images_per_s_per_rank", m->images_per_s_per_rank},
        {"gflop_per_s", m->gflop_per_s},
        {"epoch_s", m->epoch_s}, {"eval_s", m->eval_s}, {"step_s", m->t.step_s}, {"data_s", m->t.data_s},
        {"forward_s", m->t.forward_s}, {"backward_s", m->t.backward_s}, {"comm_s", m->t.comm_s},
        {"exposed_comm_s", m->t.exposed_comm_s}, {"skew_s", m->t.skew_s}, {"optimizer_s", m->t.optimizer_s},
        {"lr", m->lr},
        {"grad_norm", m->grad_norm}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) add_num(o, nums[i].k, nums[i].v);
    cJSON_AddNumberToObject(o, "world_size", m->world);
    cJSON_AddNumberToObject(o, "batch", m->batch);
    cJSON_AddNumberToObject(o, "global_batch", m->global_batch);
    cJSON_AddStringToObject(o, "scaling", m->scaling == SCALING_STRONG ? "strong" : "weak");
    add_num(o, "scaling_efficiency", m->scaling_efficiency);
    cJSON_AddStringToObject(o, "efficiency_kind", m->efficiency_kind ? m->efficiency_kind : "");
    cJSON_AddNumberToObject(o, "bucket_kb", m->bucket_kb);
    cJSON_AddNumberToObject(o, "n_buckets", m->n_buckets);
    if (m->n_buckets > 0 && m->bucket_bytes) {
        cJSON *arr = cJSON_AddArrayToObject(o, "bucket_bytes");
        for (int i = 0; arr && i < m->n_buckets; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber((double)m->bucket_bytes[i]));
    }
    cJSON_AddNumberToObject(o, "overlap", m->overlap);
    cJSON_AddStringToObject(o, "backend", m->backend ? m->backend : "");
    cJSON_AddStringToObject(o, "comm", m->comm ? m->comm : "");
    cJSON_AddNumberToObject(o, "cuda_graph", m->cuda_graph);
    cJSON_AddNumberToObject(o, "timed_steps", m->timed_steps);
    cJSON_AddNumberToObject(o, "accum_steps", m->accum_steps);
    cJSON_AddStringToObject(o, "eval_set", m->eval_set ? m->eval_set : "test");
    add_num(o, "time", m->time);
    add_num(o, "data_wait_s", m->data_wait_s);
    cJSON_AddNumberToObject(o, "bad_images", (double)m->bad_images);
    cJSON_AddStringToObject(o, "precision", m->precision ? m->precision : "fp32");
    add_num(o, "loss_scale", m->loss_scale);
    cJSON_AddNumberToObject(o, "skipped_steps", (double)m->skipped_steps);
    add_num(o, "allreduces_per_step", m->allreduces_per_step);
    for (int h = 0; m->overlap == 2 && h < 2; h++) {
        cJSON *ab = cJSON_AddObjectToObject(o, h ? "ab_on" : "ab_off");
        if (!ab) {
            cJSON_Delete(o);
            return ERR(ST_RUNTIME, "%s: out of host memory writing metrics", path);
        }
        const step_times *x = &m->ab[h];
        const struct { const char *k; double v; } f[] = {{"step_s", x->step_s}, {"backward_s", x->backward_s},
            {"comm_s", x->comm_s}, {"exposed_comm_s", x->exposed_comm_s}, {"skew_s", x->skew_s}};
        for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) add_num(ab, f[i].k, f[i].v);
        cJSON_AddNumberToObject(ab, "steps", m->ab_steps[h]);
    }
    return write_record(fd, path, o);
}

// One JSON object as one line (o is consumed).
static int write_record(int fd, const char *path, cJSON *o) {
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text) return ERR(ST_RUNTIME, "%s: out of host memory writing metrics", path);
    char line[4096];
    int n = snprintf(line, sizeof line, "%s\n", text);
    cJSON_free(text);
    if (n < 0 || (size_t)n >= sizeof line) return ERR(ST_RUNTIME, "%s: metrics line too long", path);
    // The line goes out in one write; should the disk take only part of it, the part is cut off again, so the
    // file never ends in half a JSON object (a regular file: a device or pipe has no end to cut).
    off_t before = lseek(fd, 0, SEEK_END);
    int e = write_all(fd, line, (size_t)n);
    if (e != 0) {
        if (before >= 0 && ftruncate(fd, before) != 0) { /* the error below is the one to report */ }
        return ERR(ST_RUNTIME, "%s: cannot write metrics: %s", path, strerror(e));
    }
    return ST_OK;
}

int metrics_steps_path(const char *metrics, char *out, size_t n) {
    size_t len = strlen(metrics);
    if (len >= 6 && strcmp(metrics + len - 6, ".jsonl") == 0) len -= 6;
    if (snprintf(out, n, "%.*s.steps.jsonl", (int)len, metrics) >= (int)n)
        return ERR(ST_INPUT, "--metrics %s: path too long for its per-step file", metrics);
    return ST_OK;
}

int metrics_write_step(int fd, const char *path, const step_record *r) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return ERR(ST_RUNTIME, "%s: out of host memory writing metrics", path);
    cJSON_AddNumberToObject(o, "epoch", r->epoch);
    cJSON_AddNumberToObject(o, "step", (double)r->step);
    const struct { const char *k; double v; } nums[] = {
        {"time", r->time}, {"elapsed_s", r->elapsed_s}, {"loss", r->loss}, {"lr", r->lr},
        {"images_per_s", r->images_per_s}, {"grad_norm", r->grad_norm}, {"step_s", r->step_s},
        {"comm_s", r->comm_s}, {"exposed_comm_s", r->exposed_comm_s}, {"data_wait_s", r->data_wait_s}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) add_num(o, nums[i].k, nums[i].v);
    return write_record(fd, path, o);
}

// ---------------------------------------------------------------------------------------------------------
// --eval's report

static cJSON *eval_json(const eval_report *r) {
    const int k = r->classes;
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "checkpoint", r->checkpoint);
    if (r->train_epoch) cJSON_AddNumberToObject(o, "epoch", strtod(r->train_epoch, NULL));
    if (r->train_epoch) cJSON_AddBoolToObject(o, "epoch_complete", !r->train_mid_epoch);
    if (r->train_step) cJSON_AddNumberToObject(o, "step", strtod(r->train_step, NULL));
    cJSON_AddNumberToObject(o, "test_samples", r->samples);
    cJSON_AddNumberToObject(o, "test_loss", r->test_loss);
    cJSON_AddNumberToObject(o, "test_acc", r->test_acc);
    cJSON *per = cJSON_AddArrayToObject(o, "per_class_acc");
    cJSON *cnt = cJSON_AddArrayToObject(o, "class_samples");
    cJSON *conf = cJSON_AddArrayToObject(o, "confusion");
    for (int a = 0; per && cnt && conf && r->confusion && a < k; a++) {  // none above 1000 classes
        double n = 0;
        cJSON *row = cJSON_CreateArray();
        for (int b = 0; b < k; b++) {
            n += r->confusion[(size_t)a * k + b];
            cJSON_AddItemToArray(row, cJSON_CreateNumber(r->confusion[(size_t)a * k + b]));
        }
        cJSON_AddItemToArray(conf, row);
        cJSON_AddItemToArray(cnt, cJSON_CreateNumber(n));
        // A class without test samples has no accuracy (JSON has no NaN).
        cJSON_AddItemToArray(per, n > 0 ? cJSON_CreateNumber(r->confusion[(size_t)a * k + a] / n) : cJSON_CreateNull());
    }
    if (r->train_test_loss) {
        cJSON_AddNumberToObject(o, "train_run_test_loss", strtod(r->train_test_loss, NULL));
        cJSON_AddNumberToObject(o, "train_run_test_acc", strtod(r->train_test_acc, NULL));
        cJSON_AddBoolToObject(o, "same_as_training_run", r->same_as_training);
    } else {
        cJSON_AddNullToObject(o, "same_as_training_run");
    }
    cJSON_AddNumberToObject(o, "world_size", r->world);
    cJSON_AddNumberToObject(o, "eval_batch", r->eval_batch);
    cJSON_AddStringToObject(o, "backend", r->backend);
    return o;
}

int metrics_write_eval(const char *path, const eval_report *r) {
    cJSON *o = eval_json(r);
    char *text = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text) return ERR(ST_RUNTIME, "%s: out of host memory for the evaluation report", path);
    int fd = -1;
    int st = metrics_open(path, 0, &fd);
    if (st == ST_OK) {
        size_t n = strlen(text);
        text[n] = '\n';  // the NUL is not written
        int e = write_all(fd, text, n + 1);
        if (e != 0 && ftruncate(fd, 0) != 0) { /* the write's error is the one to report */ }
        if (close(fd) != 0 && e == 0) e = errno;
        if (e != 0) st = ERR(ST_RUNTIME, "%s: cannot write the evaluation report: %s", path, strerror(e));
    }
    free(text);
    return st;
}
