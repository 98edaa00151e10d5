// image_set.c — image data sets as lists of files: ImageFolder trees, list files, WebDataset tar shards and
// --predict's inputs (see image_set.h).
//
// Building a set appends each sample to one growing path pool and three arrays (offset, label, size) and feeds
// its relative name, size and label into the digest as it goes; the class names follow at the end. The folder
// scan walks one class at a time breadth-first (each directory is read whole and closed before the next, so a
// deep tree holds no descriptors), then sorts that class's files into torchvision's order. A shard set keeps each
// shard's path once in the pool, and each sample's image member as (shard, data offset, size).
#include "image_set.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "fileio.h"

#define LIST_MAX_BYTES ((uint64_t)1 << 30)  // a list or names file larger than this is refused
#define PATH_BUF (IMAGE_SET_MAX_PATH + 1)


// Grows *p (elements of `elem` bytes, capacity *cap) to hold at least `need`; 0, or -1 when out of memory.
static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *np = realloc(*p, c * elem);
    if (!np) return -1;
    *p = np;
    *cap = c;
    return 0;
}

// Joins up to three parts with a '/' between non-empty ones (none after a part that ends in '/': the root "/")
// into buf; -1 when longer than IMAGE_SET_MAX_PATH.
static int join_path(char *buf, const char *a, const char *b, const char *c) {
    size_t n = 0;
    const char *parts[3] = {a, b, c};
    for (int k = 0; k < 3; k++) {
        if (!parts[k] || !parts[k][0]) continue;
        size_t l = strlen(parts[k]);
        int sep = n > 0 && buf[n - 1] != '/';
        if (n + (size_t)sep + l > IMAGE_SET_MAX_PATH) return -1;
        if (sep) buf[n++] = '/';
        memcpy(buf + n, parts[k], l);
        n += l;
    }
    buf[n] = '\0';
    return 0;
}

// ---------------------------------------------------------------------------------------------------------
// Digest: FNV-1a over length-prefixed fields (so no two different lists hash the same bytes), then a final mix.

#define DIGEST_SEED 0xcbf29ce484222325ull

static uint64_t hash_bytes(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t hash_u64(uint64_t h, uint64_t v) {
    unsigned char b[8];
    for (int k = 0; k < 8; k++) b[k] = (unsigned char)(v >> (8 * k));
    return hash_bytes(h, b, 8);
}

static uint64_t hash_str(uint64_t h, const char *s, size_t n) { return hash_bytes(hash_u64(h, n), s, n); }

// ---------------------------------------------------------------------------------------------------------
// Building a set

typedef struct builder {
    image_set *s;
    size_t cap_n;                  // capacity of labels, sizes, path_off
    size_t paths_len, paths_cap;
    uint64_t h;                    // digest so far
    int shards;                    // a shard set: offsets and shard are kept too
} builder;

static void builder_init(builder *b, image_set *out, const char *origin) {
    memset(out, 0, sizeof *out);
    memset(b, 0, sizeof *b);
    b->s = out;
    b->h = DIGEST_SEED;
    snprintf(out->origin, sizeof out->origin, "%s", origin ? origin : "");
}

// Room for one more sample in every per-sample array (offsets and shard too in a shard set).
static int builder_reserve(builder *b) {
    image_set *s = b->s;
    if (s->n == INT32_MAX) return ERR(ST_INPUT, "%s: more than %d samples", s->origin, INT32_MAX);
    size_t need = (size_t)s->n + 1;
    if (need <= b->cap_n) return ST_OK;
    size_t c1 = b->cap_n, c2 = b->cap_n, c3 = b->cap_n, c4 = b->cap_n, c5 = b->cap_n;
    if (grow((void **)&s->labels, &c1, need, sizeof *s->labels) ||
        grow((void **)&s->sizes, &c2, need, sizeof *s->sizes) ||
        grow((void **)&s->path_off, &c3, need, sizeof *s->path_off) ||
        (b->shards && (grow((void **)&s->offsets, &c4, need, sizeof *s->offsets) ||
                       grow((void **)&s->shard, &c5, need, sizeof *s->shard))))
        return ERR(ST_RUNTIME, "%s: out of host memory listing %d samples", s->origin, s->n);
    b->cap_n = c3;
    return ST_OK;
}

// Copies a path (len bytes) into the pool; its offset in *off.
static int builder_add_path(builder *b, const char *path, size_t len, size_t *off) {
    image_set *s = b->s;
    if (grow((void **)&s->paths, &b->paths_cap, b->paths_len + len + 1, 1))
        return ERR(ST_RUNTIME, "%s: out of host memory listing %d samples", s->origin, s->n);
    memcpy(s->paths + b->paths_len, path, len);
    s->paths[b->paths_len + len] = '\0';
    *off = b->paths_len;
    b->paths_len += len + 1;
    return ST_OK;
}

// Appends a sample: its full path (full_len bytes), the relative name that the digest sees (full + rel_at).
static int builder_add(builder *b, const char *full, size_t full_len, size_t rel_at, uint64_t size, int32_t label) {
    image_set *s = b->s;
    TRY(builder_reserve(b));
    size_t off = 0;
    TRY(builder_add_path(b, full, full_len, &off));
    s->path_off[s->n] = off;
    s->labels[s->n] = label;
    s->sizes[s->n] = size;
    s->n++;
    b->h = hash_str(b->h, full + rel_at, full_len - rel_at);
    b->h = hash_u64(hash_u64(b->h, size), (uint64_t)(uint32_t)label);
    return ST_OK;
}

// The class names (one allocation: the pointers, then the strings), the digest's last part, and the arrays
// trimmed to their length. names NULL: "0".."classes-1"; classes 0: class_names NULL.
static int builder_finish(builder *b, const char *const *names, int classes) {
    image_set *s = b->s;
    size_t bytes = (size_t)classes * sizeof(char *);
    char num[16];
    for (int c = 0; c < classes; c++) {
        snprintf(num, sizeof num, "%d", c);
        bytes += strlen(names ? names[c] : num) + 1;
    }
    s->class_names = NULL;  // none when classes is 0 (image_set_inputs)
    if (classes > 0 && !(s->class_names = malloc(bytes)))
        return ERR(ST_RUNTIME, "%s: out of host memory for %d class names", s->origin, classes);
    char *p = classes > 0 ? (char *)(s->class_names + classes) : NULL;
    uint64_t h = hash_u64(hash_u64(b->h, (uint64_t)s->n), (uint64_t)classes);
    for (int c = 0; c < classes; c++) {
        snprintf(num, sizeof num, "%d", c);
        const char *name = names ? names[c] : num;
        size_t l = strlen(name);
        memcpy(p, name, l + 1);
        s->class_names[c] = p;
        p += l + 1;
        h = hash_str(h, name, l);
    }
    s->classes = classes;
    // splitmix64's finaliser: every input bit reaches every output bit
    h ^= h >> 30, h *= 0xbf58476d1ce4e5b9ull, h ^= h >> 27, h *= 0x94d049bb133111ebull, h ^= h >> 31;
    s->digest = h;
    // Trim the doubling slack (a failed shrink keeps the larger block).
    size_t n = (size_t)s->n;
    void *q;
    if (n && (q = realloc(s->labels, n * sizeof *s->labels))) s->labels = q;
    if (n && (q = realloc(s->sizes, n * sizeof *s->sizes))) s->sizes = q;
    if (n && (q = realloc(s->path_off, n * sizeof *s->path_off))) s->path_off = q;
    if (n && s->offsets && (q = realloc(s->offsets, n * sizeof *s->offsets))) s->offsets = q;
    if (n && s->shard && (q = realloc(s->shard, n * sizeof *s->shard))) s->shard = q;
    if (b->paths_len && (q = realloc(s->paths, b->paths_len))) s->paths = q;
    return ST_OK;
}

void image_set_free(image_set *s) {
    if (!s) return;
    free(s->class_names);
    free(s->labels);
    free(s->sizes);
    free(s->path_off);
    free(s->paths);
    free(s->offsets);
    free(s->shard);
    free(s->shard_first);
    memset(s, 0, sizeof *s);
}

const char *image_set_path(const image_set *s, int i) { return s->paths + s->path_off[i]; }

// ---------------------------------------------------------------------------------------------------------
// Sorting strings with a secondary key (qsort has no context argument: the keys carry their strings).

typedef struct sort_key {
    size_t major;      // compared first
    const char *name;  // then this, in byte order
    size_t idx;        // what the key stands for
} sort_key;

static int sort_key_cmp(const void *pa, const void *pb) {
    const sort_key *a = pa, *b = pb;
    if (a->major != b->major) return a->major < b->major ? -1 : 1;
    int c = strcmp(a->name, b->name);
    if (c) return c;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

// ---------------------------------------------------------------------------------------------------------
// ImageFolder

static int is_image_name(const char *name) {
    static const char *const ext[] = {".jpg", ".jpeg", ".png"};
    size_t l = strlen(name);
    for (int k = 0; k < 3; k++) {
        size_t e = strlen(ext[k]);
        if (l < e) continue;
        int same = 1;
        for (size_t j = 0; j < e && same; j++) {
            char ch = name[l - e + j];
            if (ch >= 'A' && ch <= 'Z') ch = (char)(ch - 'A' + 'a');
            same = ch == ext[k][j];
        }
        if (same) return 1;
    }
    return 0;
}

typedef struct walk_dir {
    size_t rel;  // offset in the pool of the path relative to the class directory ("" for the class directory)
    long parent;  // index of the parent, -1 for the class directory
    dev_t dev;
    ino_t ino;
} walk_dir;

typedef struct walk_file {
    size_t dir;   // index in dirs
    size_t name;  // offset in the pool
    uint64_t size;
} walk_file;

// One class's walk; reused from class to class.
typedef struct walk {
    char root[PATH_BUF];  // without trailing '/' (except the root "/" itself)
    dev_t root_dev;
    ino_t root_ino;
    char *pool;
    size_t pool_len, pool_cap;
    walk_dir *dirs;
    size_t n_dirs, cap_dirs;
    walk_file *files;
    size_t n_files, cap_files;
    sort_key *keys;
    size_t cap_keys;
    size_t *rank;
    size_t cap_rank;
    int digest_whole;  // the digest sees whole paths (image_set_inputs), not names relative to root
} walk;

static void walk_free(walk *w) {
    free(w->pool);
    free(w->dirs);
    free(w->files);
    free(w->keys);
    free(w->rank);
}

// Copies s (n bytes) into the pool; its offset in *off. -1 when out of memory.
static int pool_add(walk *w, const char *s, size_t n, size_t *off) {
    if (grow((void **)&w->pool, &w->pool_cap, w->pool_len + n + 1, 1)) return -1;
    memcpy(w->pool + w->pool_len, s, n);
    w->pool[w->pool_len + n] = '\0';
    *off = w->pool_len;
    w->pool_len += n + 1;
    return 0;
}

// A sub-directory of dirs[d] (full path `path`; dev, ino after following symlinks) that is the root or a
// directory on the path from the class directory down to dirs[d] is a loop.
static int walk_check_loop(const walk *w, size_t d, const char *cls, const char *path, dev_t dev, ino_t ino) {
    char again[PATH_BUF];
    if (dev == w->root_dev && ino == w->root_ino)
        return ERR(ST_INPUT, "%s: directory symlink loop: it is the data set root %s again (refused: a walk that "
                   "follows symlinks would never end)", path, w->root);
    for (long a = (long)d; a >= 0; a = w->dirs[a].parent) {
        if (w->dirs[a].dev != dev || w->dirs[a].ino != ino) continue;
        if (join_path(again, w->root, cls, w->pool + w->dirs[a].rel)) snprintf(again, sizeof again, "an ancestor");
        return ERR(ST_INPUT, "%s: directory symlink loop: it is its ancestor %s again (refused: a walk that "
                   "follows symlinks would never end)", path, again);
    }
    return ST_OK;
}

// Reads directory dirs[d] of class cls: image files into files, sub-directories (symlinks followed) into dirs.
static int walk_read_dir(walk *w, size_t d, const char *cls) {
    char dir_path[PATH_BUF], path[PATH_BUF], rel[PATH_BUF];
    if (join_path(dir_path, w->root, cls, w->pool + w->dirs[d].rel))
        return ERR(ST_INPUT, "%s/%s: a path under it is longer than %d bytes", w->root, cls, IMAGE_SET_MAX_PATH);
    DIR *dir = opendir(dir_path);
    if (!dir) return ERR(ST_INPUT, "%s: cannot open directory: %s", dir_path, strerror(errno));
    int st = ST_OK;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(dir);
        if (!e) {
            if (errno) st = ERR(ST_INPUT, "%s: cannot read directory: %s", dir_path, strerror(errno));
            break;
        }
        const char *name = e->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) continue;
        int image = is_image_name(name);
        struct stat sb;
        int stat_errno = fstatat(dirfd(dir), name, &sb, 0) == 0 ? 0 : errno;
        // Not a directory to os.walk and not an image name: ignored, as torchvision does.
        if (!image && (stat_errno || !S_ISDIR(sb.st_mode))) continue;
        if (join_path(path, dir_path, name, NULL)) {
            st = ERR(ST_INPUT, "%s: a path in it is longer than %d bytes: %s", dir_path, IMAGE_SET_MAX_PATH, name);
            break;
        }
        if (stat_errno) {
            st = ERR(ST_INPUT, "%s: cannot stat it (a dangling symlink?): %s", path, strerror(stat_errno));
            break;
        }
        if (S_ISDIR(sb.st_mode)) {
            if ((st = walk_check_loop(w, d, cls, path, sb.st_dev, sb.st_ino)) != ST_OK) break;
            if (join_path(rel, w->pool + w->dirs[d].rel, name, NULL)) {
                st = ERR(ST_INPUT, "%s: path longer than %d bytes", path, IMAGE_SET_MAX_PATH);
                break;
            }
            size_t off;
            if (grow((void **)&w->dirs, &w->cap_dirs, w->n_dirs + 1, sizeof *w->dirs) ||
                pool_add(w, rel, strlen(rel), &off)) {
                st = ERR(ST_RUNTIME, "%s: out of host memory", path);
                break;
            }
            w->dirs[w->n_dirs++] = (walk_dir){off, (long)d, sb.st_dev, sb.st_ino};
        } else if (image && S_ISREG(sb.st_mode)) {
            size_t off;
            if (grow((void **)&w->files, &w->cap_files, w->n_files + 1, sizeof *w->files) ||
                pool_add(w, name, strlen(name), &off)) {
                st = ERR(ST_RUNTIME, "%s: out of host memory", path);
                break;
            }
            w->files[w->n_files++] = (walk_file){d, off, (uint64_t)sb.st_size};
        } else if (image) {
            st = ERR(ST_INPUT, "%s is %s, not a regular file (refused; an image file must be a regular file)", path,
                     file_kind(sb.st_mode));
            break;
        }
    }
    closedir(dir);
    return st;
}

