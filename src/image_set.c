// image_set.c — image data sets as lists of files: ImageFolder trees, list files and --predict's inputs (see
// image_set.h).
//
// Building a set appends each sample to one growing path pool and three arrays (offset, label, size) and feeds
// its relative name, size and label into the digest as it goes; the class names follow at the end. The folder
// scan walks one class at a time breadth-first (each directory is read whole and closed before the next, so a
// deep tree holds no descriptors), then sorts that class's files into torchvision's order.
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

static const char *file_kind(mode_t m) {
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISREG(m)) return "a regular file";
    return "of an unknown kind";
}

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
} builder;

static void builder_init(builder *b, image_set *out, const char *origin) {
    memset(out, 0, sizeof *out);
    memset(b, 0, sizeof *b);
    b->s = out;
    b->h = DIGEST_SEED;
    snprintf(out->origin, sizeof out->origin, "%s", origin ? origin : "");
}

// Appends a sample: its full path (full_len bytes), the relative name that the digest sees (full + rel_at).
static int builder_add(builder *b, const char *full, size_t full_len, size_t rel_at, uint64_t size, int32_t label) {
    image_set *s = b->s;
    if (s->n == INT32_MAX) return ERR(ST_INPUT, "%s: more than %d samples", s->origin, INT32_MAX);
    size_t need = (size_t)s->n + 1;
    if (need > b->cap_n) {
        size_t c1 = b->cap_n, c2 = b->cap_n, c3 = b->cap_n;
        if (grow((void **)&s->labels, &c1, need, sizeof *s->labels) ||
            grow((void **)&s->sizes, &c2, need, sizeof *s->sizes) ||
            grow((void **)&s->path_off, &c3, need, sizeof *s->path_off))
            return ERR(ST_RUNTIME, "%s: out of host memory listing %d samples", s->origin, s->n);
        b->cap_n = c3;
    }
    if (grow((void **)&s->paths, &b->paths_cap, b->paths_len + full_len + 1, 1))
        return ERR(ST_RUNTIME, "%s: out of host memory listing %d samples", s->origin, s->n);
    memcpy(s->paths + b->paths_len, full, full_len);
    s->paths[b->paths_len + full_len] = '\0';
    s->path_off[s->n] = b->paths_len;
    s->labels[s->n] = label;
    s->sizes[s->n] = size;
    s->n++;
    b->paths_len += full_len + 1;
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

static int list_scan(const char *list_path, const char *names_path, int classes, builder *b, char **text,
                     char **names_text, const char ***names) {
    if (!list_path || !list_path[0]) return ERR(ST_INPUT, "list file: the path is empty");
    if (names_path) {
        int nc = 0;
        TRY(read_names(names_path, names_text, names, &nc));
        if (classes > 0 && classes != nc)
            return ERR(ST_INPUT, "%s: %d class names, but %d classes were asked for", names_path, nc, classes);
        classes = nc;
    } else if (classes < 1 || classes > IMAGE_SET_MAX_CLASSES) {
        return ERR(ST_INPUT, "%s: classes must be 1 to %d without a class names file (got %d)", list_path,
                   IMAGE_SET_MAX_CLASSES, classes);
    }
    size_t len = 0;
    TRY(read_text(list_path, "list file", text, &len));
    const char *slash = strrchr(list_path, '/');
    size_t dir_len = slash ? (size_t)(slash - list_path) + 1 : 0;  // with its '/'
    char *p = *text, *end = *text + len;
    size_t line = 0;
    text_line ln;
    while (next_line(&p, end, &ln)) {
        line++;
        if (ln.len == 0 || ln.start[0] == '#') continue;
        TRY(list_line(b, list_path, line, &ln, list_path, dir_len, classes));
    }
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
static int inputs_list(builder *b, const char *list, char **text) {
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
        if (ln.has_nul) return ERR(ST_INPUT, "%s:%zu: a NUL byte in the line (not a text file?)", list, line);
        char *s = ln.start, *e = s + ln.len, *pe;
        char *lab = line_last_field(s, e, &pe);
        *e = '\0';  // a blank, the LF or the final NUL
        long v;
        if (lab == s || !parse_long(lab, &v)) pe = e;
        TRY(list_add_path(b, list, line, s, (size_t)(pe - s), list, dir_len, 0, 1));
    }
    return ST_OK;
}

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
    uint64_t size = (uint64_t)sb.st_size;
    if (size > max_bytes || size > SIZE_MAX - 1) {
        close(fd);
        return read_fail(err, err_len, ST_INPUT, "%s: %llu bytes, more than the limit of %llu bytes per image", path,
                         (unsigned long long)size, (unsigned long long)max_bytes);
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
        ssize_t r = pread(fd, *buf + got, want, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            return read_fail(err, err_len, ST_RUNTIME, "%s: read error: %s", path, errno_text(e, et, sizeof et));
        }
        if (r == 0) {
            close(fd);
            return read_fail(err, err_len, ST_INPUT, "%s: file ended at byte %zu of %llu (it shrank while being read)",
                             path, got, (unsigned long long)size);
        }
        got += (size_t)r;
    }
    close(fd);
    *n = (size_t)size;
    return ST_OK;
}
