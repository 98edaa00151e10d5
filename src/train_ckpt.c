// train_ckpt.c — the training checkpoint's schema: model tensors under PyTorch names, optimizer state under
// "optim.<state>.<tensor>", position and provenance (the effective configuration, dataset hashes, the epoch's
// test figures) in __metadata__; save (rank 0, the others waiting with save_timeout_s), the epoch's copies
// (--save-every, --keep-best), exact resume, and weights only (--init-from, --eval, --predict).
#include <cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "common.h"
#include "train_state.h"

#define CKPT_FORMAT "ddp-cnn-1"

// ---------------------------------------------------------------------------------------------------------
// Checkpoints: model tensors under PyTorch names, optimizer state under "optim.<state>.<tensor>", position
// and provenance in __metadata__.

// Per layer: weight and bias for the parameters and each of at most two optimizer states, and at most three
// state tensors (batch norm's running_mean, running_var, num_batches_tracked).
#define CKPT_MAX_TENSORS (3 * 2 * CFG_MAX_LAYERS + 3 * CFG_MAX_LAYERS)

typedef struct tensor_list {
    ckpt_tensor t[CKPT_MAX_TENSORS];
    char names[CKPT_MAX_TENSORS][96];
    int64_t counts[CKPT_MAX_TENSORS];  // I64 values of the count tensors (the model keeps them as floats)
    int n;
} tensor_list;

// List every tensor (model, then optimizer state) with host pointers into `host` (the flat buffers
// concatenated: params, then each optimizer state).
static void tensors_list(const trainer *t, const float *host, tensor_list *tl) {
    tl->n = 0;
    int n_states = optim_n_state(&t->opt);
    int nt = model_param_tensor(&t->m, -1, NULL, NULL, NULL, NULL, NULL);
    for (int s = -1; s < n_states; s++) {
        const char *state_name = NULL;
        if (s >= 0) optim_state(&t->opt, s, &state_name);
        const float *base = host + (size_t)(s + 1) * t->m.n_params;
        for (int i = 0; i < nt; i++) {
            const char *lname;
            int is_bias, ndim;
            size_t off;
            int64_t shape[4];
            model_param_tensor(&t->m, i, &lname, &is_bias, &off, &ndim, shape);
            char *nm = tl->names[tl->n];
            if (s < 0) snprintf(nm, 96, "%s.%s", lname, is_bias ? "bias" : "weight");
            else snprintf(nm, 96, "optim.%s.%s.%s", state_name, lname, is_bias ? "bias" : "weight");
            ckpt_tensor *ct = &tl->t[tl->n++];
            memset(ct, 0, sizeof *ct);
            ct->name = nm;
            ct->data = base + off;
            ct->ndim = ndim;
            memcpy(ct->shape, shape, sizeof shape);
        }
    }
}

// Append the model's state tensors ("<layer>.running_mean", ...: PyTorch's buffer names) with host pointers into
// `state` (a host copy of m->state); a count (num_batches_tracked) is an I64 tensor, its value in tl->counts.
static void state_tensors_list(const trainer *t, const float *state, tensor_list *tl) {
    const int ns = model_state_tensor(&t->m, -1, NULL);
    for (int i = 0; i < ns; i++) {
        model_state_info si;
        model_state_tensor(&t->m, i, &si);
        char *nm = tl->names[tl->n];
        snprintf(nm, 96, "%s.%s", si.layer, si.suffix);
        ckpt_tensor *ct = &tl->t[tl->n];
        memset(ct, 0, sizeof *ct);
        ct->name = nm;
        ct->ndim = si.ndim;
        memcpy(ct->shape, si.shape, sizeof si.shape);
        if (si.is_count) {
            tl->counts[tl->n] = (int64_t)state[si.offset];
            ct->data = &tl->counts[tl->n];
            ct->dtype = CKPT_I64;
        } else {
            ct->data = state + si.offset;
        }
        tl->n++;
    }
}

// A count (num_batches_tracked) read from a file into the model's float: exact below 2^24.
static int count_to_float(const ckpt_file *f, const char *name, int64_t v, float *dst) {
    if (v < 0 || v > (1LL << 24))
        return ERR(ST_INPUT, "%s: tensor '%s' is %lld, not a count in [0, 2^24] (the model keeps it as a float)",
                   ckpt_path(f), name, (long long)v);
    *dst = (float)v;
    return ST_OK;
}

// One state tensor from the file into its place in `state` (a host copy of m->state): dtype, shape and values
// checked.
static int state_tensor_read(const ckpt_file *f, const model_state_info *si, const char *name, float *state) {
    if (si->is_count) {
        int64_t v = 0;
        TRY(ckpt_read_tensor_i64(f, name, si->ndim, si->shape, &v));
        return count_to_float(f, name, v, state + si->offset);
    }
    size_t count = 1;
    for (int d = 0; d < si->ndim; d++) count *= (size_t)si->shape[d];
    TRY(ckpt_read_tensor(f, name, si->ndim, si->shape, state + si->offset));
    return ckpt_require_finite(f, name, state + si->offset, count);
}

