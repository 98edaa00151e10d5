// common.h — status codes, error trace, logging, timing and the seedable RNG shared by every module.
//
// Library code never exits: it returns a status and leaves a one-line message (err_msg) that names the
// file/field at fault. Only main.c decides to exit (or to abort all ranks).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

// ---------------------------------------------------------------------------------------------------------
// Status codes. They double as the trainer's process exit codes (see docs/cli.md, "Exit codes").
enum {
    ST_OK = 0,
    ST_RUNTIME = 1,      // I/O write failure, out of memory, MPI/CUDA/cuDNN/cuBLAS/NCCL failure
    ST_INPUT = 2,        // bad input: CLI value, config, data file, checkpoint file
    ST_DIVERGED = 3,     // NaN/Inf in loss or gradients
    ST_COMM = 4,         // peer failure, collective timeout, replica mismatch
    ST_INTERRUPTED = 5,  // SIGINT/SIGTERM: stopped cleanly
};

// Records the first error (later ones are ignored until err_clear) and returns st, so library code can write
//   return ERR(ST_INPUT, "%s: bad magic 0x%08x (want 0x00000803)", path, magic);
int err_set(int st, const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
const char *err_msg(void);    // the message, "" when none
const char *err_where(void);  // "src/data.c:123" of the first ERR
int err_status(void);         // the status of the first ERR, ST_OK when none
void err_clear(void);
// Mark the current error as collective: every rank returns it at the same point (agreed set-up failure,
// divergence seen in averaged gradients, agreed stop), so main exits cleanly instead of aborting the job.
// origin: this rank's message is its own root cause (print it even when not rank 0).
void err_mark_collective(int origin);
int err_collective(void);
int err_origin(void);

#define ERR(st, ...) err_set((st), __FILE__, __LINE__, __VA_ARGS__)
// Relay: pass a non-OK status up unchanged (the message of the first ERR is kept).
#define TRY(expr)                                                                                          \
    do {                                                                                                   \
        int st__ = (expr);                                                                                 \
        if (st__ != ST_OK) return st__;                                                                    \
    } while (0)
// Allocation check for host memory.
#define TRY_ALLOC(ptr)                                                                                     \
    do {                                                                                                   \
        if ((ptr) == NULL) return ERR(ST_RUNTIME, "out of host memory allocating %s", #ptr);              \
    } while (0)

// ---------------------------------------------------------------------------------------------------------
// Process identity, set once by comm_init (defaults: rank 0 of 1, host from gethostname).
extern int g_rank;
extern int g_world;
extern char g_host[64];
extern const char *g_prog;  // program name for messages printed outside main ("trainer", "bench_allreduce")
extern int g_quiet;  // --quiet: rank 0 prints only errors and the final summary

// Print on rank 0 only (to stdout). LOG0 respects --quiet; ALWAYS0 does not.
#define LOG0(...)                                                                                          \
    do {                                                                                                   \
        if (g_rank == 0 && !g_quiet) log_stdout(__VA_ARGS__);                                              \
    } while (0)
#define ALWAYS0(...)                                                                                       \
    do {                                                                                                   \
        if (g_rank == 0) log_stdout(__VA_ARGS__);                                                          \
    } while (0)
// printf + fflush to stdout. A failed write (a closed pipe: SIGPIPE is ignored by main; a full disk) does not
// stop the run: the first failure's errno is kept for main to report when the run ends (log_stdout_errno).
void log_stdout(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int log_stdout_errno(void);  // 0 while every write to stdout has succeeded
void log_stdout_failed(int e);  // a write to stdout outside log_stdout failed with errno e

// ---------------------------------------------------------------------------------------------------------
// Time
double now_s(void);   // monotonic seconds
double wall_s(void);  // wall clock: seconds since 1970 (UTC)

// ---------------------------------------------------------------------------------------------------------
// RNG: xoshiro256** seeded through splitmix64. Same sequence on every platform and rank.
typedef struct rng {
    uint64_t s[4];
} rng;
void rng_seed(rng *r, uint64_t seed);
uint64_t rng_u64(rng *r);
uint32_t rng_below(rng *r, uint32_t n);  // uniform in [0, n), unbiased
float rng_uniform(rng *r);               // uniform in [0, 1)
// Mix several integers into one seed (e.g. seed, epoch) so streams do not collide.
uint64_t rng_mix(uint64_t a, uint64_t b);

// ---------------------------------------------------------------------------------------------------------
// Small helpers
int parse_int(const char *s, long lo, long hi, long *out);     // whole string, in [lo, hi]; 0 on success
int parse_float(const char *s, double lo, double hi, double *out);

// CPUs this process may run on (its affinity mask: a launcher that binds a rank to one core leaves it one).
int cpus_allowed(void);
