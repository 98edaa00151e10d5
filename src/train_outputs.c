// train_outputs.c — the run's output plan: every file a run may write, computed at start-up before any work and
// checked together -- against every input of the run, against each other, for its kind and its length -- so
// that a clash is exit 2 naming both paths before anything is trained, and nothing is ever overwritten late.
//
// Outputs: --save, its -best / -eN copies, --metrics, the --trace directory and this rank's trace file, --predict
// --out. Inputs: the config, the data files, the checkpoints read (--resume, --init-from, --eval, --predict),
// --baseline, --images. --save onto the --resume file is the normal way to continue a run and stays allowed;
// nothing else may equal an input. Paths are compared as files (device and inode, so links and other spellings
// are caught) where they exist, and as resolved paths (symlinks resolved in the part that exists, "." and ".."
// folded in the rest) where they do not yet.
#define _DEFAULT_SOURCE  // realpath
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "common.h"
#include "config.h"
#include "fileio.h"
#include "metrics.h"
#include "trace.h"
#include "train_state.h"

#define OUT_MAX (8 + 3)   // files, not counting the -eN copies (checked one by one)
#define RPATH_MAX (PATH_MAX + 256)

// ---------------------------------------------------------------------------------------------------------
// Paths

// --save-every and --keep-best keep copies beside the --save file: its path without a trailing ".safetensors"
// (the stem), then the suffix and ".safetensors".
int train_copy_path(const char *save, const char *suffix, char *out, size_t n) {
    const char *ext = ".safetensors";
    size_t len = strlen(save), el = strlen(ext);
    size_t stem = len > el && strcmp(save + len - el, ext) == 0 ? len - el : len;
    int w = snprintf(out, n, "%.*s%s%s", (int)stem, save, suffix, ext);
    if (w < 0 || (size_t)w >= n) return ERR(ST_INPUT, "--save %s: path too long for its copies", save);
    return ST_OK;
}

// An absolute path with the symlinks of its longest existing prefix resolved, and "." and ".." of the rest
// folded lexically: two spellings of one file that does not exist yet compare equal.
static int path_resolve(const char *path, char *out, size_t n) {
    char buf[RPATH_MAX], base[PATH_MAX];
    int w;
    if (path[0] == '/') w = snprintf(buf, sizeof buf, "%s", path);
    else {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof cwd)) return ERR(ST_RUNTIME, "cannot read the working directory: %s", strerror(errno));
        w = snprintf(buf, sizeof buf, "%s/%s", cwd, path);
    }
    if (w < 0 || (size_t)w >= sizeof buf) return ERR(ST_INPUT, "path too long: %s", path);
    size_t cut = strlen(buf);
    for (;;) {
        char keep = buf[cut];
        buf[cut] = '\0';
        char *r = realpath(cut ? buf : "/", base);
        buf[cut] = keep;
        if (r) break;
        while (cut > 0 && buf[cut - 1] == '/') cut--;  // back to the '/' before the last component
        while (cut > 0 && buf[cut - 1] != '/') cut--;
        if (cut > 0) cut--;
    }
    if (snprintf(out, n, "%s", base) >= (int)n) return ERR(ST_INPUT, "path too long: %s", path);
    for (const char *p = buf + cut; *p;) {  // the part that does not exist, folded
        while (*p == '/') p++;
        size_t k = strcspn(p, "/");
        if (k == 0) break;
        size_t used = strlen(out);
        if (k == 1 && p[0] == '.') {
        } else if (k == 2 && p[0] == '.' && p[1] == '.') {
            char *slash = strrchr(out, '/');
            if (slash && slash != out) *slash = '\0';
            else snprintf(out, n, "/");
        } else if (snprintf(out + used, n - used, "%s%.*s", used > 1 ? "/" : "", (int)k, p) >= (int)(n - used)) {
            return ERR(ST_INPUT, "path too long: %s", path);
        }
        p += k;
    }
    return ST_OK;
}

