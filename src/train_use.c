// train_use.c — using a trained model: --eval (test loss and accuracy through the training run's own evaluation,
// per-class accuracy, confusion matrix) and --predict (class probabilities as CSV). No training data, no
// optimizer: the backend, the test set (or --predict's images), the model and its weights.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "augment.h"
#include "checkpoint.h"
#include "common.h"
#include "fileio.h"
#include "train_state.h"

// ---------------------------------------------------------------------------------------------------------
// Logits on the host

// ---------------------------------------------------------------------------------------------------------
// Set-up, then the same evaluation code as an epoch's end

// --images names one IDX or CIFAR-10 file (an array of images, told by its first bytes: gzip or IDX magic, or a
// CIFAR-10 label byte < 10), or else image files, folders of them and list files (text).
static int images_are_array(const train_opts *o) {
    if (o->n_images != 1) return 0;
    const char *p = o->images_path, *dot = strrchr(p, '.');
    if (dot && (strcasecmp(dot, ".png") == 0 || strcasecmp(dot, ".jpg") == 0 || strcasecmp(dot, ".jpeg") == 0)) return 0;
    struct stat sb;
    if (stat(p, &sb) != 0 || !S_ISREG(sb.st_mode)) return stat(p, &sb) != 0;  // a missing file: the old message
    unsigned char head[3] = {0xff, 0xff, 0xff};
    FILE *f = fopen(p, "rb");
    if (!f) return 1;
    const size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    return got >= 1 && ((head[0] == 0x1f && got >= 2 && head[1] == 0x8b) || (got >= 3 && head[0] == 0 && head[1] == 0 &&
                                                                              head[2] == 0x08) || head[0] < 10);
}

static int use_data_setup(trainer *t) {
    const net_config *cfg = t->cfg;
    const char *name;
    if (t->o->predict_path && !images_are_array(t->o)) {  // streamed: decoded with the evaluation transforms
        t->test = (dataset){.c = cfg->channels, .h = cfg->height, .w = cfg->width, .classes = cfg->classes};
        TRY(train_stream_predict_setup(t, t->o->images_paths, t->o->n_images));
        t->test.n = t->sets[2].n;
        return ST_OK;
    }
    if (t->o->predict_path) {
        name = t->o->images_path;
        TRY(data_load_images(name, &t->test));
    } else if (CFG_STREAMED(cfg)) {  // the test set's list and its loader (the training list for the class names)
        t->test = (dataset){.c = cfg->channels, .h = cfg->height, .w = cfg->width, .classes = cfg->classes};
        TRY(train_stream_setup(t, 0));
        t->test.n = t->sets[2].n;
        return ST_OK;
    } else if (cfg->data_format == DATA_CIFAR10) {
        char paths[CFG_DATA_FILES_MAX][CFG_PATH_MAX + 32];
        config_data_paths(cfg, paths);
        const char *test_p[1] = {paths[5]};
        name = cfg->cifar_dir;
        TRY(data_load_cifar10(test_p, 1, cfg->test_limit, &t->test));
    } else if (cfg->data_format == DATA_SYNTHETIC) {  // the training run's test set, made again from net.seed
        name = "[data] format=synthetic";
        TRY(data_make_synthetic(cfg->seed, 1, cfg->test_limit ? cfg->test_limit : DATA_SYNTHETIC_TEST, cfg->channels,
                                cfg->height, cfg->width, cfg->classes, &t->test));
    } else {
        name = cfg->test_images;
        TRY(data_load_idx(cfg->test_images, cfg->test_labels, cfg->classes, cfg->test_limit, &t->test));
    }
    const dataset *d = &t->test;
    if (d->c != cfg->channels || d->h != cfg->height || d->w != cfg->width)
        return ERR(ST_INPUT, "%s: images are %dx%dx%d (channels x height x width), but the model of %s takes %dx%dx%d",
                   name, d->c, d->h, d->w, cfg->path, cfg->channels, cfg->height, cfg->width);
    return train_test_upload(t);
}

// Above this many classes --eval prints no per-class table and no confusion matrix (it would be classes^2 numbers).
#define EVAL_CONFUSION_MAX 1000

static int use_setup(trainer *t) {
    const char *ckpt = t->o->eval_path ? t->o->eval_path : t->o->predict_path;
    TRY(augment_resolve(&t->cfg_eff));  // normalize=1 with a --config that lacks mean/std: the training set's
    TRY(train_backend_setup(t));
    TRY(use_data_setup(t));
    TRY(train_augment_setup(t, 0));
    const int eb = train_eval_batch_capped(t);
    TRY(model_create(&t->m, &t->be, t->cfg, eb));
    int loaded = 0, total = 0;
    TRY(train_weights_load(t, ckpt, NULL, &loaded, &total));
    t->h_logits = malloc((size_t)eb * t->m.classes * sizeof(float));
    TRY_ALLOC(t->h_logits);
    if (t->o->eval_path && t->m.classes <= EVAL_CONFUSION_MAX) {
        t->confusion = calloc((size_t)t->m.classes * t->m.classes, sizeof *t->confusion);
        TRY_ALLOC(t->confusion);
    }
    return ST_OK;
}