// Walks class cls (label `label`) and appends its image files to b in torchvision's order; *found their count.
static int walk_class(walk *w, builder *b, const char *cls, dev_t dev, ino_t ino, int32_t label, size_t *found) {
    w->pool_len = w->n_dirs = w->n_files = 0;
    size_t off;
    if (grow((void **)&w->dirs, &w->cap_dirs, 1, sizeof *w->dirs) || pool_add(w, "", 0, &off))
        return ERR(ST_RUNTIME, "%s/%s: out of host memory", w->root, cls);
    w->dirs[w->n_dirs++] = (walk_dir){off, -1, dev, ino};
    for (size_t d = 0; d < w->n_dirs; d++) TRY(walk_read_dir(w, d, cls));
    *found = w->n_files;
    if (w->n_files == 0) return ST_OK;
    // sorted(os.walk(...)): directories by their whole path, which all start with the class directory, so by
    // their relative path; then sorted(fnames) within each.
    size_t nk = w->n_dirs > w->n_files ? w->n_dirs : w->n_files;
    if (grow((void **)&w->keys, &w->cap_keys, nk, sizeof *w->keys) ||
        grow((void **)&w->rank, &w->cap_rank, w->n_dirs, sizeof *w->rank))
        return ERR(ST_RUNTIME, "%s/%s: out of host memory", w->root, cls);
    for (size_t d = 0; d < w->n_dirs; d++) w->keys[d] = (sort_key){0, w->pool + w->dirs[d].rel, d};
    qsort(w->keys, w->n_dirs, sizeof *w->keys, sort_key_cmp);
    for (size_t r = 0; r < w->n_dirs; r++) w->rank[w->keys[r].idx] = r;
    for (size_t f = 0; f < w->n_files; f++)
        w->keys[f] = (sort_key){w->rank[w->files[f].dir], w->pool + w->files[f].name, f};
    qsort(w->keys, w->n_files, sizeof *w->keys, sort_key_cmp);
    char sub[PATH_BUF], full[PATH_BUF];
    size_t root_len = strlen(w->root);
    size_t rel_at = w->digest_whole ? 0 : root_len + (w->root[root_len - 1] != '/');
    for (size_t k = 0; k < w->n_files; k++) {
        const walk_file *f = &w->files[w->keys[k].idx];
        // the same parts that walk_read_dir joined (and length-checked) as this file's path
        if (join_path(sub, cls, w->pool + w->dirs[f->dir].rel, w->pool + f->name) ||
            join_path(full, w->root, sub, NULL))
            return ERR(ST_INPUT, "%s: a path under it is longer than %d bytes", w->root, IMAGE_SET_MAX_PATH);
        TRY(builder_add(b, full, strlen(full), rel_at, f->size, label));
    }
    return ST_OK;
}

// The class directories of root: entries that stat as directories (symlinks followed), names in one pool.
typedef struct class_dir {
    size_t name;  // offset in the class names' pool
    dev_t dev;
    ino_t ino;
} class_dir;