// The model's state (running statistics) on the host, malloc'd (at least one float, so never NULL on success).
static int host_model_state(const trainer *t, float **out) {
    float *h = malloc((t->m.n_state + 1) * sizeof(float));
    TRY_ALLOC(h);
    int st = t->m.n_state ? backend_download(&t->be, h, t->m.state, t->m.n_state * sizeof(float)) : ST_OK;
    if (st != ST_OK) {
        free(h);
        return st;
    }
    *out = h;
    return ST_OK;
}

static int host_model_state_upload(trainer *t, const float *h) {
    return t->m.n_state ? backend_upload(&t->be, t->m.state, h, t->m.n_state * sizeof(float)) : ST_OK;
}

// Nothing non-finite is ever saved: a NaN or Inf in any float tensor (parameters, optimizer state, running
// statistics) refuses the save and leaves the file as it was (the last good state).
static int tensors_finite(const trainer *t, const char *path, const tensor_list *tl) {
    for (int i = 0; i < tl->n; i++) {
        const ckpt_tensor *ct = &tl->t[i];
        if (ct->dtype != CKPT_F32) continue;
        size_t count = 1, bad = 0;
        for (int d = 0; d < ct->ndim; d++) count *= (size_t)ct->shape[d];
        for (size_t k = 0; k < count; k++) bad += !isfinite(((const float *)ct->data)[k]);
        if (bad)
            return ERR(ST_DIVERGED, "training diverged by step %lld: tensor '%s' holds %zu non-finite value(s); "
                                    "not saved, %s was not replaced", t->global_step, ct->name, bad, path);
    }
    return ST_OK;
}

// PowerSGD's state (train_psgd_gather): "optim.powersgd.q" (every matrix's Q, bucket by bucket; the same on every
// rank) and "optim.powersgd.error.rank<r>" (rank r's error feedback, the gradient buffer's layout) after the
// list's tensors, in a malloc'd array (*out; names in *names), and the metadata resume checks them by.
typedef struct psgd_ckpt {
    const float *q, *err;   // NULL: nothing to save
    char layout[24], world[16], nq[24], ne[24];
} psgd_ckpt;

static int psgd_tensors(const trainer *t, const tensor_list *tl, psgd_ckpt *pc, ckpt_tensor **out, char **names) {
    const int extra = 1 + t->world;
    const size_t nq = powersgd_q_floats(t->psgd), ne = powersgd_error_floats(t->psgd);
    ckpt_tensor *all = malloc((size_t)(tl->n + extra) * sizeof *all);
    char *nm = malloc((size_t)extra * 48);
    if (!all || !nm) {
        free(all), free(nm);
        return ERR(ST_RUNTIME, "out of host memory for the checkpoint's PowerSGD tensors");
    }
    memcpy(all, tl->t, (size_t)tl->n * sizeof *all);
    for (int k = 0; k < extra; k++) {
        ckpt_tensor *ct = &all[tl->n + k];
        memset(ct, 0, sizeof *ct);
        ct->name = nm + (size_t)k * 48;
        ct->ndim = 1;
        if (k == 0) snprintf(nm, 48, "optim.powersgd.q"), ct->data = pc->q, ct->shape[0] = (int64_t)nq;
        else snprintf(nm + (size_t)k * 48, 48, "optim.powersgd.error.rank%d", k - 1), ct->data = pc->err + (size_t)(k - 1) * ne,
             ct->shape[0] = (int64_t)ne;
    }
    snprintf(pc->layout, sizeof pc->layout, "%016" PRIx64, powersgd_layout_hash(t->psgd));
    snprintf(pc->world, sizeof pc->world, "%d", t->world);
    snprintf(pc->nq, sizeof pc->nq, "%zu", nq);
    snprintf(pc->ne, sizeof pc->ne, "%zu", ne);
    *out = all, *names = nm;
    return ST_OK;
}