// A path the kernel can create: under PATH_MAX bytes in all, no component over NAME_MAX.
static int path_length_check(const char *path, const char *opt) {
    if (strlen(path) >= PATH_MAX)
        return ERR(ST_INPUT, "%s: path of %zu bytes, more than the system's %d: %s", opt, strlen(path), PATH_MAX - 1, path);
    for (const char *p = path; *p;) {
        size_t k = strcspn(p, "/");
        if (k > NAME_MAX)
            return ERR(ST_INPUT, "%s: a path component of %zu bytes, more than the system's %d: %s", opt, k, NAME_MAX,
                       path);
        p += k;
        while (*p == '/') p++;
    }
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// The plan

typedef struct out_file {
    char path[RPATH_MAX];           // as the run will write it
    char resolved[RPATH_MAX];
    const char *opt;                // the option that names it, for messages
    const char *allowed;            // an input it may replace (--save over --resume), or NULL
    int is_dir;                     // the --trace directory
} out_file;

typedef struct out_plan {
    out_file f[OUT_MAX];
    int n;
    file_set in;
} out_plan;

static int plan_add(out_plan *p, const char *path, const char *opt, const char *allowed, int is_dir) {
    if (p->n >= OUT_MAX) return ERR(ST_RUNTIME, "too many outputs");
    out_file *f = &p->f[p->n];
    if (!path[0]) return ERR(ST_INPUT, "%s: the path is empty", opt);
    if (snprintf(f->path, sizeof f->path, "%s", path) >= (int)sizeof f->path)
        return ERR(ST_INPUT, "%s: path too long: %s", opt, path);
    TRY(path_length_check(path, opt));
    TRY(path_resolve(path, f->resolved, sizeof f->resolved));
    f->opt = opt, f->allowed = allowed, f->is_dir = is_dir;
    p->n++;
    return ST_OK;
}

// a is b, or a directory above it.
static int path_within(const char *a, const char *b) {
    size_t n = strlen(a);
    return strncmp(a, b, n) == 0 && (b[n] == '\0' || b[n] == '/' || (n == 1 && a[0] == '/'));
}

// Two outputs of one run never name one file, and a file output is never the directory of another.
static int plan_check_pairs(const out_plan *p) {
    for (int i = 0; i < p->n; i++)
        for (int j = 0; j < p->n; j++) {
            const out_file *a = &p->f[i], *b = &p->f[j];
            if (i == j) continue;
            if (i < j && strcmp(a->resolved, b->resolved) == 0)
                return ERR(ST_INPUT, "%s and %s name the same file (%s): each output needs its own path", a->opt,
                           b->opt, a->path);
            if (!a->is_dir && path_within(a->resolved, b->resolved) && strcmp(a->resolved, b->resolved) != 0)
                return ERR(ST_INPUT, "%s %s is a file, but %s writes inside it (%s)", a->opt, a->path, b->opt, b->path);
        }
    return ST_OK;
}

// An existing output that is one of the inputs (by identity), or (not existing yet) an input's resolved path.
static int plan_check_inputs(const out_plan *p) {
    for (int i = 0; i < p->n; i++) {
        const out_file *f = &p->f[i];
        if (f->is_dir) continue;
        TRY(output_not_input(f->path, f->opt, &p->in, f->allowed));
    }
    return ST_OK;
}

// An existing file at an output's path is replaced only when it is of the kind the option writes.
static int plan_check_kind(const out_file *f, int (*is_kind)(const unsigned char *, size_t), const char *kind,
                           int allow_special) {
    return output_check_kind(f->path, f->opt, is_kind, kind, allow_special);
}

static int csv_is_head(const unsigned char *head, size_t n) { return n >= 11 && memcmp(head, "index,class", 11) == 0; }

// The -eN copies of --save-every: at most epochs / save_every files, each a checkpoint or nothing yet, none an
// input, none another output.
static int plan_check_epoch_copies(const out_plan *p, const net_config *cfg, const train_opts *o) {
    if (o->save_every <= 0) return ST_OK;
    char path[RPATH_MAX], suffix[32], resolved[RPATH_MAX];
    for (int e = o->save_every; e <= cfg->epochs; e += o->save_every) {
        snprintf(suffix, sizeof suffix, "-e%d", e);
        TRY(train_copy_path(o->save_path, suffix, path, sizeof path));
        if (e == o->save_every || e + o->save_every > cfg->epochs) TRY(path_length_check(path, "--save-every"));
        TRY(output_not_input(path, "--save-every", &p->in, NULL));
        TRY(output_check_kind(path, "--save-every", ckpt_is_safetensors_head, "a safetensors checkpoint", 0));
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) return ERR(ST_INPUT, "--save-every: %s is a directory", path);
        TRY(path_resolve(path, resolved, sizeof resolved));
        for (int i = 0; i < p->n; i++)
            if (path_within(p->f[i].resolved, resolved))
                return ERR(ST_INPUT, "--save-every's copy %s and %s %s name the same file", path, p->f[i].opt,
                           p->f[i].path);
    }
    return ST_OK;
}