static int list_classes(const char *root_shown, const char *root, char **pool, size_t *pool_len, class_dir **out,
                        size_t *n_out) {
    DIR *dir = opendir(root);
    if (!dir) return ERR(ST_INPUT, "%s: cannot open the data set directory: %s", root_shown, strerror(errno));
    size_t pool_cap = 0, cap = 0, n = 0;
    class_dir *cl = NULL;
    int st = ST_OK;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(dir);
        if (!e) {
            if (errno) st = ERR(ST_INPUT, "%s: cannot read directory: %s", root_shown, strerror(errno));
            break;
        }
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        struct stat sb;
        if (fstatat(dirfd(dir), e->d_name, &sb, 0) != 0 || !S_ISDIR(sb.st_mode)) continue;
        if (n == IMAGE_SET_MAX_CLASSES) {
            st = ERR(ST_INPUT, "%s: more than %d class directories", root_shown, IMAGE_SET_MAX_CLASSES);
            break;
        }
        size_t l = strlen(e->d_name);
        if (grow((void **)&cl, &cap, n + 1, sizeof *cl) || grow((void **)pool, &pool_cap, *pool_len + l + 1, 1)) {
            st = ERR(ST_RUNTIME, "%s: out of host memory listing class directories", root_shown);
            break;
        }
        memcpy(*pool + *pool_len, e->d_name, l + 1);
        cl[n++] = (class_dir){*pool_len, sb.st_dev, sb.st_ino};
        *pool_len += l + 1;
    }
    closedir(dir);
    if (st == ST_OK && n == 0)
        st = ERR(ST_INPUT, "%s: no class directories in it (want ROOT/CLASS/IMAGE.jpg as torchvision's ImageFolder)",
                 root_shown);
    if (st != ST_OK) {
        free(cl);
        return st;
    }
    *out = cl;
    *n_out = n;
    return ST_OK;
}

// Sorts the classes by name (names in one directory are distinct).
static int sort_classes(const char *root_shown, const char *pool, class_dir *cl, size_t n) {
    sort_key *k = malloc(n * sizeof *k);
    class_dir *tmp = malloc(n * sizeof *tmp);
    if (!k || !tmp) {
        free(k);
        free(tmp);
        return ERR(ST_RUNTIME, "%s: out of host memory sorting classes", root_shown);
    }
    for (size_t i = 0; i < n; i++) k[i] = (sort_key){0, pool + cl[i].name, i};
    qsort(k, n, sizeof *k, sort_key_cmp);
    for (size_t i = 0; i < n; i++) tmp[i] = cl[k[i].idx];
    memcpy(cl, tmp, n * sizeof *cl);
    free(k);
    free(tmp);
    return ST_OK;
}

// The class filter sorted by name, for lookups; ST_INPUT on a duplicate or empty name.
static int filter_sort(char *const *names, int n, sort_key **out) {
    if (n < 1 || n > IMAGE_SET_MAX_CLASSES)
        return ERR(ST_INPUT, "class filter: %d classes (want 1 to %d)", n, IMAGE_SET_MAX_CLASSES);
    sort_key *k = malloc((size_t)n * sizeof *k);
    if (!k) return ERR(ST_RUNTIME, "out of host memory sorting %d class names", n);
    for (int i = 0; i < n; i++) {
        if (!names[i] || !names[i][0]) {
            free(k);
            return ERR(ST_INPUT, "class filter: class %d has an empty name", i);
        }
        k[i] = (sort_key){0, names[i], (size_t)i};
    }
    qsort(k, (size_t)n, sizeof *k, sort_key_cmp);
    for (int i = 1; i < n; i++)
        if (strcmp(k[i - 1].name, k[i].name) == 0) {
            int st = ERR(ST_INPUT, "class filter: class name '%s' given twice (classes %zu and %zu)", k[i].name,
                         k[i - 1].idx, k[i].idx);
            free(k);
            return st;
        }
    *out = k;
    return ST_OK;
}

static int filter_find(const sort_key *k, int n, const char *name) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, k[mid].name);
        if (c == 0) return (int)k[mid].idx;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return -1;
}