static int checkpoint_save(trainer *t, const char *path, double loss_sum, double correct_sum, psgd_ckpt *pc) {
    if (t->rank != 0) return ST_OK;
    if (t->hooks->slow_save) sleep(t->hooks->slow_save_s);  // test hook: a slow file system
    float *host = NULL, *state = NULL;
    TRY(train_host_state(t, &host));
    int st0 = host_model_state(t, &state);
    tensor_list *tl = st0 == ST_OK ? malloc(sizeof *tl) : NULL;
    if (!tl) {
        free(host);
        free(state);
        return st0 != ST_OK ? st0 : ERR(ST_RUNTIME, "out of host memory for the checkpoint's tensor list");
    }
    tensors_list(t, host, tl);
    state_tensors_list(t, state, tl);
    int bad_st = tensors_finite(t, path, tl);
    if (bad_st != ST_OK) {
        free(tl);
        free(host);
        free(state);
        return bad_st;
    }
    char v[20][64];
    snprintf(v[0], 64, "%d", t->epoch);
    snprintf(v[1], 64, "%d", t->step_in_epoch);
    snprintf(v[2], 64, "%lld", t->global_step);
    snprintf(v[3], 64, "%" PRId64, t->opt.t);
    snprintf(v[4], 64, "%" PRIu64, (uint64_t)t->cfg->seed);
    snprintf(v[5], 64, "%d", t->G);
    snprintf(v[6], 64, "%d", t->world);
    snprintf(v[7], 64, "%.17g", loss_sum);
    snprintf(v[8], 64, "%.17g", correct_sum);
    snprintf(v[9], 64, "%s", optim_name(t->opt.kind));
    snprintf(v[10], 64, "%d", t->train.n);
    snprintf(v[11], 64, "%016" PRIx64, train_data_hash(t));
    snprintf(v[12], 64, "%.17g", t->ckpt_test_loss);
    snprintf(v[13], 64, "%.17g", t->ckpt_test_acc);
    snprintf(v[14], 64, "%.17g", t->best_acc);
    // The effective configuration travels with the weights: --eval, --predict, --init-from and --resume
    // need no --config (config_load_text reads it back).
    char *ini = config_text(t->cfg);
    if (!ini) {
        free(tl);
        free(host);
        free(state);
        return ERR(ST_RUNTIME, "out of host memory for the checkpoint's configuration text");
    }
    ckpt_kv meta[28] = {{"format", CKPT_FORMAT},     {"epoch", v[0]},          {"step_in_epoch", v[1]},
                        {"global_step", v[2]},       {"optim_t", v[3]},        {"seed", v[4]},
                        {"global_batch", v[5]},      {"world_size", v[6]},     {"epoch_loss_sum", v[7]},
                        {"epoch_correct_sum", v[8]}, {"optimizer", v[9]},      {"config", t->cfg->path},
                        {"train_samples", v[10]},    {"train_data_hash", v[11]}, {"config_ini", ini}};
    int n_meta = 15;
    if (t->ckpt_has_test) {  // saved at an epoch's end: what that epoch's evaluation printed, exactly
        meta[n_meta++] = (ckpt_kv){"test_loss", v[12]};
        meta[n_meta++] = (ckpt_kv){"test_acc", v[13]};
    }
    if (t->have_best) meta[n_meta++] = (ckpt_kv){"best_test_acc", v[14]};
    if (t->ls.on) {  // fp16's loss scaler: its scale, schedule position and the steps it skipped (src/loss_scale.h)
        snprintf(v[15], 64, "%.17g", t->ls.scale);
        snprintf(v[16], 64, "%lld", t->ls.good);
        snprintf(v[17], 64, "%lld", t->ls.skipped);
        meta[n_meta++] = (ckpt_kv){"loss_scale", v[15]};
        meta[n_meta++] = (ckpt_kv){"loss_scale_good_steps", v[16]};
        meta[n_meta++] = (ckpt_kv){"skipped_steps", v[17]};
    }
    // Streamed sets: the class names, index by index (a JSON array of strings), for --eval and --predict.
    char *names = NULL;
    if (t->sets) {
        cJSON *arr = cJSON_CreateArray();
        for (int i = 0; arr && i < t->sets[0].classes; i++) cJSON_AddItemToArray(arr, cJSON_CreateString(t->sets[0].class_names[i]));
        names = arr ? cJSON_PrintUnformatted(arr) : NULL;
        cJSON_Delete(arr);
        if (!names) {
            free(ini), free(tl), free(host), free(state);
            return ERR(ST_RUNTIME, "out of host memory for the checkpoint's class names");
        }
        meta[n_meta++] = (ckpt_kv){"class_names", names};
    }
    ckpt_tensor *all = NULL;
    char *psgd_names = NULL;
    int st = ST_OK;
    if (pc->q) {
        st = psgd_tensors(t, tl, pc, &all, &psgd_names);
        meta[n_meta++] = (ckpt_kv){"powersgd_layout", pc->layout};
        meta[n_meta++] = (ckpt_kv){"powersgd_world", pc->world};
        meta[n_meta++] = (ckpt_kv){"powersgd_q_floats", pc->nq};
        meta[n_meta++] = (ckpt_kv){"powersgd_error_floats", pc->ne};
    }
    if (st == ST_OK) st = ckpt_save(path, all ? all : tl->t, tl->n + (all ? 1 + t->world : 0), meta, n_meta);
    free(all), free(psgd_names);
    cJSON_free(names);
    free(ini);
    free(tl);
    free(host);
    free(state);
    return st;
}