// What the checkpoint says of the run that wrote it (each "" when absent). Its position is the next step's: at
// an epoch's end "epoch" counts the epochs done, in the middle it is the 0-based epoch in progress; either way
// `epoch` here is the 1-based epoch the weights belong to.
typedef struct ckpt_origin {
    char epoch[32], step[32], test_loss[64], test_acc[64], world[32];
    int mid_epoch;
} ckpt_origin;

static void ckpt_origin_read(const char *path, ckpt_origin *co) {
    memset(co, 0, sizeof *co);
    ckpt_file *f = NULL;
    if (ckpt_load(path, &f) != ST_OK) {  // loaded once already: only a file changed meanwhile fails here
        err_clear();
        return;
    }
    const char *keys[4] = {"global_step", "test_loss", "test_acc", "world_size"};
    char *dst[4] = {co->step, co->test_loss, co->test_acc, co->world};
    size_t size[4] = {sizeof co->step, sizeof co->test_loss, sizeof co->test_acc, sizeof co->world};
    for (int i = 0; i < 4; i++) {
        const char *v = ckpt_meta(f, keys[i]);
        if (v && strlen(v) < size[i]) snprintf(dst[i], size[i], "%s", v);
    }
    const char *e = ckpt_meta(f, "epoch"), *s = ckpt_meta(f, "step_in_epoch");
    long ep = 0, sie = 0;
    if (e && parse_int(e, 0, 1000000, &ep) == 0 && (!s || parse_int(s, 0, INT32_MAX, &sie) == 0)) {
        co->mid_epoch = sie > 0;
        snprintf(co->epoch, sizeof co->epoch, "%ld", ep + co->mid_epoch);
    }
    ckpt_free(f);
}

static void eval_print(const trainer *t, const eval_report *r) {
    const int k = r->classes;
    ALWAYS0("eval %s: %d test samples, %d rank(s), eval_batch %d, %s backend\n", r->checkpoint, r->samples, r->world,
            r->eval_batch, r->backend);
    ALWAYS0("test loss %.6f acc %.6f\n", r->test_loss, r->test_acc);
    if (r->train_mid_epoch && r->train_epoch)
        ALWAYS0("the checkpoint was saved in the middle of epoch %s (step %s): no test figures of the training run to "
                "compare\n", r->train_epoch, r->train_step ? r->train_step : "?");
    if (r->train_test_loss)
        ALWAYS0("the training run printed for epoch %s: test loss %.6f acc %.6f -- %s\n", r->train_epoch,
                strtod(r->train_test_loss, NULL), strtod(r->train_test_acc, NULL),
                r->same_as_training ? "identical (every bit)"
                : strcmp(r->backend, "cpu") != 0
                    ? "not bit for bit: the CUDA backend sums the loss with atomics and times its algorithms per "
                      "process, so it reproduces the figures to rounding only"
                    : "different (another eval_batch, world size, thread count, backend or test set?)");
    if (!r->confusion) {
        ALWAYS0("(%d classes: no per-class table or confusion matrix above %d)\n", k, EVAL_CONFUSION_MAX);
        return;
    }
    // Streamed sets name their classes (the directory names, or the names= file).
    char *const *names = t->sets && t->sets[0].classes == k ? t->sets[0].class_names : NULL;
    ALWAYS0("per-class accuracy (class: accuracy of its samples, count):\n");
    for (int a = 0; a < k; a++) {
        double n = 0;
        for (int b = 0; b < k; b++) n += r->confusion[(size_t)a * k + b];
        if (n > 0) ALWAYS0("  %3d%s%s: %.4f %6.0f\n", a, names ? " " : "", names ? names[a] : "",
                           r->confusion[(size_t)a * k + a] / n, n);
        else ALWAYS0("  %3d%s%s:      - %6.0f\n", a, names ? " " : "", names ? names[a] : "", n);
    }
    ALWAYS0("confusion matrix (rows: true class, columns: predicted class):\n     ");
    for (int b = 0; b < k; b++) ALWAYS0(" %6d", b);
    ALWAYS0("\n");
    for (int a = 0; a < k; a++) {
        ALWAYS0("  %3d", a);
        for (int b = 0; b < k; b++) ALWAYS0(" %6.0f", r->confusion[(size_t)a * k + b]);
        ALWAYS0("\n");
    }
}

