// image_set.h — the samples of an image data set: file paths, labels and class names, from a torchvision
// ImageFolder tree, a Darknet/Caffe-style list file or WebDataset-style tar shards, fully validated at load;
// --predict's unlabelled inputs; and a thread-safe sample reader for the loader's worker threads.
//
// The set holds no image data: one pool of NUL-terminated paths with an offset per sample, a label and the size
// seen at scan time (no per-sample allocation; 200,000 samples of 100-byte paths take about 24 MB). Decoding
// is not done here: a sample's bytes are whatever its file holds (a shard set: the bytes of its image member).
//
// Errors while building a set are ST_INPUT (ST_RUNTIME when out of memory) with a one-line message that names
// the directory, file or list line at fault. On any error *out is left empty (all zero/NULL).
#pragma once
#include <stddef.h>
#include <stdint.h>

#define IMAGE_SET_MAX_CLASSES 100000
#define IMAGE_SET_MAX_PATH 4095  // bytes of a full path, without its NUL (Linux PATH_MAX - 1)
#define IMAGE_SET_MAX_SHARDS 1000000  // shards one pattern may name

typedef struct image_set {
    int n;               // samples
    int classes;         // number of classes (0 for image_set_inputs)
    char **class_names;  // classes strings (folder: directory names, or class_filter's; list: from the names file,
                         // else "0".."classes-1"; inputs: NULL). One allocation holds the pointers and the strings.
    int32_t *labels;     // n, each in [0, classes) (inputs: all 0)
    uint64_t *sizes;     // n: bytes at scan time
    size_t *path_off;    // n: offsets into paths
    char *paths;         // NUL-terminated full paths (root or list directory joined with the relative path; shards:
                         // each shard's path once, and path_off of each of its samples points at it)
    // Shard sets only (image_set_shards); NULL / 0 for the others, whose samples are whole files.
    uint64_t *offsets;      // n: byte offset of the sample's image member data in its shard
    int32_t *shard;         // n: the shard the sample is in (0 .. n_shards-1)
    int n_shards;           // shards, in the pattern's order; every one holds at least one sample
    uint32_t *shard_first;  // n_shards + 1: shard k's samples are [shard_first[k], shard_first[k + 1])
    uint64_t digest;     // a 64-bit hash of (relative name, size, label) of every sample in order and of the class
                         // names: ranks compare it before training to agree on the file list. The relative name
                         // is "class/sub/file.jpg" (folder) or the path as written in the list, so the same
                         // tree under different roots on different hosts gives the same digest (inputs: the
                         // whole path instead; shards: each shard's base name, then its samples' image member
                         // names, sizes and labels).
    char origin[4160];   // the directory or list file (for messages)
} image_set;

// torchvision ImageFolder: root/<class>/**/<file>.
// Classes: the sub-directories of root (symlinks to directories included, hidden ones too, as os.scandir's
// is_dir()), sorted in byte order (= Python's code point order for UTF-8 names). Files directly in root are
// ignored. Samples: for each class in order, torchvision's make_dataset order:
//   for dirpath, _, fnames in sorted(os.walk(class_dir, followlinks=True)): for f in sorted(fnames)
// i.e. directories sorted by their whole path (so "a b" comes before "a/x"), then file names within each.
// Only files whose name ends, ignoring ASCII case, in .jpg, .jpeg or .png are samples; every other file is
// ignored, as torchvision ignores non-image extensions (torchvision would also take .bmp, .ppm, .pgm, .tif,
// .tiff and .webp, which this trainer cannot decode: they are ignored here, not refused).
// Symlinks are followed (followlinks=True), but a directory that is its own ancestor (same st_dev and st_ino as
// root or a directory on the current path) is a symlink loop and refused, where os.walk would recurse until the
// path is too long. Stricter than torchvision: an image-named entry that is not a regular file (FIFO, socket,
// device, dangling symlink) and an unreadable sub-directory are errors (os.walk skips the latter silently);
// nothing is ever opened during the scan (stat only), so a FIFO cannot block it.
// Errors: root not a directory or unreadable; no class directories; a class directory with no image file
// ("empty class directory", torchvision's "Found no valid file for the classes"); no image at all; more than
// IMAGE_SET_MAX_CLASSES classes or INT32_MAX samples; a path longer than IMAGE_SET_MAX_PATH.
// class_filter: NULL, or the training set's n_filter class names (distinct): then a class directory not among
// them is an error ("class 'x' is in VAL but not in the training set") and labels are positions in class_filter;
// classes and class_names are the filter's (the training set's numbering holds even when a class is missing
// from this directory).
int image_set_folder(const char *root, char *const *class_filter, int n_filter, image_set *out);

// A list file: one sample per line, `relative/path label`. The label is the last whitespace-separated field, so
// paths may contain blanks; leading and trailing blanks of a line are not part of the path; a CR before the
// LF is dropped. Paths are relative to the list file's directory (an absolute path stays as is). Blank lines
// and lines whose first non-blank character is # are skipped.
// names_path: NULL, or a file with one class name per line (classes = its line count; a classes > 0 given
// too must agree). Without it, classes (1..IMAGE_SET_MAX_CLASSES) is the count and the names are
// "0".."classes-1".
// Errors name LIST:LINE: a line without a label, a label that is not an integer or is out of range
// ("LIST:LINE: label 12 is out of range [0, 10)"), a file that is missing or not a regular file (stat at load),
// a full path longer than IMAGE_SET_MAX_PATH, a NUL byte; and: a list without samples; a names file with an
// empty or duplicate name (NAMES:LINE) or no names.
int image_set_list(const char *list_path, const char *names_path, int classes, image_set *out);