// Rank 0 writes the checkpoint while the others wait for it at a barrier whose deadline allows for the write
// (parallel.save_timeout_s: a large checkpoint on a slow file system takes longer than any collective may), and
// whose timeout says that it was the save. A write that fails on rank 0 is its local error (the job is aborted).
int train_ckpt_save_agreed(trainer *t, const char *path, double loss_sum, double correct_sum) {
    TRY(train_params_check(t));     // never replace a good checkpoint with a diverged state (every rank alike)
    TRY(train_state_broadcast(t));  // the file holds every rank's running statistics: rank 0's
    psgd_ckpt pc = {0};
    float *q = NULL, *err = NULL;
    TRY(train_psgd_gather(t, &q, &err));  // (collective)
    pc.q = q, pc.err = err;
    const int st = checkpoint_save(t, path, loss_sum, correct_sum, &pc);
    free(q), free(err);
    TRY(st);
    if (t->world == 1) return ST_OK;
    char what[CFG_PATH_MAX + 160];
    snprintf(what, sizeof what, "waiting for rank 0 to write checkpoint '%s'", path);
    const double timeout_s = fmax(t->cfg->comm_timeout_s, t->cfg->save_timeout_s);
    return comm_barrier_within(t->c, timeout_s, what);
}

// Metadata values are strings; each one resume uses is parsed whole and range-checked, naming the key.
static int meta_int(const ckpt_file *f, const char *key, long long lo, long long hi, long long *out) {
    const char *s = ckpt_meta(f, key);
    char *end = NULL;
    errno = 0;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (!s || *s == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi)
        return ERR(ST_INPUT, "%s: metadata '%s' is %s%s%s, not an integer in [%lld, %lld] (not a ddp-cnn checkpoint?)",
                   ckpt_path(f), key, s ? "'" : "missing", s ? s : "", s ? "'" : "", lo, hi);
    *out = v;
    return ST_OK;
}

static int meta_double(const ckpt_file *f, const char *key, double lo, double hi, double *out) {
    const char *s = ckpt_meta(f, key);
    if (!s || parse_float(s, lo, hi, out) != 0)
        return ERR(ST_INPUT, "%s: metadata '%s' is %s%s%s, not a finite number in [%g, %g]", ckpt_path(f), key,
                   s ? "'" : "missing", s ? s : "", s ? "'" : "", lo, hi);
    return ST_OK;
}

// The checkpoint's own record of what it was trained on must be this run's, or the resumed run would not be
// the uninterrupted one (docs/outputs.md: bit-identical).
static int meta_same(const ckpt_file *f, const char *key, const char *have, const char *what) {
    const char *s = ckpt_meta(f, key);
    if (!s) return ERR(ST_INPUT, "%s: metadata '%s' missing (written by an older ddp-cnn?)", ckpt_path(f), key);
    if (strcmp(s, have) != 0)
        return ERR(ST_INPUT, "%s: metadata '%s' is %s, this run has %s (%s; resuming would not continue the same run)",
                   ckpt_path(f), key, s, have, what);
    return ST_OK;
}

typedef struct ckpt_position {
    long long epoch, step, gstep, ot;
    long long skipped;  // steps fp16's loss scaler skipped (the optimizer did not count them); 0 when absent
    double loss_sum, correct_sum;
} ckpt_position;