static int use_eval(trainer *t, train_result *res) {
    double loss = 0, acc = 0;
    TRY(train_evaluate(t, 0, &loss, &acc));
    ckpt_origin co;
    ckpt_origin_read(t->o->eval_path, &co);
    char mine[2][64];
    snprintf(mine[0], 64, "%.17g", loss);
    snprintf(mine[1], 64, "%.17g", acc);
    const int have = co.test_loss[0] && co.test_acc[0];
    eval_report r = {.checkpoint = t->o->eval_path, .samples = t->test.n, .classes = t->m.classes, .world = t->world,
                     .eval_batch = t->cfg->eval_batch < t->m.max_batch ? t->cfg->eval_batch : t->m.max_batch,
                     .backend = backend_name(&t->be), .test_loss = loss, .test_acc = acc, .confusion = t->confusion,
                     .train_epoch = co.epoch[0] ? co.epoch : NULL, .train_step = co.step[0] ? co.step : NULL,
                     .train_mid_epoch = co.mid_epoch, .train_test_loss = have ? co.test_loss : NULL,
                     .train_test_acc = have ? co.test_acc : NULL,
                     .same_as_training = have && strcmp(mine[0], co.test_loss) == 0 && strcmp(mine[1], co.test_acc) == 0};
    if (t->rank == 0) eval_print(t, &r);
    if (t->rank == 0 && t->o->metrics_path) TRY(metrics_write_eval(t->o->metrics_path, &r));
    res->test_loss = loss, res->test_acc = acc;
    return ST_OK;
}

// One CSV row per image: index, top class (the first largest logit, as evaluation counts), then the softmax
// probabilities. The backend's softmax op yields the loss and its gradient, not the probabilities, so they are
// computed here from the backend's logits, in double, with the same max shift. A row of non-finite logits (a
// checkpoint whose weights overflow on these images) is refused: no row of NaN is ever written. A stop signal
// ends it between batches (exit 5).
// The checkpoint's class names (its "class_names": a model trained on a folder or list); NULL when it has none
// or they do not match its classes. One malloc'd block: free it whole.
static char **class_names_read(const char *path, int classes) {
    ckpt_file *f = NULL;
    if (ckpt_load(path, &f) != ST_OK) {
        err_clear();
        return NULL;
    }
    const char *text = ckpt_meta(f, "class_names");
    cJSON *arr = text ? cJSON_Parse(text) : NULL;
    char **names = NULL;
    if (cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == classes) {
        size_t bytes = (size_t)classes * sizeof(char *);
        const cJSON *e;
        cJSON_ArrayForEach(e, arr) bytes += cJSON_IsString(e) ? strlen(e->valuestring) + 1 : 1;
        names = malloc(bytes);
        char *pool = names ? (char *)(names + classes) : NULL;
        int i = 0;
        cJSON_ArrayForEach(e, arr) {
            if (!names) break;
            const char *s = cJSON_IsString(e) ? e->valuestring : "";
            names[i++] = strcpy(pool, s);
            pool += strlen(s) + 1;
        }
    }
    cJSON_Delete(arr);
    ckpt_free(f);
    return names;
}