static void plan_inputs(out_plan *p, const net_config *cfg, const train_opts *o) {
    static char data[CFG_DATA_FILES_MAX][CFG_PATH_MAX + 32];  // main's thread, once
    const int using = o->eval_path || o->predict_path;
    int n_data = o->predict_path ? 0 : config_data_paths(cfg, data);
    file_set_add(&p->in, cfg->path, "config");
    for (int i = 0; i < n_data; i++) file_set_add(&p->in, data[i], "data file");
    file_set_add(&p->in, o->resume_path, "--resume checkpoint");
    file_set_add(&p->in, o->init_from, "--init-from checkpoint");
    file_set_add(&p->in, o->baseline_path, "--baseline file");
    if (using) file_set_add(&p->in, o->eval_path ? o->eval_path : o->predict_path, "checkpoint");
    file_set_add(&p->in, o->images_path, "--images file");
}

int train_outputs_check(const net_config *cfg, const train_opts *o, int rank) {
    out_plan *p = calloc(1, sizeof *p);
    TRY_ALLOC(p);
    plan_inputs(p, cfg, o);
    char path[RPATH_MAX];
    int st = ST_OK;
    // Every rank computes the whole plan (the clashes are a property of the command line); the kind of existing
    // files is checked by the rank that writes them.
    // --resume-if-exists that found its file resumes from it: --save over it continues the run. --init-from
    // is never replaced, --resume-if-exists or not.
    const char *resume_ok = o->resume_path;
    if (st == ST_OK && o->save_path) st = plan_add(p, o->save_path, "--save", resume_ok, 0);
    if (st == ST_OK && o->keep_best) st = train_copy_path(o->save_path, "-best", path, sizeof path);
    if (st == ST_OK && o->keep_best) st = plan_add(p, path, "--keep-best", NULL, 0);
    if (st == ST_OK && o->metrics_path) st = plan_add(p, o->metrics_path, "--metrics", NULL, 0);
    if (st == ST_OK && o->metrics_path && !o->eval_path && !o->predict_path) {  // training: the per-step records
        st = metrics_steps_path(o->metrics_path, path, sizeof path);
        if (st == ST_OK) st = plan_add(p, path, "--metrics (its per-step records)", NULL, 0);
    }
    if (st == ST_OK && o->out_path) st = plan_add(p, o->out_path, "--out", NULL, 0);
    if (st == ST_OK && o->trace_dir) st = plan_add(p, o->trace_dir, "--trace", NULL, 1);
    if (st == ST_OK && o->tensorboard_dir) st = plan_add(p, o->tensorboard_dir, "--tensorboard", NULL, 1);
    if (st == ST_OK && o->trace_dir) {
        if (trace_file_path(path, sizeof path, o->trace_dir, rank) != 0) st = ERR(ST_INPUT, "--trace %s: path too long", o->trace_dir);
        else st = plan_add(p, path, "--trace", NULL, 0);
    }
    if (st == ST_OK) st = plan_check_pairs(p);
    if (st == ST_OK) st = plan_check_inputs(p);
    if (st == ST_OK) st = plan_check_epoch_copies(p, cfg, o);
    for (int i = 0; i < p->n && st == ST_OK; i++) {
        const out_file *f = &p->f[i];
        if (f->is_dir) {
            struct stat sb;
            if (stat(f->path, &sb) == 0 && !S_ISDIR(sb.st_mode))
                st = ERR(ST_INPUT, "%s %s: exists and is not a directory", f->opt, f->path);
        } else if (strcmp(f->opt, "--trace") == 0) {  // this rank's own trace file
            st = plan_check_kind(f, trace_is_own_head, "a ddp-cnn trace", 0);
        } else if (rank != 0) {
            continue;
        } else if (strcmp(f->opt, "--metrics") == 0) {
            st = plan_check_kind(f, metrics_is_jsonl_head, o->eval_path ? "a JSON metrics file" : "a JSON Lines metrics file", 1);
        } else if (strcmp(f->opt, "--out") == 0) {
            st = plan_check_kind(f, csv_is_head, "a predictions CSV file (header index,class,...)", 0);
        } else {  // --save and --keep-best: a checkpoint or nothing, in a directory where one can be created
            if (strcmp(f->opt, "--save") != 0)  // (ckpt_check_target's messages name --save)
                st = plan_check_kind(f, ckpt_is_safetensors_head, "a safetensors checkpoint", 0);
            if (st == ST_OK) st = ckpt_check_target(f->path);
        }
    }
    free(p);
    return st;
}