static int checkpoint_check_meta(trainer *t, const ckpt_file *f, ckpt_position *p) {
    const char *path = ckpt_path(f);
    const char *fmt = ckpt_meta(f, "format");
    if (!fmt || strcmp(fmt, CKPT_FORMAT) != 0)
        return ERR(ST_INPUT, "%s: not a ddp-cnn training checkpoint (metadata format is '%s', want '%s')", path,
                   fmt ? fmt : "", CKPT_FORMAT);
    long long gb = 0;
    TRY(meta_int(f, "epoch", 0, 1000000, &p->epoch));
    TRY(meta_int(f, "step_in_epoch", 0, INT32_MAX, &p->step));
    TRY(meta_int(f, "global_step", 0, INT64_MAX / 2, &p->gstep));
    TRY(meta_int(f, "optim_t", 0, INT64_MAX / 2, &p->ot));
    TRY(meta_int(f, "global_batch", 1, INT32_MAX, &gb));
    if (gb != t->G)
        return ERR(ST_INPUT, "%s: trained with global batch %lld, this run has %d (the sample order would differ)",
                   path, gb, t->G);
    const char *opt_name = ckpt_meta(f, "optimizer");
    if (!opt_name || strcmp(opt_name, optim_name(t->opt.kind)) != 0)
        return ERR(ST_INPUT, "%s: optimizer '%s' differs from the config's", path, opt_name ? opt_name : "");
    char have[64];
    snprintf(have, sizeof have, "%" PRIu64, (uint64_t)t->cfg->seed);
    TRY(meta_same(f, "seed", have, "net.seed / --seed"));
    snprintf(have, sizeof have, "%d", t->train.n);
    TRY(meta_same(f, "train_samples", have, "training samples after data.train_limit"));
    snprintf(have, sizeof have, "%016" PRIx64, train_data_hash(t));
    TRY(meta_same(f, "train_data_hash", have, "the training data differ: another data file or data.train_limit"));
    if (p->step >= t->steps_per_epoch)
        return ERR(ST_INPUT, "%s: step_in_epoch %lld >= %d steps per epoch of this run", path, p->step,
                   t->steps_per_epoch);
    // Every epoch runs steps_per_epoch steps and the optimizer counts one per step.
    if (p->gstep != p->epoch * t->steps_per_epoch + p->step)
        return ERR(ST_INPUT, "%s: metadata 'global_step' is %lld, but epoch %lld x %d steps + step_in_epoch %lld is %lld",
                   path, p->gstep, p->epoch, t->steps_per_epoch, p->step, p->epoch * t->steps_per_epoch + p->step);
    if (ckpt_meta(f, "skipped_steps")) TRY(meta_int(f, "skipped_steps", 0, p->gstep, &p->skipped));
    if (p->ot + p->skipped != p->gstep)
        return ERR(ST_INPUT, "%s: metadata 'optim_t' is %lld, but the optimizer takes one step per global step (%lld) "
                             "less the %lld skipped", path, p->ot, p->gstep, p->skipped);
    // The partial epoch's sums: a loss sum is >= 0, a count of correct samples at most the samples seen.
    double seen = (double)p->step * t->G;
    TRY(meta_double(f, "epoch_loss_sum", 0, p->step ? 1e300 : 0, &p->loss_sum));
    TRY(meta_double(f, "epoch_correct_sum", 0, seen, &p->correct_sum));
    if (p->correct_sum != floor(p->correct_sum))
        return ERR(ST_INPUT, "%s: metadata 'epoch_correct_sum' is %s, not a whole count", path,
                   ckpt_meta(f, "epoch_correct_sum"));
    return ST_OK;
}

// A tensor of the file that this run would not read means the configuration is not the checkpoint's model (a
// layer removed, a bias turned off by --set): refused, naming it, instead of silently dropped.
static int tensor_unused(const trainer *t, const ckpt_file *f, const char *name, const char *use) {
    const int init = strcmp(use, "--init-from") == 0;
    return ERR(ST_INPUT, "%s: tensor '%s' is not used by the model of %s (a layer or bias the configuration does not "
                         "have?); %s uses every tensor of its checkpoint%s%s", ckpt_path(f), name, t->cfg->path, use,
               init ? " unless --init-exclude names it: --init-exclude " : " (only --init-from with --init-exclude may "
                                                                          "skip tensors)", init ? name : "");
}

static int resume_tensors_used(const trainer *t, const ckpt_file *f, const tensor_list *tl) {
    for (int i = 0; i < ckpt_n_tensors(f); i++) {
        const char *name = ckpt_tensor_name(f, i);
        int known = strncmp(name, "optim.powersgd.", 15) == 0;  // psgd_resume_read's
        for (int k = 0; k < tl->n && !known; k++) known = strcmp(tl->t[k].name, name) == 0;
        for (int k = 0, ns = model_state_tensor(&t->m, -1, NULL); k < ns && !known; k++) {
            model_state_info si;
            char sn[96];
            model_state_tensor(&t->m, k, &si);
            snprintf(sn, sizeof sn, "%s.%s", si.layer, si.suffix);
            known = strcmp(sn, name) == 0;
        }
        if (!known) return tensor_unused(t, f, name, "--resume");
    }
    return ST_OK;
}

// fp16's loss scaler where it left off (a checkpoint without one: the scaler starts afresh).
static int loss_scale_resume(trainer *t, const ckpt_file *f, const ckpt_position *p) {
    if (!t->ls.on) return ST_OK;
    t->ls.skipped = p->skipped;
    if (!ckpt_meta(f, "loss_scale")) return ST_OK;
    TRY(meta_double(f, "loss_scale", LOSS_SCALE_MIN, 1e30, &t->ls.scale));
    return meta_int(f, "loss_scale_good_steps", 0, t->ls.growth_interval, &t->ls.good);
}

