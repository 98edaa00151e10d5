// fileio.h — the one way the trainer opens an input file, and the checks every output path passes.
//
// Inputs (config, data files, checkpoint, baseline) must be regular files: a FIFO, a device, a directory or a
// socket is refused (ST_INPUT) before a single byte is read, and the open itself never blocks (O_NONBLOCK until
// fstat has said what the path is). Loaders then size-check the file against what its header promises before
// they read the body. A memfd (/proc/self/fd/N, the fuzz harnesses' in-memory files) is a regular file.
//
// Outputs (--save, --metrics, --trace) never replace one of the run's inputs (same device and inode) and never
// replace an existing file of another kind (checked from its first bytes).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

// Opens `path` for reading; `what` names it in messages ("config", "checkpoint", "data file", "baseline").
// *size: its length. ST_INPUT when missing, unreadable or not a regular file.
// What a file that is not regular is, for messages: "a directory", "a FIFO", "a character device", ...
const char *file_kind(mode_t m);
int input_open(const char *path, const char *what, int *fd, uint64_t *size);
// Exactly n bytes at offset off; ST_INPUT when the file ends first (it shrank), ST_RUNTIME on a read error.
int input_pread(int fd, const char *path, void *buf, size_t n, uint64_t off);

// The run's input files, by identity. Paths that do not exist are skipped (their loader reports them).
#define FILE_SET_MAX 16
typedef struct file_set {
    int n;
    struct {
        dev_t dev;
        ino_t ino;
        const char *path;
        const char *what;
    } f[FILE_SET_MAX];
} file_set;
void file_set_add(file_set *s, const char *path, const char *what);

// ST_INPUT (one line naming both) when the output `path` of option `opt` is one of the inputs in s; the input
// whose path is `allowed` (--resume for --save: resuming and saving to one file is the normal pattern) is not
// counted. A path that does not exist yet is fine.
int output_not_input(const char *path, const char *opt, const file_set *s, const char *allowed);

// Before replacing an existing regular file: ST_INPUT unless it is empty or `is_kind` accepts its first bytes
// (n of them, at most 64). `kind` names what the option writes ("a safetensors checkpoint"). Directories are
// refused; other non-regular files (devices, FIFOs) are refused unless allow_special (e.g. --metrics /dev/null).
int output_check_kind(const char *path, const char *opt, int (*is_kind)(const unsigned char *head, size_t n),
                      const char *kind, int allow_special);

// Writes all n bytes (one write(2) where the kernel takes them): 0 or an errno.
int write_all(int fd, const void *buf, size_t n);