// A CSV field: quoted (doubling quotes) when it holds a comma, a quote or a line break (RFC 4180).
static void csv_field(FILE *f, const char *s) {
    if (!s[strcspn(s, ",\"\r\n")]) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

// One batch's rows: n images from `first` just staged or indexed; their logits to probabilities (see predict_rows).
static int predict_batch(trainer *t, FILE *f, int first, int n, int all, char *const *names) {
    const int k = t->m.classes;
    TRY(backend_gather(&t->be, t->d_test_x, t->d_test_y, t->sets ? t->d_test_index : t->d_test_index + first, n,
                       t->sample_elems, t->d_aug_eval, t->m.x, t->m.labels));
    TRY(model_forward(&t->m, n, 0));
    TRY(train_logits_download(t, n));
    for (int j = 0; j < n; j++) {
        const float *z = t->h_logits + (size_t)j * k;
        const char *shown = t->sets ? image_set_path(&t->sets[2], first + j) : t->o->images_path;
        for (int c = 0; c < k; c++)
            if (!isfinite(z[c]))
                return ERR(ST_INPUT, "--predict %s: the model gives a non-finite logit (%s, class %d) for image %d of "
                                     "%s; refusing to write predictions", t->o->predict_path,
                           isnan(z[c]) ? "NaN" : "Inf", c, first + j, shown);
        const int best = train_logits_argmax(z, k);
        double sum = 0;
        for (int c = 0; c < k; c++) sum += exp((double)z[c] - z[best]);
        if (t->sets) {
            char num[16];
            snprintf(num, sizeof num, "%d", best);
            csv_field(f, shown);
            fprintf(f, ",%d,", best);
            csv_field(f, names ? names[best] : num);
            fprintf(f, ",%.9g", 1.0 / sum);
        } else {
            fprintf(f, "%d,%d", first + j, best);
        }
        for (int c = 0; all && c < k; c++) fprintf(f, ",%.9g", exp((double)z[c] - z[best]) / sum);
        if (fprintf(f, "\n") < 0) return ERR(ST_RUNTIME, "writing the predictions failed: %s", strerror(errno));
    }
    return ST_OK;
}

// Above this many classes a --predict row carries the top class and its probability only.
#define PREDICT_ALL_PROBS_MAX 100

static int predict_rows(trainer *t, FILE *f) {
    const int k = t->m.classes, n = t->test.n, eb = t->m.max_batch, files = t->sets != NULL;
    const int all = !files || k <= PREDICT_ALL_PROBS_MAX;
    char **names = files ? class_names_read(t->o->predict_path, k) : NULL;
    fprintf(f, files ? "path,class,class_name,probability" : "index,class");
    for (int c = 0; all && c < k; c++) fprintf(f, ",p%d", c);
    fprintf(f, "\n");
    int st = files ? train_stream_eval_start(t, 0, 0, n, eb) : ST_OK;
    for (int i = 0; st == ST_OK && i < n; i += eb) {
        if (g_stop_requested) {
            st = train_use_stopped(t, i, n);
            break;
        }
        int cnt = n - i < eb ? n - i : eb;
        if (files) st = train_stream_eval_batch(t, cnt, NULL);
        if (st == ST_OK) st = predict_batch(t, f, i, cnt, all, names);
    }
    free(names);
    return st;
}

// To --out through a temp file in the same directory and a rename, to stdout through memory: a failure leaves no
// partial CSV (and an existing one as it was).
static int use_predict(trainer *t) {
    const char *out = t->o->out_path;
    if (!out) {
        char *text = NULL;
        size_t size = 0;
        FILE *m = open_memstream(&text, &size);
        if (!m) return ERR(ST_RUNTIME, "out of host memory for the predictions");
        int st = predict_rows(t, m);
        if (fclose(m) != 0 && st == ST_OK) st = ERR(ST_RUNTIME, "out of host memory for the predictions");
        if (st == ST_OK && (fwrite(text, 1, size, stdout) != size || fflush(stdout) != 0))
            st = ERR(ST_RUNTIME, "stdout: writing the predictions failed: %s", strerror(errno));
        free(text);
        return st;
    }
    char tmp[CFG_PATH_MAX + 64];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", out, (int)getpid()) >= (int)sizeof tmp)
        return ERR(ST_INPUT, "--out %s: path too long", out);
    unlink(tmp);  // our pid: a leftover of a killed process that had it
    FILE *f = fopen(tmp, "wx");
    if (!f) return ERR(ST_INPUT, "--out: cannot create %s: %s", tmp, strerror(errno));
    int st = predict_rows(t, f);
    int e = 0;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) e = errno;
    if (fclose(f) != 0 && !e) e = errno;
    if (st == ST_OK && e) st = ERR(ST_RUNTIME, "--out %s: cannot write the predictions: %s (nothing written)", out, strerror(e));
    if (st == ST_OK && rename(tmp, out) != 0)
        st = ERR(ST_RUNTIME, "--out %s: cannot rename %s into place: %s", out, tmp, strerror(errno));
    if (st != ST_OK) unlink(tmp);
    else LOG0("predict %s: %d images of %s -> %s\n", t->o->predict_path, t->test.n, t->o->images_path, out);
    return st;
}

int train_use_run(const net_config *cfg, const train_opts *o, comm *c, train_result *res) {
    memset(res, 0, sizeof *res);
    res->used = 1;
    trainer *t = NULL;
    TRY(train_state_new(cfg, o, c, &t));
    int st = ST_OK;
    if (o->predict_path && t->world > 1) {  // every rank sees it: reported once
        st = ERR(ST_INPUT, "--predict runs as one process (np 1), this job has %d ranks: run it without mpirun",
                 t->world);
        err_mark_collective(0);
    }
    if (st == ST_OK) st = train_agree(t, use_setup(t));
    if (st == ST_OK) st = o->eval_path ? use_eval(t, res) : use_predict(t);
    // One process: its failure is the job's (reported once, no MPI_Abort needed).
    if (st != ST_OK && o->predict_path && !err_collective()) err_mark_collective(0);
    train_state_free(t);
    return st;
}