// PowerSGD's state, held in t->psgd_resume until train_ddp_start has the buckets (and checks the layout): Q, and
// this rank's error when the world size is the checkpoint's (each rank's error is its own).
static int psgd_resume_read(trainer *t, const ckpt_file *f) {
    if (!ckpt_has_tensor(f, "optim.powersgd.q")) return ST_OK;
    if (t->cfg->compress != COMPRESS_POWERSGD || !t->use_comm) {
        LOG0("note: --resume: the PowerSGD state in %s is not used (this run does not compress with powersgd)\n",
             ckpt_path(f));
        return ST_OK;
    }
    long long world = 0, nq = 0, ne = 0;
    TRY(meta_int(f, "powersgd_world", 1, 1 << 20, &world));
    TRY(meta_int(f, "powersgd_q_floats", 0, INT64_MAX / 8, &nq));
    TRY(meta_int(f, "powersgd_error_floats", 0, INT64_MAX / 8, &ne));
    const char *layout = ckpt_meta(f, "powersgd_layout");
    char *end = NULL;
    const uint64_t lh = layout ? strtoull(layout, &end, 16) : 0;
    if (!layout || !*layout || *end)
        return ERR(ST_INPUT, "%s: metadata 'powersgd_layout' is %s, not a hexadecimal hash", ckpt_path(f),
                   layout ? layout : "missing");
    psgd_saved *r = &t->psgd_resume;
    r->q = malloc(((size_t)nq + 1) * sizeof *r->q);
    TRY_ALLOC(r->q);
    r->nq = (size_t)nq, r->nerr = (size_t)ne, r->layout = lh;
    TRY(ckpt_read_tensor(f, "optim.powersgd.q", 1, (int64_t[]){nq}, r->q));
    TRY(ckpt_require_finite(f, "optim.powersgd.q", r->q, (size_t)nq));
    if (world != t->world) {
        LOG0("note: --resume: PowerSGD's error feedback in %s is per rank, for %lld ranks; this run has %d: Q is kept, "
             "the error starts at zero\n", ckpt_path(f), world, t->world);
        return ST_OK;
    }
    char name[48];
    snprintf(name, sizeof name, "optim.powersgd.error.rank%d", t->rank);
    r->err = malloc(((size_t)ne + 1) * sizeof *r->err);
    TRY_ALLOC(r->err);
    TRY(ckpt_read_tensor(f, name, 1, (int64_t[]){ne}, r->err));
    return ckpt_require_finite(f, name, r->err, (size_t)ne);
}