static int folder_scan(const char *root_in, char *const *class_filter, int n_filter, builder *b, walk *w,
                       char **pool, class_dir **cl, sort_key **fk, const char ***names) {
    if (!root_in || !root_in[0]) return ERR(ST_INPUT, "data set directory: the path is empty");
    size_t rl = strlen(root_in);
    if (rl > IMAGE_SET_MAX_PATH) return ERR(ST_INPUT, "%.200s...: path longer than %d bytes", root_in, IMAGE_SET_MAX_PATH);
    struct stat sb;
    if (stat(root_in, &sb) != 0) return ERR(ST_INPUT, "%s: cannot open the data set directory: %s", root_in, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return ERR(ST_INPUT, "%s: the data set directory is %s, not a directory", root_in, file_kind(sb.st_mode));
    char *root = w->root;
    memcpy(root, root_in, rl + 1);
    while (rl > 1 && root[rl - 1] == '/') root[--rl] = '\0';
    w->root_dev = sb.st_dev;
    w->root_ino = sb.st_ino;
    size_t pool_len = 0, n_cl = 0;
    TRY(list_classes(root_in, root, pool, &pool_len, cl, &n_cl));
    TRY(sort_classes(root_in, *pool, *cl, n_cl));
    if (class_filter) {
        TRY(filter_sort(class_filter, n_filter, fk));
        for (size_t c = 0; c < n_cl; c++)
            if (filter_find(*fk, n_filter, *pool + (*cl)[c].name) < 0)
                return ERR(ST_INPUT, "class '%s' is in %s but not in the training set (%d classes)",
                           *pool + (*cl)[c].name, root_in, n_filter);
    }
    size_t empty = 0, first_empty = 0;
    for (size_t c = 0; c < n_cl; c++) {
        const char *cls = *pool + (*cl)[c].name;
        int label = class_filter ? filter_find(*fk, n_filter, cls) : (int)c;
        size_t found = 0;
        TRY(walk_class(w, b, cls, (*cl)[c].dev, (*cl)[c].ino, label, &found));
        if (found == 0 && empty++ == 0) first_empty = c;
    }
    if (b->s->n == 0)
        return ERR(ST_INPUT, "%s: no image files (.jpg, .jpeg or .png) in any of its %zu class directories", root_in,
                   n_cl);
    if (empty) {
        char path[PATH_BUF];
        join_path(path, root, *pool + (*cl)[first_empty].name, NULL);  // walked, so not too long
        return ERR(ST_INPUT, "%s: empty class directory: no .jpg, .jpeg or .png file under it (empty class "
                   "directories in %s: %zu; torchvision: Found no valid file for the classes)", path, root_in, empty);
    }
    if (class_filter) return builder_finish(b, (const char *const *)class_filter, n_filter);
    *names = malloc(n_cl * sizeof **names);
    if (!*names) return ERR(ST_RUNTIME, "%s: out of host memory", root_in);
    for (size_t c = 0; c < n_cl; c++) (*names)[c] = *pool + (*cl)[c].name;
    return builder_finish(b, *names, (int)n_cl);
}

int image_set_folder(const char *root, char *const *class_filter, int n_filter, image_set *out) {
    builder b;
    builder_init(&b, out, root);
    walk w;
    memset(&w, 0, sizeof w);
    char *pool = NULL;
    class_dir *cl = NULL;
    sort_key *fk = NULL;
    const char **names = NULL;
    int st = folder_scan(root, class_filter, n_filter, &b, &w, &pool, &cl, &fk, &names);
    walk_free(&w);
    free(pool);
    free(cl);
    free(fk);
    free(names);
    if (st != ST_OK) image_set_free(out);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// List files

static int is_blank(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f'; }

// A whole text file (regular file, at most LIST_MAX_BYTES), NUL-terminated; *len without the NUL.
static int read_text(const char *path, const char *what, char **text, size_t *len) {
    int fd = -1;
    uint64_t size = 0;
    TRY(input_open(path, what, &fd, &size));
    if (size > LIST_MAX_BYTES) {
        close(fd);
        return ERR(ST_INPUT, "%s: %s of %llu bytes (more than %llu: refused)", path, what, (unsigned long long)size,
                   (unsigned long long)LIST_MAX_BYTES);
    }
    char *t = malloc((size_t)size + 1);
    if (!t) {
        close(fd);
        return ERR(ST_RUNTIME, "%s: out of host memory reading it", path);
    }
    int st = input_pread(fd, path, t, (size_t)size, 0);
    close(fd);
    if (st != ST_OK) {
        free(t);
        return st;
    }
    t[size] = '\0';
    *text = t;
    *len = (size_t)size;
    return ST_OK;
}

// The next line of [*p, end): its start, its length without trailing blanks (a CR included), and the line's start
// after leading blanks in *trim. Advances *p past the LF. 0 at the end.
typedef struct text_line {
    char *start;  // after leading blanks
    size_t len;   // without trailing blanks
    int has_nul;
} text_line;

static int next_line(char **p, char *end, text_line *ln) {
    if (*p >= end) return 0;
    char *s = *p;
    char *eol = memchr(s, '\n', (size_t)(end - s));
    if (!eol) eol = end;
    *p = eol < end ? eol + 1 : end;
    ln->has_nul = memchr(s, '\0', (size_t)(eol - s)) != NULL;
    while (s < eol && is_blank(*s)) s++;
    char *e = eol;
    while (e > s && is_blank(e[-1])) e--;
    ln->start = s;
    ln->len = (size_t)(e - s);
    return 1;
}

// The names file: one class name per line (blanks around a name are not part of it). *names point into *text.
static int read_names(const char *path, char **text, const char ***names, int *classes) {
    size_t len = 0;
    TRY(read_text(path, "class names file", text, &len));
    char *p = *text, *end = *text + len;
    size_t cap = 0, n = 0, line = 0;
    text_line ln;
    while (next_line(&p, end, &ln)) {
        line++;
        if (ln.has_nul) return ERR(ST_INPUT, "%s:%zu: a NUL byte in the line (not a text file?)", path, line);
        if (ln.len == 0) return ERR(ST_INPUT, "%s:%zu: empty class name (one name per line)", path, line);
        if (n == IMAGE_SET_MAX_CLASSES) return ERR(ST_INPUT, "%s: more than %d class names", path, IMAGE_SET_MAX_CLASSES);
        if (grow((void **)names, &cap, n + 1, sizeof **names)) return ERR(ST_RUNTIME, "%s: out of host memory", path);
        ln.start[ln.len] = '\0';  // a blank, the LF or the final NUL
        (*names)[n++] = ln.start;
    }
    if (n == 0) return ERR(ST_INPUT, "%s: no class names in it (want one per line)", path);
    // Duplicates: sorted by (name, line), equal names are neighbours; name the later line.
    sort_key *k = malloc(n * sizeof *k);
    if (!k) return ERR(ST_RUNTIME, "%s: out of host memory", path);
    for (size_t i = 0; i < n; i++) k[i] = (sort_key){0, (*names)[i], i};
    qsort(k, n, sizeof *k, sort_key_cmp);
    int st = ST_OK;
    for (size_t i = 1; i < n && st == ST_OK; i++)
        if (strcmp(k[i - 1].name, k[i].name) == 0)
            st = ERR(ST_INPUT, "%s:%zu: duplicate class name '%s' (also on line %zu)", path, k[i].idx + 1, k[i].name,
                     k[i - 1].idx + 1);
    free(k);
    *classes = (int)n;
    return st;
}

// The last blank-separated field of a trimmed line [s, e): its start (s when the line is one field); *path_end
// the end of what comes before it, blanks dropped.
static char *line_last_field(char *s, char *e, char **path_end) {
    char *lab = e;
    while (lab > s && !is_blank(lab[-1])) lab--;
    char *pe = lab;
    while (pe > s && is_blank(pe[-1])) pe--;
    *path_end = pe;
    return lab;
}

// Whether t is a decimal integer (as strtol reads one, all of t); its value in *v, clamped to long's range.
static int parse_long(const char *t, long *v) {
    char *end = NULL;
    *v = strtol(t, &end, 10);
    return end != t && *end == '\0';
}

// Appends the list entry [s, s + pl) (relative to the list's directory dir, dir_len bytes with its '/', unless
// absolute) after checking that it is a regular file. The digest sees the path as written in the list, or the
// whole path when digest_whole.
static int list_add_path(builder *b, const char *list, size_t line, const char *s, size_t pl, const char *dir,
                         size_t dir_len, int32_t label, int digest_whole) {
    char full[PATH_BUF];
    size_t use_dir = s[0] == '/' ? 0 : dir_len;
    if (use_dir + pl > IMAGE_SET_MAX_PATH)
        return ERR(ST_INPUT, "%s:%zu: path longer than %d bytes", list, line, IMAGE_SET_MAX_PATH);
    memcpy(full, dir, use_dir);
    memcpy(full + use_dir, s, pl);
    size_t fl = use_dir + pl;
    full[fl] = '\0';
    struct stat sb;
    if (stat(full, &sb) != 0) return ERR(ST_INPUT, "%s:%zu: cannot stat %s: %s", list, line, full, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return ERR(ST_INPUT, "%s:%zu: %s is %s, not a regular file", list, line, full, file_kind(sb.st_mode));
    return builder_add(b, full, fl, digest_whole ? 0 : use_dir, (uint64_t)sb.st_size, label);
}

// One list line `path label` (ln: trimmed, not blank, not a comment) into the set.
static int list_line(builder *b, const char *list, size_t line, text_line *ln, const char *dir, size_t dir_len,
                     int classes) {
    if (ln->has_nul) return ERR(ST_INPUT, "%s:%zu: a NUL byte in the line (not a text file?)", list, line);
    char *s = ln->start, *e = s + ln->len, *pe;
    char *lab = line_last_field(s, e, &pe);
    if (lab == s) return ERR(ST_INPUT, "%s:%zu: no label (want 'path label'): %.*s", list, line, (int)ln->len, s);
    *pe = '\0';  // path [s, pe); the blank it overwrites separated it from the label
    *e = '\0';   // label [lab, e)
    long v;
    if (!parse_long(lab, &v)) return ERR(ST_INPUT, "%s:%zu: label '%s' is not an integer", list, line, lab);
    if (v < 0 || v >= classes)  // a value clamped to long's range is out of it too
        return ERR(ST_INPUT, "%s:%zu: label %s is out of range [0, %d)", list, line, lab, classes);
    return list_add_path(b, list, line, s, (size_t)(pe - s), dir, dir_len, (int32_t)v, 0);
}

// The class count of a labelled set: the names file's line count (a classes > 0 given too must agree), else
// *classes itself, which must then be 1..IMAGE_SET_MAX_CLASSES. *names point into *names_text (NULL without one).
static int classes_setup(const char *origin, const char *names_path, int *classes, char **names_text,
                         const char ***names) {
    if (names_path) {
        int nc = 0;
        TRY(read_names(names_path, names_text, names, &nc));
        if (*classes > 0 && *classes != nc)
            return ERR(ST_INPUT, "%s: %d class names, but %d classes were asked for", names_path, nc, *classes);
        *classes = nc;
    } else if (*classes < 1 || *classes > IMAGE_SET_MAX_CLASSES) {
        return ERR(ST_INPUT, "%s: classes must be 1 to %d without a class names file (got %d)", origin,
                   IMAGE_SET_MAX_CLASSES, *classes);
    }
    return ST_OK;
}

// Every sample line of a list file (blank lines and comments skipped) to fn, with its number and the length of
// the list's directory with its '/' (the prefix of relative paths). *text holds the file (freed first).
typedef int (*list_line_fn)(builder *b, const char *list, size_t line, text_line *ln, size_t dir_len, int classes);

static int list_each_line(builder *b, const char *list, char **text, list_line_fn fn, int classes) {
    free(*text);
    *text = NULL;
    size_t len = 0;
    TRY(read_text(list, "list file", text, &len));
    const char *slash = strrchr(list, '/');
    size_t dir_len = slash ? (size_t)(slash - list) + 1 : 0;  // with its '/'
    char *p = *text, *end = *text + len;
    size_t line = 0;
    text_line ln;
    while (next_line(&p, end, &ln)) {
        line++;
        if (ln.len == 0 || ln.start[0] == '#') continue;
        TRY(fn(b, list, line, &ln, dir_len, classes));
    }
    return ST_OK;
}

static int list_sample_line(builder *b, const char *list, size_t line, text_line *ln, size_t dir_len, int classes) {
    return list_line(b, list, line, ln, list, dir_len, classes);
}

static int list_scan(const char *list_path, const char *names_path, int classes, builder *b, char **text,
                     char **names_text, const char ***names) {
    if (!list_path || !list_path[0]) return ERR(ST_INPUT, "list file: the path is empty");
    TRY(classes_setup(list_path, names_path, &classes, names_text, names));
    TRY(list_each_line(b, list_path, text, list_sample_line, classes));
    if (b->s->n == 0) return ERR(ST_INPUT, "%s: no samples in the list (want lines 'path label')", list_path);
    return builder_finish(b, *names, classes);
}

int image_set_list(const char *list_path, const char *names_path, int classes, image_set *out) {
    builder b;
    builder_init(&b, out, list_path);
    char *text = NULL, *names_text = NULL;
    const char **names = NULL;
    int st = list_scan(list_path, names_path, classes, &b, &text, &names_text, &names);
    free(text);
    free(names_text);
    free(names);
    if (st != ST_OK) image_set_free(out);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Tar shards (WebDataset): the pattern, a tar header reader, and the grouping of members into samples
//
// Shards are read by a small reader of this file's own rather than libarchive: a sample is later read by a
// worker thread as one pread at its image member's data offset, so all the scan needs is each member's name
// and where its data starts in the uncompressed file; libarchive streams an archive front to back and gives no
// offsets to come back to (and would add a dependency for 300 lines of header parsing). Headers are read
// through a window of TAR_WINDOW bytes: a shard of small members is read front to back in large reads, while a
// large member is skipped with one seek.

#define TAR_BLOCK 512
#define TAR_WINDOW ((size_t)64 << 10)  // the read window, and the largest pax header accepted
#define CLS_MAX_BYTES 64               // a .cls member longer than this is not a label
#define BRACE_MAX_RANGES 8             // ranges in one pattern

typedef struct brace_range {
    const char *lit;  // the literal text before the range
    size_t lit_len;
    uint64_t a, b;    // from a to b (downwards when a > b)
    int width;        // zero-padded to this many digits (0: no padding)
} brace_range;

typedef struct brace_pattern {
    brace_range r[BRACE_MAX_RANGES];
    int n;
    const char *tail;  // the literal text after the last range
    size_t tail_len;
    uint64_t count;    // paths it expands to
} brace_pattern;

// "A..B" (n bytes, the inside of a brace) as a range; -1 when it is not one.
static int brace_parse_range(const char *s, size_t n, brace_range *r) {
    size_t la = 0;
    while (la < n && s[la] >= '0' && s[la] <= '9') la++;
    if (la == 0 || la > 18 || la + 2 >= n || s[la] != '.' || s[la + 1] != '.') return -1;
    const char *b = s + la + 2;
    size_t lb = n - la - 2;
    if (lb > 18) return -1;
    r->a = r->b = 0;
    for (size_t i = 0; i < la; i++) r->a = r->a * 10 + (uint64_t)(s[i] - '0');
    for (size_t i = 0; i < lb; i++) {
        if (b[i] < '0' || b[i] > '9') return -1;
        r->b = r->b * 10 + (uint64_t)(b[i] - '0');
    }
    // braceexpand's rule: padded to the wider bound when either is written with a leading zero
    int padded = (la > 1 && s[0] == '0') || (lb > 1 && b[0] == '0');
    r->width = padded ? (int)(la > lb ? la : lb) : 0;
    return 0;
}

// One comma-free pattern [p, p + len) of `whole` into its ranges.
static int brace_parse(const char *whole, const char *p, size_t len, brace_pattern *bp) {
    bp->n = 0;
    bp->count = 1;
    size_t i = 0, lit = 0;
    while (i < len) {
        if (p[i] == '}')
            return ERR(ST_INPUT, "%.512s: bad shard pattern: a '}' without a '{' at character %zu", whole,
                       (size_t)(p - whole) + i + 1);
        if (p[i] != '{') {
            i++;
            continue;
        }
        size_t close = i + 1;
        while (close < len && p[close] != '}' && p[close] != '{') close++;
        if (close == len || p[close] == '{')
            return ERR(ST_INPUT, "%.512s: bad shard pattern: the '{' at character %zu is not closed", whole,
                       (size_t)(p - whole) + i + 1);
        brace_range r;
        if (brace_parse_range(p + i + 1, close - i - 1, &r))
            return ERR(ST_INPUT, "%.512s: bad shard pattern: '{%.*s}' is not a range {A..B} of decimal numbers (up "
                       "to 18 digits; lists in braces are not supported: separate whole patterns with ',')", whole,
                       (int)(close - i - 1), p + i + 1);
        if (bp->n == BRACE_MAX_RANGES)
            return ERR(ST_INPUT, "%.512s: bad shard pattern: more than %d ranges in one pattern", whole,
                       BRACE_MAX_RANGES);
        r.lit = p + lit;
        r.lit_len = i - lit;
        uint64_t span = (r.a > r.b ? r.a - r.b : r.b - r.a) + 1;
        if (span > IMAGE_SET_MAX_SHARDS || bp->count * span > IMAGE_SET_MAX_SHARDS)
            return ERR(ST_INPUT, "%.512s: the shard pattern names more than %d shards", whole, IMAGE_SET_MAX_SHARDS);
        bp->count *= span;
        bp->r[bp->n++] = r;
        i = close + 1;
        lit = i;
    }
    bp->tail = p + lit;
    bp->tail_len = len - lit;
    return ST_OK;
}

// Every path of bp, appended to the set's path pool; their pool offsets appended to (*off)[*n].
static int brace_expand(builder *b, const char *whole, const brace_pattern *bp, size_t **off, size_t *n,
                        size_t *cap) {
    uint64_t idx[BRACE_MAX_RANGES] = {0};
    char path[PATH_BUF];
    for (uint64_t k = 0; k < bp->count; k++) {
        size_t len = 0;
        int too_long = 0;
        for (int j = 0; j < bp->n && !too_long; j++) {
            const brace_range *r = &bp->r[j];
            char num[32];
            uint64_t v = r->a <= r->b ? r->a + idx[j] : r->a - idx[j];
            int nl = snprintf(num, sizeof num, "%0*llu", r->width, (unsigned long long)v);
            if (len + r->lit_len + (size_t)nl > IMAGE_SET_MAX_PATH) {
                too_long = 1;
                break;
            }
            memcpy(path + len, r->lit, r->lit_len);
            memcpy(path + len + r->lit_len, num, (size_t)nl);
            len += r->lit_len + (size_t)nl;
        }
        if (too_long || len + bp->tail_len > IMAGE_SET_MAX_PATH)
            return ERR(ST_INPUT, "%.512s: a shard path is longer than %d bytes", whole, IMAGE_SET_MAX_PATH);
        memcpy(path + len, bp->tail, bp->tail_len);
        len += bp->tail_len;
        if (*n == IMAGE_SET_MAX_SHARDS)
            return ERR(ST_INPUT, "%.512s: the shard pattern names more than %d shards", whole, IMAGE_SET_MAX_SHARDS);
        if (grow((void **)off, cap, *n + 1, sizeof **off)) return ERR(ST_RUNTIME, "%.512s: out of host memory", whole);
        TRY(builder_add_path(b, path, len, &(*off)[*n]));
        (*n)++;
        for (int j = bp->n - 1; j >= 0; j--) {  // the odometer: the rightmost range turns fastest
            const brace_range *r = &bp->r[j];
            if (idx[j] < (r->a > r->b ? r->a - r->b : r->b - r->a)) {
                idx[j]++;
                break;
            }
            idx[j] = 0;
        }
    }
    return ST_OK;
}

// The shard paths of a pattern list ("p1,p2,..."), in order, into the set's path pool; refuses a shard named
// twice.
static int shards_expand(builder *b, const char *patterns, size_t **off, size_t *n) {
    size_t cap = 0;
    *n = 0;
    const char *p = patterns;
    for (;;) {
        const char *e = p;
        int in_brace = 0;
        for (; *e && (*e != ',' || in_brace); e++) {
            if (*e == '{') in_brace = 1;
            else if (*e == '}') in_brace = 0;
        }
        if (e == p)
            return ERR(ST_INPUT, "%.512s: bad shard pattern: an empty pattern at character %zu (patterns are separated "
                       "by one ',')", patterns, (size_t)(p - patterns) + 1);
        brace_pattern bp;
        TRY(brace_parse(patterns, p, (size_t)(e - p), &bp));
        TRY(brace_expand(b, patterns, &bp, off, n, &cap));
        if (!*e) break;
        p = e + 1;
    }
    // A shard named twice would hold its samples twice: sorted by name, twins are neighbours.
    sort_key *k = malloc(*n * sizeof *k);
    if (!k) return ERR(ST_RUNTIME, "%.512s: out of host memory", patterns);
    for (size_t i = 0; i < *n; i++) k[i] = (sort_key){0, b->s->paths + (*off)[i], i};
    qsort(k, *n, sizeof *k, sort_key_cmp);
    int st = ST_OK;
    for (size_t i = 1; i < *n && st == ST_OK; i++)
        if (strcmp(k[i - 1].name, k[i].name) == 0)
            st = ERR(ST_INPUT, "%.512s: shard %s is named twice (shards %zu and %zu of the pattern)", patterns,
                     k[i].name, k[i - 1].idx, k[i].idx);
    free(k);
    return st;
}

// ---- the tar reader

typedef struct tar_reader {
    int fd;
    const char *path;
    uint64_t size;  // the file's size when opened
    uint8_t *win;   // TAR_WINDOW bytes of the file from win_off
    uint64_t win_off;
    size_t win_len;
    uint64_t pos;   // the next header
    char pending[PATH_BUF];  // the next member's name from a GNU 'L' or pax 'path=' record
    int has_pending;
    uint64_t pending_size;   // its size from a pax 'size=' record
    int has_pending_size;
    uint64_t pending_at;     // where the record that set them starts
} tar_reader;

typedef struct tar_member {
    char name[PATH_BUF];
    uint64_t header_off, data_off, size;
} tar_member;

// The n bytes at off (off + n <= size, n <= TAR_WINDOW), through the window.
static int tar_bytes(tar_reader *r, uint64_t off, size_t n, const uint8_t **out) {
    if (off < r->win_off || off + n > r->win_off + r->win_len) {
        uint64_t left = r->size - off;
        size_t want = left < TAR_WINDOW ? (size_t)left : TAR_WINDOW;
        r->win_len = 0;
        TRY(input_pread(r->fd, r->path, r->win, want, off));  // ST_INPUT if it shrank since the open
        r->win_off = off;
        r->win_len = want;
    }
    *out = r->win + (off - r->win_off);
    return ST_OK;
}

static size_t field_len(const uint8_t *f, size_t n) {
    const uint8_t *z = memchr(f, '\0', n);
    return z ? (size_t)(z - f) : n;
}

// A numeric header field: octal digits between optional blanks, ended by a NUL or the field's end (an empty field
// is 0, as Python's tarfile reads it), or GNU's base-256 (first byte 0x80). -1 when it is neither.
static int tar_number(const uint8_t *f, size_t n, uint64_t *v) {
    *v = 0;
    if (f[0] == 0x80) {
        for (size_t i = 1; i < n; i++) {
            if (*v >> 56) return -1;
            *v = (*v << 8) | f[i];
        }
        return 0;
    }
    size_t i = 0, end = field_len(f, n);
    while (i < end && f[i] == ' ') i++;
    for (; i < end && f[i] >= '0' && f[i] <= '7'; i++) {
        if (*v >> 60) return -1;
        *v = *v * 8 + (uint64_t)(f[i] - '0');
    }
    while (i < end && f[i] == ' ') i++;
    return i == end ? 0 : -1;
}

// The checksum: the sum of the header's bytes with the checksum field read as blanks, unsigned (POSIX) or signed
// (some old tars).
static int tar_checksum_ok(const uint8_t *h, uint64_t *stored, uint64_t *computed) {
    uint64_t u = 0;
    int64_t sg = 0;
    for (int i = 0; i < TAR_BLOCK; i++) {
        uint8_t c = (i >= 148 && i < 156) ? ' ' : h[i];
        u += c;
        sg += (signed char)c;
    }
    *computed = u;
    if (tar_number(h + 148, 8, stored)) return 0;
    return *stored == u || (int64_t)*stored == sg;
}

// The member name a header holds: POSIX ustar's prefix '/' name, or the name field (at most 256 bytes).
static void tar_header_name(const uint8_t *h, char *out) {
    size_t nl = field_len(h, 100), pl = 0;
    if (memcmp(h + 257, "ustar\0", 6) == 0) pl = field_len(h + 345, 155);
    size_t len = 0;
    if (pl) {
        memcpy(out, h + 345, pl);
        out[pl] = '/';
        len = pl + 1;
    }
    memcpy(out + len, h, nl);
    out[len + nl] = '\0';
}

// A GNU 'L' record's data (n bytes at off): the next member's name.
static int tar_long_name(tar_reader *r, uint64_t at, uint64_t off, uint64_t n) {
    if (n > IMAGE_SET_MAX_PATH + 1)
        return ERR(ST_INPUT, "%s: the GNU long name record at byte %llu holds %llu bytes (a member name longer than %d "
                   "bytes: refused)", r->path, (unsigned long long)at, (unsigned long long)n, IMAGE_SET_MAX_PATH);
    const uint8_t *d;
    TRY(tar_bytes(r, off, (size_t)n, &d));
    size_t l = field_len(d, (size_t)n);
    memcpy(r->pending, d, l);
    r->pending[l] = '\0';
    r->has_pending = l > 0;
    r->pending_at = at;
    return ST_OK;
}

// A pax 'x' record set (n bytes at off): "LEN key=value\n" records, LEN counting the whole record. path= and
// size= are the next member's; other keys are not needed here.
static int tar_pax(tar_reader *r, uint64_t at, uint64_t off, uint64_t n) {
    if (n > TAR_WINDOW)
        return ERR(ST_INPUT, "%s: the pax header at byte %llu holds %llu bytes (more than %zu: refused)", r->path,
                   (unsigned long long)at, (unsigned long long)n, TAR_WINDOW);
    const uint8_t *d;
    TRY(tar_bytes(r, off, (size_t)n, &d));
    const char *p = (const char *)d;
    size_t i = 0;
    while (i < n && p[i] != '\0') {  // NUL padding after the records is tolerated
        size_t j = i;
        uint64_t len = 0;
        while (j < n && j - i < 12 && p[j] >= '0' && p[j] <= '9') len = len * 10 + (uint64_t)(p[j++] - '0');
        const char *eq = j < n && p[j] == ' ' && len > j - i + 1 && len <= n - i
                             ? memchr(p + j + 1, '=', (size_t)(len - (j - i) - 1)) : NULL;
        if (!eq || p[i + len - 1] != '\n')
            return ERR(ST_INPUT, "%s: a bad pax record at byte %llu of the pax header at byte %llu (want 'LENGTH "
                       "key=value\\n')", r->path, (unsigned long long)(off + i), (unsigned long long)at);
        const char *key = p + j + 1, *val = eq + 1;
        size_t kl = (size_t)(eq - key), vl = (size_t)(p + i + len - 1 - val);
        if (kl == 4 && memcmp(key, "path", 4) == 0) {
            if (vl > IMAGE_SET_MAX_PATH || memchr(val, '\0', vl))
                return ERR(ST_INPUT, "%s: the pax header at byte %llu: a path of %zu bytes (longer than %d or with a "
                           "NUL byte: refused)", r->path, (unsigned long long)at, vl, IMAGE_SET_MAX_PATH);
            memcpy(r->pending, val, vl);
            r->pending[vl] = '\0';
            r->has_pending = vl > 0;
            r->pending_at = at;
        } else if (kl == 4 && memcmp(key, "size", 4) == 0) {
            uint64_t v = 0;
            size_t q = 0;
            for (; q < vl && q < 19 && val[q] >= '0' && val[q] <= '9'; q++) v = v * 10 + (uint64_t)(val[q] - '0');
            if (q == 0 || q != vl)
                return ERR(ST_INPUT, "%s: the pax header at byte %llu: size '%.*s' is not a number", r->path,
                           (unsigned long long)at, (int)(vl < 40 ? vl : 40), val);
            r->pending_size = v;
            r->has_pending_size = 1;
            r->pending_at = at;
        }
        i += (size_t)len;
    }
    return ST_OK;
}

// The next regular member into *m; *end at the archive's end (a zero block, or the end of the file at a header
// boundary).
static int tar_next(tar_reader *r, tar_member *m, int *end) {
    char hname[PATH_BUF];
    for (;;) {
        const uint64_t pos = r->pos, size = r->size;
        const uint8_t *h = NULL;
        int zero = pos == size;
        if (!zero && size - pos < TAR_BLOCK)
            return ERR(ST_INPUT, "%s: truncated tar: the file ends %llu bytes into the header at byte %llu",
                       r->path, (unsigned long long)(size - pos), (unsigned long long)pos);
        if (!zero) {
            TRY(tar_bytes(r, pos, TAR_BLOCK, &h));
            zero = 1;
            for (int i = 0; i < TAR_BLOCK && zero; i++) zero = h[i] == 0;
        }
        if (zero) {
            if (r->has_pending || r->has_pending_size)
                return ERR(ST_INPUT, "%s: truncated tar: the long name or pax record at byte %llu has no member after "
                           "it", r->path, (unsigned long long)r->pending_at);
            *end = 1;
            return ST_OK;
        }
        tar_header_name(h, hname);
        uint64_t stored, computed, n;
        if (!tar_checksum_ok(h, &stored, &computed))
            return ERR(ST_INPUT, "%s: bad tar header checksum at byte %llu (member '%s'; stored %llu, computed %llu): "
                       "not a tar file, or corrupt", r->path, (unsigned long long)pos, hname,
                       (unsigned long long)stored, (unsigned long long)computed);
        if (tar_number(h + 124, 12, &n))
            return ERR(ST_INPUT, "%s: member '%s' at byte %llu: the size field is not a number: corrupt tar", r->path,
                       hname, (unsigned long long)pos);
        const char type = (char)h[156];
        const int record = type == 'L' || type == 'K' || type == 'x' || type == 'g';
        if (!record && r->has_pending_size) n = r->pending_size;
        const char *name = !record && r->has_pending ? r->pending : hname;
        const uint64_t data = pos + TAR_BLOCK;
        if (n > size - data)
            return ERR(ST_INPUT, "%s: truncated tar: member '%s' (header at byte %llu) has %llu bytes of data, but "
                       "the file ends %llu bytes after its header", r->path, name, (unsigned long long)pos,
                       (unsigned long long)n, (unsigned long long)(size - data));
        const uint64_t padded = (n + TAR_BLOCK - 1) / TAR_BLOCK * TAR_BLOCK;
        if (padded > size - data)
            return ERR(ST_INPUT, "%s: truncated tar: member '%s' (header at byte %llu): the file ends inside the "
                       "padding after its data", r->path, name, (unsigned long long)pos);
        r->pos = data + padded;
        if (type == 'L') {
            TRY(tar_long_name(r, pos, data, n));
            continue;
        }
        if (type == 'x') {
            TRY(tar_pax(r, pos, data, n));
            continue;
        }
        if (record) continue;  // 'K' (a long link name), 'g' (global pax): nothing a sample needs
        const int regular = type == '0' || type == '\0' || type == '7';
        if (regular) {
            snprintf(m->name, sizeof m->name, "%s", name);
            m->header_off = pos;
            m->data_off = data;
            m->size = n;
        }
        r->has_pending = r->has_pending_size = 0;  // they were this member's, whatever its kind
        if (regular) return ST_OK;
    }
}

// ---- members into samples

typedef struct shard_group {
    int active;
    char key[PATH_BUF];  // the member name up to its key's end
    size_t key_len;
    char img[PATH_BUF];  // its image member, when has_img
    int has_img;
    uint64_t img_off, img_size;
    char cls[PATH_BUF];  // its .cls member, when has_cls
    int has_cls;
    int32_t label;
} shard_group;

typedef struct shard_scan {
    builder *b;
    int classes;
    tar_reader r;
    tar_member m;
    shard_group g;
    char *keys;         // this shard's keys, NUL-terminated, for the duplicate check
    size_t keys_len, keys_cap;
    size_t *key_off;
    size_t n_keys, key_off_cap;
    sort_key *sk;
    size_t sk_cap;
} shard_scan;

// WebDataset's key: the name up to the first '.' after its last '/'. 0 when there is none (no '.', or the base
// name starts with '.').
static int member_key(const char *name, size_t *key_len) {
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    const char *dot = strchr(base, '.');
    if (!dot || dot == base) return 0;
    *key_len = (size_t)(dot - name);
    return 1;
}

static int ext_is(const char *ext, const char *want) {
    for (; *ext && *want; ext++, want++) {
        char c = *ext;
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c != *want) return 0;
    }
    return *ext == *want;
}

// The label a .cls member holds: a decimal integer in [0, classes), blanks and newlines around it allowed.
static int shard_label(shard_scan *sc, const char *shard, int32_t *label) {
    const tar_member *m = &sc->m;
    if (m->size > CLS_MAX_BYTES)
        return ERR(ST_INPUT, "%s: member '%s' holds %llu bytes, too many for a label (want a decimal integer)", shard,
                   m->name, (unsigned long long)m->size);
    const uint8_t *d;
    TRY(tar_bytes(&sc->r, m->data_off, (size_t)m->size, &d));
    char t[CLS_MAX_BYTES + 1];
    size_t a = 0, e = (size_t)m->size;
    memcpy(t, d, e);
    t[e] = '\0';
    while (a < e && (is_blank(t[a]) || t[a] == '\n')) a++;
    while (e > a && (is_blank(t[e - 1]) || t[e - 1] == '\n')) e--;
    t[e] = '\0';
    for (size_t i = a; i < e; i++)  // shown in the message below: printable ASCII only
        if ((unsigned char)t[i] < 0x20 || (unsigned char)t[i] > 0x7e) t[i] = '?';
    long v;
    if (!parse_long(t + a, &v))
        return ERR(ST_INPUT, "%s: member '%s' holds '%s', not an integer label", shard, m->name, t + a);
    if (v < 0 || v >= sc->classes)
        return ERR(ST_INPUT, "%s: member '%s': label %s is out of range [0, %d)", shard, m->name, t + a, sc->classes);
    *label = (int32_t)v;
    return ST_OK;
}

// The group ends: its sample (image and label) into the set, or nothing for a group with neither.
static int shard_group_end(shard_scan *sc, const char *shard, size_t shard_path, int k) {
    shard_group *g = &sc->g;
    if (!g->active) return ST_OK;
    g->active = 0;
    if (g->has_img && !g->has_cls)
        return ERR(ST_INPUT, "%s: member '%s' has no '%s.cls' next to it (a sample's members must be consecutive: "
                   "tar --sort=name or launch/make_shards.py writes them so)", shard, g->img, g->key);
    if (g->has_cls && !g->has_img)
        return ERR(ST_INPUT, "%s: member '%s' has no image ('%s.jpg', '.jpeg' or '.png') next to it (a sample's "
                   "members must be consecutive: tar --sort=name or launch/make_shards.py writes them so)", shard,
                   g->cls, g->key);
    if (!g->has_img) return ST_OK;
    builder *b = sc->b;
    image_set *s = b->s;
    TRY(builder_reserve(b));
    s->path_off[s->n] = shard_path;
    s->labels[s->n] = g->label;
    s->sizes[s->n] = g->img_size;
    s->offsets[s->n] = g->img_off;
    s->shard[s->n] = k;
    s->n++;
    b->h = hash_str(b->h, g->img, strlen(g->img));
    b->h = hash_u64(hash_u64(b->h, g->img_size), (uint64_t)(uint32_t)g->label);
    return ST_OK;
}

// A member whose key is [name, name + kl): a new group when the key changes, else one more member of this one.
static int shard_member(shard_scan *sc, const char *shard, size_t shard_path, int k, size_t kl) {
    shard_group *g = &sc->g;
    const tar_member *m = &sc->m;
    if (!g->active || g->key_len != kl || memcmp(g->key, m->name, kl) != 0) {
        TRY(shard_group_end(sc, shard, shard_path, k));
        memcpy(g->key, m->name, kl);
        g->key[kl] = '\0';
        g->key_len = kl;
        g->active = 1;
        g->has_img = g->has_cls = 0;
        if (grow((void **)&sc->keys, &sc->keys_cap, sc->keys_len + kl + 1, 1) ||
            grow((void **)&sc->key_off, &sc->key_off_cap, sc->n_keys + 1, sizeof *sc->key_off))
            return ERR(ST_RUNTIME, "%s: out of host memory", shard);
        memcpy(sc->keys + sc->keys_len, g->key, kl + 1);
        sc->key_off[sc->n_keys++] = sc->keys_len;
        sc->keys_len += kl + 1;
    }
    const char *ext = m->name + kl + 1;
    if (ext_is(ext, "jpg") || ext_is(ext, "jpeg") || ext_is(ext, "png")) {
        if (g->has_img)
            return ERR(ST_INPUT, "%s: member '%s': key '%s' already has an image, '%s' (one image per sample)", shard,
                       m->name, g->key, g->img);
        memcpy(g->img, m->name, strlen(m->name) + 1);
        g->img_off = m->data_off;
        g->img_size = m->size;
        g->has_img = 1;
    } else if (ext_is(ext, "cls")) {
        if (g->has_cls)
            return ERR(ST_INPUT, "%s: member '%s': key '%s' already has a label, '%s' (one .cls per sample)", shard,
                       m->name, g->key, g->cls);
        TRY(shard_label(sc, shard, &g->label));
        memcpy(g->cls, m->name, strlen(m->name) + 1);
        g->has_cls = 1;
    }
    return ST_OK;
}

// A key that comes back after other keys would be a second sample of that key (WebDataset's grouping only joins
// consecutive members): refused.
static int shard_keys_unique(shard_scan *sc, const char *shard) {
    if (sc->n_keys < 2) return ST_OK;
    if (grow((void **)&sc->sk, &sc->sk_cap, sc->n_keys, sizeof *sc->sk))
        return ERR(ST_RUNTIME, "%s: out of host memory", shard);
    for (size_t i = 0; i < sc->n_keys; i++) sc->sk[i] = (sort_key){0, sc->keys + sc->key_off[i], i};
    qsort(sc->sk, sc->n_keys, sizeof *sc->sk, sort_key_cmp);
    for (size_t i = 1; i < sc->n_keys; i++)
        if (strcmp(sc->sk[i - 1].name, sc->sk[i].name) == 0)
            return ERR(ST_INPUT, "%s: duplicate key '%s': its members are in two places (a sample's members must be "
                       "consecutive, and keys unique within a shard)", shard, sc->sk[i].name);
    return ST_OK;
}

static int shard_members(shard_scan *sc, const char *shard, size_t shard_path, int k) {
    for (;;) {
        int end = 0;
        TRY(tar_next(&sc->r, &sc->m, &end));
        if (end) break;
        size_t kl;
        if (member_key(sc->m.name, &kl)) TRY(shard_member(sc, shard, shard_path, k, kl));
    }
    TRY(shard_group_end(sc, shard, shard_path, k));
    return shard_keys_unique(sc, shard);
}

// Shard k (its path at pool offset shard_path): its samples appended to the set.
static int shard_scan_one(shard_scan *sc, int k, size_t shard_path) {
    image_set *s = sc->b->s;
    const char *shard = s->paths + shard_path;  // the pool does not move during the scan: it holds only shard paths
    int fd = -1;
    uint64_t size = 0;
    TRY(input_open(shard, "shard", &fd, &size));
    sc->r.fd = fd;
    sc->r.path = shard;
    sc->r.size = size;
    sc->r.win_off = sc->r.win_len = 0;
    sc->r.pos = 0;
    sc->r.has_pending = sc->r.has_pending_size = 0;
    sc->g.active = 0;
    sc->keys_len = sc->n_keys = 0;
    s->shard_first[k] = (uint32_t)s->n;
    const char *base = strrchr(shard, '/');
    base = base ? base + 1 : shard;
    sc->b->h = hash_str(sc->b->h, base, strlen(base));
    int st = shard_members(sc, shard, shard_path, k);
    close(fd);
    if (st == ST_OK && (uint32_t)s->n == s->shard_first[k])
        st = ERR(ST_INPUT, "%s: no samples in the shard (%llu bytes; want members KEY.jpg, KEY.jpeg or KEY.png, each "
                 "with KEY.cls)", shard, (unsigned long long)size);
    return st;
}

static int shards_scan(const char *pattern, const char *names_path, int classes, builder *b, char **names_text,
                       const char ***names, size_t **shard_path, shard_scan **sc) {
    if (!pattern || !pattern[0]) return ERR(ST_INPUT, "shard pattern: the pattern is empty");
    TRY(classes_setup(pattern, names_path, &classes, names_text, names));
    size_t n_shards = 0;
    TRY(shards_expand(b, pattern, shard_path, &n_shards));
    image_set *s = b->s;
    b->shards = 1;
    if (!(s->shard_first = malloc((n_shards + 1) * sizeof *s->shard_first)) || !(*sc = calloc(1, sizeof **sc)) ||
        !((*sc)->r.win = malloc(TAR_WINDOW)))
        return ERR(ST_RUNTIME, "%s: out of host memory", pattern);
    s->n_shards = (int)n_shards;
    (*sc)->b = b;
    (*sc)->classes = classes;
    for (size_t k = 0; k < n_shards; k++) TRY(shard_scan_one(*sc, (int)k, (*shard_path)[k]));
    s->shard_first[n_shards] = (uint32_t)s->n;
    return builder_finish(b, *names, classes);
}

int image_set_shards(const char *pattern, const char *names_path, int classes, image_set *out) {
    builder b;
    builder_init(&b, out, pattern);
    char *names_text = NULL;
    const char **names = NULL;
    size_t *shard_path = NULL;
    shard_scan *sc = NULL;
    int st = shards_scan(pattern, names_path, classes, &b, &names_text, &names, &shard_path, &sc);
    if (sc) {
        free(sc->r.win);
        free(sc->keys);
        free(sc->key_off);
        free(sc->sk);
        free(sc);
    }
    free(shard_path);
    free(names_text);
    free(names);
    if (st != ST_OK) image_set_free(out);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// --predict's inputs: directories, image files and list files, in the order given

// Every image file under directory dir (stat'd as sb), label 0, in torchvision's order within one class directory.
static int inputs_dir(walk *w, builder *b, const char *dir, const struct stat *sb) {
    size_t l = strlen(dir);
    memcpy(w->root, dir, l + 1);  // length checked by inputs_scan
    while (l > 1 && w->root[l - 1] == '/') w->root[--l] = '\0';
    w->root_dev = sb->st_dev;
    w->root_ino = sb->st_ino;
    size_t found = 0;
    return walk_class(w, b, "", sb->st_dev, sb->st_ino, 0, &found);
}

// A list of `path` or `path label` lines. A last field that is an integer is a label (ignored); otherwise the
// whole line is the path. *text: the list's text (freed by the caller, reused from list to list).
// A --predict list line: `path` or `path label` (the label, if any, ignored).
static int inputs_line(builder *b, const char *list, size_t line, text_line *ln, size_t dir_len, int classes) {
    (void)classes;
    if (ln->has_nul) return ERR(ST_INPUT, "%s:%zu: a NUL byte in the line (not a text file?)", list, line);
    char *s = ln->start, *e = s + ln->len, *pe;
    char *lab = line_last_field(s, e, &pe);
    *e = '\0';  // a blank, the LF or the final NUL
    long v;
    if (lab == s || !parse_long(lab, &v)) pe = e;
    return list_add_path(b, list, line, s, (size_t)(pe - s), list, dir_len, 0, 1);
}

static int inputs_list(builder *b, const char *list, char **text) { return list_each_line(b, list, text, inputs_line, 0); }

// "a, b, c and 2 more" into buf (n bytes): as many paths as fit.
static void inputs_names(const char *const *paths, int n_paths, char *buf, size_t n) {
    size_t len = 0;
    int shown = 0;
    buf[0] = '\0';
    for (; shown < n_paths; shown++) {
        size_t l = strlen(paths[shown]);
        if (len + l + 2 + 32 >= n) break;  // room for ", " and " and N more"
        len += (size_t)snprintf(buf + len, n - len, "%s%s", shown ? ", " : "", paths[shown]);
    }
    if (shown < n_paths) snprintf(buf + len, n - len, "%s%d more", shown ? " and " : "", n_paths - shown);
}

static int inputs_scan(const char *const *paths, int n_paths, builder *b, walk *w, char **text) {
    if (!paths || n_paths < 1) return ERR(ST_INPUT, "no inputs given (want directories, image files or list files)");
    w->digest_whole = 1;
    for (int i = 0; i < n_paths; i++) {
        const char *path = paths[i];
        if (!path || !path[0]) return ERR(ST_INPUT, "input %d of %d: the path is empty", i + 1, n_paths);
        if (strlen(path) > IMAGE_SET_MAX_PATH)
            return ERR(ST_INPUT, "%.200s...: path longer than %d bytes", path, IMAGE_SET_MAX_PATH);
        struct stat sb;  // stat only: nothing is opened before it is known to be a regular file
        if (stat(path, &sb) != 0) return ERR(ST_INPUT, "%s: cannot stat the input: %s", path, strerror(errno));
        if (S_ISDIR(sb.st_mode)) {
            TRY(inputs_dir(w, b, path, &sb));
        } else if (!S_ISREG(sb.st_mode)) {
            if (is_image_name(path))
                return ERR(ST_INPUT, "%s is %s, not a regular file (refused; an image file must be a regular file)",
                           path, file_kind(sb.st_mode));
            return ERR(ST_INPUT, "%s is %s, not a directory, an image file or a list file (refused)", path,
                       file_kind(sb.st_mode));
        } else if (is_image_name(path)) {
            TRY(builder_add(b, path, strlen(path), 0, (uint64_t)sb.st_size, 0));
        } else {
            TRY(inputs_list(b, path, text));
        }
    }
    if (b->s->n == 0) {
        char names[1024];
        inputs_names(paths, n_paths, names, sizeof names);
        return ERR(ST_INPUT, "%s: no images: no .jpg, .jpeg or .png file under the directories and no entry in the "
                   "lists given", names);
    }
    return builder_finish(b, NULL, 0);
}

int image_set_inputs(const char *const *paths, int n_paths, image_set *out) {
    char origin[sizeof out->origin];
    if (paths && n_paths > 1)
        snprintf(origin, sizeof origin, "%.4095s and %d more", paths[0] ? paths[0] : "", n_paths - 1);
    else
        snprintf(origin, sizeof origin, "%s", paths && n_paths == 1 && paths[0] ? paths[0] : "");
    builder b;
    builder_init(&b, out, origin);
    walk w;
    memset(&w, 0, sizeof w);
    char *text = NULL;
    int st = inputs_scan(paths, n_paths, &b, &w, &text);
    walk_free(&w);
    free(text);
    if (st != ST_OK) image_set_free(out);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Reading a sample (worker threads: no global state)

__attribute__((format(printf, 4, 5))) static int read_fail(char *err, size_t err_len, int st, const char *fmt, ...) {
    if (!err || err_len == 0) return st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
    for (char *p = err; *p; p++)  // one line, whatever the file name holds
        if (*p == '\n' || *p == '\r') *p = ' ';
    return st;
}

// strerror is not thread-safe; this is POSIX's strerror_r (this file does not define _GNU_SOURCE).
static const char *errno_text(int e, char *buf, size_t n) {
    if (strerror_r(e, buf, n) != 0) snprintf(buf, n, "errno %d", e);
    return buf;
}

// A shard member's name for a message about the data at off: the ustar header just before it holds it (a long
// name cut to what that header has room for). Falls back to "at data offset N".
static void shard_member_shown(int fd, uint64_t off, uint64_t file_size, char *out, size_t n) {
    uint8_t h[TAR_BLOCK];
    char name[PATH_BUF];
    uint64_t stored, computed;
    if (off >= TAR_BLOCK && off <= file_size && pread(fd, h, TAR_BLOCK, (off_t)(off - TAR_BLOCK)) == TAR_BLOCK &&
        tar_checksum_ok(h, &stored, &computed)) {
        tar_header_name(h, name);
        snprintf(out, n, "member '%.256s'", name);
    } else {
        snprintf(out, n, "the member");
    }
}

int image_set_read(const image_set *s, int i, uint64_t max_bytes, uint8_t **buf, size_t *cap, size_t *n, char *err,
                   size_t err_len) {
    char et[128];
    *n = 0;
    if (i < 0 || i >= s->n)
        return read_fail(err, err_len, ST_RUNTIME, "%s: sample %d out of range [0, %d)", s->origin, i, s->n);
    const char *path = image_set_path(s, i);
    // O_NONBLOCK: a FIFO put where an image was must not block the open; fstat says what it is first.
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        int st = (e == EMFILE || e == ENFILE || e == ENOMEM) ? ST_RUNTIME : ST_INPUT;
        return read_fail(err, err_len, st, "%s: cannot open: %s", path, errno_text(e, et, sizeof et));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return read_fail(err, err_len, ST_RUNTIME, "%s: cannot stat: %s", path, errno_text(e, et, sizeof et));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return read_fail(err, err_len, ST_INPUT, "%s: is %s, not a regular file (refused before reading)", path,
                         file_kind(sb.st_mode));
    }
    // A whole file, or a shard member: sizes[i] bytes at offsets[i].
    const uint64_t file_size = (uint64_t)sb.st_size;
    const uint64_t base = s->offsets ? s->offsets[i] : 0;
    const uint64_t size = s->offsets ? s->sizes[i] : file_size;
    char member[300];  // named only in messages: the header is read again only for one
    if (size > max_bytes || size > SIZE_MAX - 1) {
        if (s->offsets) shard_member_shown(fd, base, file_size, member, sizeof member);
        close(fd);
        if (s->offsets)
            return read_fail(err, err_len, ST_INPUT, "%s: %s at byte %llu: %llu bytes, more than the limit of %llu "
                             "bytes per image", path, member, (unsigned long long)base, (unsigned long long)size,
                             (unsigned long long)max_bytes);
        return read_fail(err, err_len, ST_INPUT, "%s: %llu bytes, more than the limit of %llu bytes per image", path,
                         (unsigned long long)size, (unsigned long long)max_bytes);
    }
    if (s->offsets && (base > file_size || size > file_size - base)) {
        shard_member_shown(fd, base, file_size, member, sizeof member);
        close(fd);
        return read_fail(err, err_len, ST_INPUT, "%s: %s (%llu bytes at byte %llu) ends past the end of the shard "
                         "(%llu bytes): truncated since it was scanned", path, member, (unsigned long long)size,
                         (unsigned long long)base, (unsigned long long)file_size);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl != -1) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    if (size > *cap || *buf == NULL) {
        uint8_t *nb = realloc(*buf, size ? (size_t)size : 1);
        if (!nb) {
            close(fd);
            return read_fail(err, err_len, ST_RUNTIME, "%s: out of host memory for %llu bytes", path,
                             (unsigned long long)size);
        }
        *buf = nb;
        *cap = size ? (size_t)size : 1;
    }
    size_t got = 0;
    while (got < size) {
        size_t want = size - got < (1u << 30) ? (size_t)size - got : (1u << 30);
        ssize_t r = pread(fd, *buf + got, want, (off_t)(base + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            return read_fail(err, err_len, ST_RUNTIME, "%s: read error: %s", path, errno_text(e, et, sizeof et));
        }
        if (r == 0) {
            if (s->offsets) shard_member_shown(fd, base, file_size, member, sizeof member);
            close(fd);
            if (s->offsets)
                return read_fail(err, err_len, ST_INPUT, "%s: %s at byte %llu: the shard ended at byte %zu of the "
                                 "member's %llu (it shrank while being read)", path, member,
                                 (unsigned long long)base, got, (unsigned long long)size);
            return read_fail(err, err_len, ST_INPUT, "%s: file ended at byte %zu of %llu (it shrank while being read)",
                             path, got, (unsigned long long)size);
        }
        got += (size_t)r;
    }
    close(fd);
    *n = (size_t)size;
    return ST_OK;
}
