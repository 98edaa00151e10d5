// metrics.c — scaling efficiency, baseline file, JSON Lines output.
#include "metrics.h"

#include <cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

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

int baseline_load(const char *path, baseline *b) {
    memset(b, 0, sizeof *b);
    FILE *f = fopen(path, "rb");
    if (!f) return ERR(ST_INPUT, "%s: cannot open baseline: %s", path, strerror(errno));
    char line[8192], last[8192] = "";
    while (fgets(line, sizeof line, f))
        if (line[0] == '{') memcpy(last, line, sizeof last);
    fclose(f);
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

void metrics_write_jsonl(FILE *f, const epoch_metrics *m) {
    fprintf(f,
            "{\"epoch\":%d,\"step\":%lld,\"train_loss\":%.6f,\"train_acc\":%.6f,\"test_loss\":%.6f,"
            "\"test_acc\":%.6f,\"images_per_s\":%.2f,\"images_per_s_per_rank\":%.2f,\"epoch_s\":%.6f,"
            "\"eval_s\":%.6f,\"step_s\":%.9f,\"data_s\":%.9f,\"forward_s\":%.9f,\"backward_s\":%.9f,"
            "\"comm_s\":%.9f,\"exposed_comm_s\":%.9f,\"optimizer_s\":%.9f,\"lr\":%.8g,\"world_size\":%d,"
            "\"batch\":%d,\"global_batch\":%d,\"scaling\":\"%s\",\"scaling_efficiency\":%.6f,"
            "\"efficiency_kind\":\"%s\",\"bucket_kb\":%d,\"n_buckets\":%d,\"overlap\":%d,\"backend\":\"%s\","
            "\"comm\":\"%s\",\"cuda_graph\":%d,\"timed_steps\":%d}\n",
            m->epoch, m->step, m->train_loss, m->train_acc, m->test_loss, m->test_acc, m->images_per_s,
            m->images_per_s_per_rank, m->epoch_s, m->eval_s, m->t.step_s, m->t.data_s, m->t.forward_s,
            m->t.backward_s, m->t.comm_s, m->t.exposed_comm_s, m->t.optimizer_s, m->lr, m->world, m->batch,
            m->global_batch, m->scaling == SCALING_STRONG ? "strong" : "weak", m->scaling_efficiency,
            m->efficiency_kind, m->bucket_kb, m->n_buckets, m->overlap, m->backend, m->comm,
            m->cuda_graph, m->timed_steps);
    fflush(f);
}