int train_ckpt_resume(trainer *t, const char *path) {
    ckpt_file *f = NULL;
    TRY(ckpt_load(path, &f));
    float *host = NULL, *state = NULL;
    tensor_list *tl = NULL;
    ckpt_position p = {0};
    int st = checkpoint_check_meta(t, f, &p);
    if (st) goto done;
    int n_states = optim_n_state(&t->opt);
    size_t n = t->m.n_params;
    host = malloc((size_t)(n_states + 1) * n * sizeof(float));
    tl = malloc(sizeof *tl);
    if (!host || !tl) {
        st = ERR(ST_RUNTIME, "out of host memory for the checkpoint's %zu parameters and optimizer state", n);
        goto done;
    }
    tensors_list(t, host, tl);
    if ((st = resume_tensors_used(t, f, tl))) goto done;
    for (int i = 0; i < tl->n && st == ST_OK; i++) {
        const ckpt_tensor *ct = &tl->t[i];
        size_t count = 1;
        for (int d = 0; d < ct->ndim; d++) count *= (size_t)ct->shape[d];
        st = ckpt_read_tensor(f, ct->name, ct->ndim, ct->shape, (float *)ct->data);
        if (st == ST_OK) st = ckpt_require_finite(f, ct->name, ct->data, count);
    }
    if (st) goto done;
    // The running statistics: exact resume needs them (a file without them is of a model without state).
    if ((st = host_model_state(t, &state))) goto done;
    for (int i = 0, ns = model_state_tensor(&t->m, -1, NULL); i < ns && st == ST_OK; i++) {
        model_state_info si;
        model_state_tensor(&t->m, i, &si);
        char name[96];
        snprintf(name, sizeof name, "%s.%s", si.layer, si.suffix);
        st = state_tensor_read(f, &si, name, state);
    }
    if (st) goto done;
    if ((st = train_host_state_upload(t, host))) goto done;
    if ((st = host_model_state_upload(t, state))) goto done;
    if ((st = psgd_resume_read(t, f))) goto done;
    t->epoch = (int)p.epoch;
    t->step_in_epoch = (int)p.step;
    t->global_step = p.gstep;
    t->opt.t = p.ot;
    if ((st = loss_scale_resume(t, f, &p))) goto done;
    t->loss_carry = p.loss_sum;
    t->correct_carry = p.correct_sum;
    if (ckpt_meta(f, "best_test_acc")) {  // --keep-best: the best so far travels with the run
        st = meta_double(f, "best_test_acc", 0, 1, &t->best_acc);
        t->have_best = st == ST_OK;
    }
done:
    free(tl);
    free(host);
    free(state);
    ckpt_free(f);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Weights only (--init-from, --eval, --predict): the model's tensors from a checkpoint (ours, or a PyTorch state
// dict saved as safetensors), no optimizer state, position or schedule.

// Model tensor i: its PyTorch name, layer name, shape and offset in the flat parameter buffer -- the parameters
// first, then the state tensors (running statistics: PyTorch's buffers, in its state_dict as well), whose offset
// is into the state buffer.
typedef struct tensor_info {
    char name[96];
    const char *layer;
    int ndim;
    int64_t shape[4];
    size_t off;
    int is_state;          // 1: a state tensor, described by si
    model_state_info si;
} tensor_info;

// The number of model tensors: parameters and state.
static int model_tensors(const trainer *t) {
    return model_param_tensor(&t->m, -1, NULL, NULL, NULL, NULL, NULL) + model_state_tensor(&t->m, -1, NULL);
}

static void model_tensor(const trainer *t, int i, tensor_info *ti) {
    const int np = model_param_tensor(&t->m, -1, NULL, NULL, NULL, NULL, NULL);
    ti->is_state = i >= np;
    if (ti->is_state) {
        model_state_tensor(&t->m, i - np, &ti->si);
        ti->layer = ti->si.layer;
        ti->ndim = ti->si.ndim;
        memcpy(ti->shape, ti->si.shape, sizeof ti->shape);
        ti->off = ti->si.offset;
        snprintf(ti->name, sizeof ti->name, "%s.%s", ti->layer, ti->si.suffix);
        return;
    }
    int is_bias;
    model_param_tensor(&t->m, i, &ti->layer, &is_bias, &ti->off, &ti->ndim, ti->shape);
    snprintf(ti->name, sizeof ti->name, "%s.%s", ti->layer, is_bias ? "bias" : "weight");
}

// Entry [s, s + k) of a comma-separated list is the layer or the tensor.
static int entry_is(const char *s, size_t k, const char *layer, const char *tensor) {
    return (strlen(layer) == k && strncmp(s, layer, k) == 0) || (strlen(tensor) == k && strncmp(s, tensor, k) == 0);
}

static int listed(const char *list, const char *layer, const char *tensor) {
    for (const char *s = list; s && *s;) {
        size_t k = strcspn(s, ",");
        if (entry_is(s, k, layer, tensor)) return 1;
        s += k + (s[k] == ',');
    }
    return 0;
}

// The model's tensor names, for messages ("conv1.weight, conv1.bias, ..."), cut to fit.
static void model_tensor_names(const trainer *t, char *buf, size_t n) {
    int nt = model_tensors(t);
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < nt && used + 1 < n; i++) {
        tensor_info ti;
        model_tensor(t, i, &ti);
        int w = snprintf(buf + used, n - used, "%s%s", i ? ", " : "", ti.name);
        used = w < 0 ? n : used + (size_t)w;
    }
}

// Every entry of --init-exclude names a layer with tensors, or one tensor, of this model or of the file (a layer
// the new model drops).
static int exclude_check(const trainer *t, const ckpt_file *f, const char *list) {
    int nt = model_tensors(t);
    for (const char *s = list; *s || s == list;) {
        size_t k = strcspn(s, ",");
        int found = 0;
        for (int i = 0; i < nt && !found; i++) {
            tensor_info ti;
            model_tensor(t, i, &ti);
            found = entry_is(s, k, ti.layer, ti.name);
        }
        for (int i = 0; i < ckpt_n_tensors(f) && !found; i++) {
            const char *name = ckpt_tensor_name(f, i);
            const char *dot = strrchr(name, '.');
            found = (strlen(name) == k && strncmp(s, name, k) == 0) ||
                    (dot && (size_t)(dot - name) == k && strncmp(s, name, k) == 0);
        }
        if (!found) {
            char names[1024];
            model_tensor_names(t, names, sizeof names);
            return ERR(ST_INPUT, "--init-exclude: '%.*s' names no layer or tensor of the model of %s (its tensors: %s) "
                                 "nor of %s", (int)k, s, t->cfg->path, names, ckpt_path(f));
        }
        if (!s[k]) break;
        s += k + 1;
    }
    return ST_OK;
}

// Every model tensor of the file (optimizer state "optim.*" aside) is one the model reads, unless --init-exclude
// names it or its layer.
static int weights_tensors_used(const trainer *t, const ckpt_file *f, const char *exclude, const char *use) {
    const int nt = model_tensors(t);
    for (int i = 0; i < ckpt_n_tensors(f); i++) {
        const char *name = ckpt_tensor_name(f, i);
        if (strncmp(name, "optim.", 6) == 0) continue;
        int known = 0;
        for (int k = 0; k < nt && !known; k++) {
            tensor_info ti;
            model_tensor(t, k, &ti);
            known = strcmp(ti.name, name) == 0;
        }
        if (known || !exclude) {
            if (!known) return tensor_unused(t, f, name, use);
            continue;
        }
        char layer[96];
        const char *dot = strrchr(name, '.');
        snprintf(layer, sizeof layer, "%.*s", dot ? (int)(dot - name) : (int)strlen(name), name);
        if (!listed(exclude, layer, name)) return tensor_unused(t, f, name, use);
    }
    return ST_OK;
}