// WebDataset-style tar shards: uncompressed tar files whose members are grouped into samples by KEY, the member
// name up to the first '.' after its last '/' (WebDataset's rule; a name with no such '.', or one whose base
// name starts with '.', has no key and is ignored). A sample is one group of consecutive members with the same
// key: KEY.jpg, KEY.jpeg or KEY.png (the extension, everything after the key's '.', in any ASCII case) holds the
// image, KEY.cls its label as a decimal integer (blanks and newlines around it allowed); other members of the
// group (KEY.json, KEY.seg.png, ...) are ignored, and so is a group with neither an image nor a .cls.
// pattern: one or more patterns separated by ',' (no blanks), each a path with zero or more ranges {A..B} of
// decimal numbers, expanded as WebDataset's braceexpand does: every number from A to B (downwards when A > B),
// zero-padded to the wider of A and B when either is written with a leading zero ("{000..127}", "{7..7}"); with
// several ranges the leftmost varies slowest. A pattern without braces is one file. Lists in braces ({a,b}) are
// not supported. Samples: shard by shard in that order, then in member order; a shard named twice is refused.
// Every shard is read once at load, headers only: POSIX ustar (prefix + name), GNU tar (long names in 'L'
// records) and pax ('path=' and 'size=' of 'x' records) headers, each checksum verified, every size bounded by
// the file's size; regular members ('0', '\0', '7') only, every other kind (directories, links, devices, GNU
// sparse files, 'K' and 'g' records) skipped. A .cls member's bytes are read; image bytes are not.
// names_path and classes: as image_set_list (a names file's line count, else classes in 1..IMAGE_SET_MAX_CLASSES
// with names "0".."classes-1").
// Errors (ST_INPUT, one line naming the shard and, where there is one, the member): a bad pattern (an unclosed
// or stray brace, a range that is not {DIGITS..DIGITS}, an empty pattern, more than IMAGE_SET_MAX_SHARDS
// shards); a shard that is missing or not a regular file; not a tar or corrupt (a bad header checksum or
// number field); a truncated tar (a header, a member's data or its padding past the end of the file, a long
// name or pax record with no member after it); a member name longer than IMAGE_SET_MAX_PATH; an image member
// without KEY.cls ("train-000003.tar: member 'x17.jpg' has no 'x17.cls'"), a .cls without an image, two images
// or two .cls for one key, a key that appears twice in a shard (a sample's members must be consecutive), a .cls
// that is not an integer or out of [0, classes); a shard without samples; more than INT32_MAX samples.
int image_set_shards(const char *pattern, const char *names_path, int classes, image_set *out);

// --predict's inputs, in the order given. Each path is
//   a directory: every image file under it, recursively, in the order and with the rules of one class directory
//     of image_set_folder (sorted(os.walk(dir, followlinks=True)), files sorted; .jpg .jpeg .png in any case;
//     other files ignored; symlink loops and image-named entries that are not regular files refused);
//   an image-named file (.jpg .jpeg .png, any case): that file, which must be a regular file;
//   any other regular file: a list file of `path` or `path label` lines, paths relative to the list's directory
//     (an absolute path stays as is), each a regular file of any name. A last blank-separated field that is an
//     integer is a label, read and ignored; otherwise the whole line is the path (so a file named "scan 2" must
//     be written "scan 2 0"). Blanks, CRs, blank lines and # comments as image_set_list.
// Anything else (FIFO, socket, device, a dangling symlink) is refused after a stat, never opened, so it cannot
// block. Labels are all 0, classes 0, class_names NULL; origin is the first path, with " and N more" when there
// are several. The digest covers each sample's whole path (as joined from the path given) and size, so ranks
// given the same arguments agree. A directory or list that yields nothing is fine as long as some input does;
// no image at all is an error naming the paths. Other errors name the path (LIST:LINE for a list's entry).
int image_set_inputs(const char *const *paths, int n_paths, image_set *out);

// Sample i's full path (0 <= i < s->n).
const char *image_set_path(const image_set *s, int i);
// Frees everything and zeroes *s (safe on a zeroed or already freed set).
void image_set_free(image_set *s);

// Reads sample i's whole file (a shard set: the sizes[i] bytes at offsets[i] of its shard) into *buf (grown
// with realloc as needed; *cap its capacity), *n its length.
// Thread-safe: it touches no global state (no ERR: the error state is global) and writes its message,
// "PATH: reason" on one line, into err (err_len bytes; err may be NULL). Symlinks to files are fine. The open
// never blocks (O_NONBLOCK until fstat has said what the path is); anything but a regular file (FIFO, device,
// directory, socket) is refused, as are samples over max_bytes and files that end before the size fstat gave
// (shrunk while reading). A shard that now ends before the member's data does is ST_INPUT naming the shard, the
// member (its name as the ustar header before the data holds it, at most 256 bytes) and the offset.
// Returns ST_OK; ST_INPUT for a bad or vanished file; ST_RUNTIME for a read error, an index out of range, or no
// memory (*buf is then unchanged and still owned by the caller).
int image_set_read(const image_set *s, int i, uint64_t max_bytes, uint8_t **buf, size_t *cap, size_t *n, char *err,
                   size_t err_len);
