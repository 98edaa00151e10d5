// common.c — error trace, timing, RNG, number parsing and the CPUs this process may use.
#define _GNU_SOURCE  // sched_getaffinity
#include "common.h"

#include <sched.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int g_rank = 0;
int g_world = 1;
char g_host[64] = "localhost";
const char *g_prog = "ddp-cnn";
int g_quiet = 0;

// ---------------------------------------------------------------------------------------------------------
// Errors
static int err_st = ST_OK;
static char err_text[8192];  // two PATH_MAX paths and the reason fit
static char err_loc[256];
static int err_coll, err_orig;

int err_set(int st, const char *file, int line, const char *fmt, ...) {
    if (err_st != ST_OK) return st;  // keep the first (root-cause) message
    err_st = st;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err_text, sizeof err_text, fmt, ap);
    va_end(ap);
    // Cut short: say so, rather than end mid-word as if that were the whole message.
    if (n >= (int)sizeof err_text) memcpy(err_text + sizeof err_text - 16, " [... cut off]", 15);
    // A message must stay one line.
    for (char *p = err_text; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    snprintf(err_loc, sizeof err_loc, "%s:%d", file, line);
    return st;
}

const char *err_msg(void) { return err_text; }
const char *err_where(void) { return err_loc; }
int err_status(void) { return err_st; }
void err_mark_collective(int origin) {
    err_coll = 1;
    err_orig = origin;
}
int err_collective(void) { return err_coll; }
int err_origin(void) { return err_orig; }

void err_clear(void) {
    err_st = ST_OK;
    err_coll = err_orig = 0;
    err_text[0] = '\0';
    err_loc[0] = '\0';
}

// ---------------------------------------------------------------------------------------------------------
// Log output

static int stdout_errno;

void log_stdout(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    errno = 0;
    int r = vprintf(fmt, ap);
    va_end(ap);
    if (fflush(stdout) != 0 || r < 0 || ferror(stdout)) {
        log_stdout_failed(errno);
        clearerr(stdout);  // try the next line again (a disk may have room again), keep the first cause
    }
}

int log_stdout_errno(void) { return stdout_errno; }

void log_stdout_failed(int e) {
    if (stdout_errno == 0) stdout_errno = e ? e : EIO;
}

// ---------------------------------------------------------------------------------------------------------
// Time
double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double wall_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ---------------------------------------------------------------------------------------------------------
// RNG
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void rng_seed(rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t rng_u64(rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint32_t rng_below(rng *r, uint32_t n) {
    // Lemire's nearly-divisionless method, made exact by rejection.
    uint64_t m = (uint64_t)(uint32_t)(rng_u64(r) >> 32) * n;
    uint32_t lo = (uint32_t)m;
    if (lo < n) {
        uint32_t thresh = (uint32_t)(-n) % n;
        while (lo < thresh) {
            m = (uint64_t)(uint32_t)(rng_u64(r) >> 32) * n;
            lo = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

float rng_uniform(rng *r) { return (float)(rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

uint64_t rng_mix(uint64_t a, uint64_t b) {
    uint64_t x = a ^ (b * 0x9e3779b97f4a7c15ULL);
    return splitmix64(&x);
}

// ---------------------------------------------------------------------------------------------------------
// Parsing
int parse_int(const char *s, long lo, long hi, long *out) {
    if (s == NULL || *s == '\0') return -1;
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int parse_float(const char *s, double lo, double hi, double *out) {
    if (s == NULL || *s == '\0') return -1;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------
// CPUs

int cpus_allowed(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