// Every model tensor not excluded (parameters and running statistics) must be in the file with the same shape
// (else ST_INPUT naming the tensor and both shapes); a file holding none of them is "nothing matching". Excluded
// tensors keep their initial values.
int train_weights_load(trainer *t, const char *path, const char *exclude, int *loaded, int *total) {
    ckpt_file *f = NULL;
    TRY(ckpt_load(path, &f));
    const char *use = t->o->eval_path ? "--eval" : t->o->predict_path ? "--predict" : "--init-from";
    int st0 = exclude ? exclude_check(t, f, exclude) : ST_OK;
    if (st0 != ST_OK) {
        ckpt_free(f);
        return st0;
    }
    const size_t n = t->m.n_params;
    const int nt = model_tensors(t);
    float *host = malloc(n * sizeof(float)), *state = NULL;
    int st = host ? backend_download(&t->be, host, t->m.params, n * sizeof(float))
                  : ERR(ST_RUNTIME, "out of host memory for %zu parameters", n);
    if (st == ST_OK) st = host_model_state(t, &state);
    int wanted = 0, present = 0;
    for (int i = 0; i < nt; i++) {
        tensor_info ti;
        model_tensor(t, i, &ti);
        if (listed(exclude, ti.layer, ti.name)) continue;
        wanted++;
        present += ckpt_has_tensor(f, ti.name);
    }
    char names[1024];
    if (st == ST_OK && wanted == 0) st = ERR(ST_INPUT, "--init-exclude %s leaves no tensor of the model to load", exclude);
    if (st == ST_OK && present == 0) {
        model_tensor_names(t, names, sizeof names);
        st = ERR(ST_INPUT, "%s: none of the model's tensors (%s) is in this file: nothing matching to load "
                           "(a checkpoint of another model?)", path, names);
    }
    if (st == ST_OK) st = weights_tensors_used(t, f, exclude, use);
    for (int i = 0; i < nt && st == ST_OK; i++) {
        tensor_info ti;
        size_t count = 1;
        model_tensor(t, i, &ti);
        if (listed(exclude, ti.layer, ti.name)) continue;
        if (ti.is_state) {
            st = state_tensor_read(f, &ti.si, ti.name, state);
            continue;
        }
        for (int d = 0; d < ti.ndim; d++) count *= (size_t)ti.shape[d];
        st = ckpt_read_tensor(f, ti.name, ti.ndim, ti.shape, host + ti.off);
        if (st == ST_OK) st = ckpt_require_finite(f, ti.name, host + ti.off, count);
    }
    if (st == ST_OK) st = backend_upload(&t->be, t->m.params, host, n * sizeof(float));
    if (st == ST_OK) st = host_model_state_upload(t, state);
    free(host);
    free(state);
    ckpt_free(f);
    *loaded = wanted, *total = nt;
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// At an epoch's end: the --save checkpoint and its copies

// At an epoch's end (t->epoch already counts it): the --save checkpoint with the epoch's test figures, then
// the copies --save-every and --keep-best ask for. Each is a whole checkpoint, written atomically.
int train_ckpt_save_epoch(trainer *t, double test_loss, double test_acc) {
    const train_opts *o = t->o;
    t->ckpt_test_loss = test_loss, t->ckpt_test_acc = test_acc, t->ckpt_has_test = 1;
    const int best = o->keep_best && (!t->have_best || test_acc > t->best_acc);
    if (best) t->best_acc = test_acc, t->have_best = 1;
    char path[CFG_PATH_MAX + 64], suffix[32];
    int st = train_ckpt_save_agreed(t, o->save_path, 0, 0);
    if (st == ST_OK && o->save_every > 0 && t->epoch % o->save_every == 0) {
        snprintf(suffix, sizeof suffix, "-e%d", t->epoch);
        st = train_copy_path(o->save_path, suffix, path, sizeof path);
        if (st == ST_OK) st = train_ckpt_save_agreed(t, path, 0, 0);
    }
    if (st == ST_OK && best) {
        st = train_copy_path(o->save_path, "-best", path, sizeof path);
        if (st == ST_OK) st = train_ckpt_save_agreed(t, path, 0, 0);
        if (st == ST_OK) LOG0("  best test accuracy so far (%.4f): kept as %s\n", test_acc, path);
    }
    t->ckpt_has_test = 0;
    return st;
}
