// bench_allreduce.c — all-reduce (average) bandwidth and correctness through the comm API, nccl-tests style.
//
//   mpirun -np N build/bench_allreduce [-b 4] [-e 64M] [-f 2] [-n iters] [-w warmup] [-c mpi|nccl] [--csv F]
//
// For each size: check that every element is the exact mean of rank-dependent values (wrong values are summed
// over ranks), then time `iters` async+wait pairs after a barrier; the time reported is the slowest rank's
// average. algbw = size / time, busbw = algbw * 2(n-1)/n. A least-squares fit of time = alpha + size/beta is
// printed as `# fit: alpha_us=<v> beta_GBps=<v>` for the scaling model.
// Exit status: 0 all correct, 1 wrong values or a failure, 2 bad arguments.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "common.h"

#ifdef DDP_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

typedef struct bench_opts {
    size_t min_bytes, max_bytes;
    long factor, iters, warmup;  // iters 0: automatic
    const char *comm_name;
    const char *csv_path;
    int device;                  // buffers in device memory (nccl always; mpi with -d)
} bench_opts;

typedef struct bench_row {
    size_t bytes, count;
    double time_us, algbw, busbw;
    long wrong;
} bench_row;

#define AUTO_TARGET_S 0.1  // automatic iteration count: about this long per size
#define AUTO_MIN_ITERS 20
#define AUTO_MAX_ITERS 100000

// ---------------------------------------------------------------------------------------------------------
// Arguments

static void usage(FILE *f) {
    fprintf(f,
            "usage: mpirun -np N bench_allreduce [options]\n"
            "  -b, --minbytes SIZE   smallest message (default 4; suffixes K, M, G)\n"
            "  -e, --maxbytes SIZE   largest message (default 64M)\n"
            "  -f, --stepfactor F    multiply the size by F each step (integer >= 2, default 2)\n"
            "  -n, --iters N         timed iterations per size (default: auto, at least %d, ~%.1f s per size)\n"
            "  -w, --warmup N        untimed iterations per size (default 5)\n"
            "  -c, --comm NAME       mpi or nccl (nccl needs a CUDA build; default mpi)\n"
            "  -d, --device          mpi: all-reduce device buffers (staged through host; CUDA builds)\n"
            "      --csv FILE        also write the table as CSV (rank 0)\n"
            "  -h, --help            this text\n",
            AUTO_MIN_ITERS, AUTO_TARGET_S);
}

static int parse_size(const char *s, size_t *out) {
    if (s == NULL || *s == '\0') return -1;
    char num[64];
    size_t len = strlen(s);
    if (len >= sizeof num) return -1;
    memcpy(num, s, len + 1);
    size_t mult = 1;
    char last = num[len - 1];
    if (last == 'K' || last == 'k') mult = (size_t)1 << 10;
    if (last == 'M' || last == 'm') mult = (size_t)1 << 20;
    if (last == 'G' || last == 'g') mult = (size_t)1 << 30;
    if (mult > 1) num[len - 1] = '\0';
    long v;
    if (parse_int(num, 0, (1L << 40) / (long)mult, &v) != 0) return -1;
    *out = (size_t)v * mult;
    return 0;
}

// Returns 0, or 2 with a one-line message in msg; -1 for --help.
static int bench_parse(int argc, char **argv, bench_opts *o, char *msg, size_t msg_size) {
    *o = (bench_opts){4, (size_t)64 << 20, 2, 0, 5, "mpi", NULL, 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) return -1;
        if (strcmp(a, "-d") == 0 || strcmp(a, "--device") == 0) {
            o->device = 1;
            continue;
        }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (strcmp(a, "-b") == 0 || strcmp(a, "--minbytes") == 0) bad = parse_size(v, &o->min_bytes);
        else if (strcmp(a, "-e") == 0 || strcmp(a, "--maxbytes") == 0) bad = parse_size(v, &o->max_bytes);
        else if (strcmp(a, "-f") == 0 || strcmp(a, "--stepfactor") == 0) bad = parse_int(v, 2, 1024, &o->factor);
        else if (strcmp(a, "-n") == 0 || strcmp(a, "--iters") == 0) bad = parse_int(v, 1, 100000000, &o->iters);
        else if (strcmp(a, "-w") == 0 || strcmp(a, "--warmup") == 0) bad = parse_int(v, 0, 100000000, &o->warmup);
        else if (strcmp(a, "-c") == 0 || strcmp(a, "--comm") == 0) o->comm_name = v;
        else if (strcmp(a, "--csv") == 0) o->csv_path = v;
        else {
            snprintf(msg, msg_size, "bench_allreduce: unknown option '%s' (see --help)", a);
            return 2;
        }
        if (v == NULL || bad) {
            snprintf(msg, msg_size, "bench_allreduce: option %s needs a valid value (got '%s'; see --help)", a,
                     v ? v : "");
            return 2;
        }
        i++;
    }
    if (o->min_bytes < sizeof(float) || o->max_bytes < o->min_bytes) {
        snprintf(msg, msg_size, "bench_allreduce: sizes must satisfy 4 <= minbytes (%zu) <= maxbytes (%zu)",
                 o->min_bytes, o->max_bytes);
        return 2;
    }
    if (strcmp(o->comm_name, "mpi") != 0 && strcmp(o->comm_name, "nccl") != 0) {
        snprintf(msg, msg_size, "bench_allreduce: -c '%s': want mpi or nccl", o->comm_name);
        return 2;
    }
    if (strcmp(o->comm_name, "nccl") == 0) o->device = 1;
#ifndef DDP_HAVE_CUDA
    if (o->device) {
        snprintf(msg, msg_size, "bench_allreduce: %s needs a CUDA build",
                 strcmp(o->comm_name, "nccl") == 0 ? "-c nccl" : "-d");
        return 2;
    }
#endif
    return 0;
}

// ---------------------------------------------------------------------------------------------------------
// Buffers: host memory, or device memory filled and checked through a host copy

typedef struct bench_buf {
    float *host;  // the values (always host)
    float *data;  // what is all-reduced: host, or a device copy
    size_t cap;
    int device;
} bench_buf;

static int buf_alloc(bench_buf *b, size_t n, int device) {
    memset(b, 0, sizeof *b);
    b->cap = n;
    b->device = device;
    b->host = malloc(n * sizeof(float));
    TRY_ALLOC(b->host);
    b->data = b->host;
#ifdef DDP_HAVE_CUDA
    if (device) {
        void *d = NULL;
        cudaError_t e = cudaMalloc(&d, n * sizeof(float));
        if (e != cudaSuccess) {
            free(b->host);
            return ERR(ST_RUNTIME, "rank %d (%s): cudaMalloc of %zu bytes failed: %s", g_rank, g_host,
                       n * sizeof(float), cudaGetErrorString(e));
        }
        b->data = d;
    }
#endif
    return ST_OK;
}

static void buf_free(bench_buf *b) {
#ifdef DDP_HAVE_CUDA
    if (b->device && b->data) cudaFree(b->data);
#endif
    free(b->host);
}

// Wait for all device work: the nccl backend's "done" means enqueued, not finished.
static int buf_settle(const bench_buf *b) {
#ifdef DDP_HAVE_CUDA
    cudaError_t e = b->device ? cudaDeviceSynchronize() : cudaSuccess;
    if (e != cudaSuccess)
        return ERR(ST_RUNTIME, "rank %d (%s): %s:%d: cudaDeviceSynchronize failed: %s", g_rank, g_host, __FILE__,
                   __LINE__, cudaGetErrorString(e));
#else
    (void)b;
#endif
    return ST_OK;
}

// Move n values between host and data (a no-op for host buffers).
static int buf_copy(bench_buf *b, size_t n, int to_data) {
    TRY(buf_settle(b));
#ifdef DDP_HAVE_CUDA
    if (b->device) {
        cudaError_t e = to_data ? cudaMemcpy(b->data, b->host, n * sizeof(float), cudaMemcpyHostToDevice)
                                : cudaMemcpy(b->host, b->data, n * sizeof(float), cudaMemcpyDeviceToHost);
        if (e != cudaSuccess)
            return ERR(ST_RUNTIME, "rank %d (%s): %s:%d: cudaMemcpy failed: %s", g_rank, g_host, __FILE__,
                       __LINE__, cudaGetErrorString(e));
    }
#else
    (void)n, (void)to_data;
#endif
    return buf_settle(b);
}

// ---------------------------------------------------------------------------------------------------------
// One size

// Small integers: the sum is exact in float, and so is the mean whenever the world size is a power of two;
// otherwise allow the roundings of scaling by 1/world (a backend may scale each term before summing).
static long check_mean(const float *x, size_t n, int world) {
    long wrong = 0;
    double tol = (world & (world - 1)) == 0 ? 0.0 : (world + 2) * 6e-8;
    for (size_t i = 0; i < n; i++) {
        double want = (world + 1) / 2.0 + (double)(i % 7);
        if (fabs((double)x[i] - want) > tol * want) wrong++;
    }
    return wrong;
}

static int allreduce_once(comm *c, float *data, size_t n) {
    int req;
    TRY(comm_allreduce_avg_async(c, data, n, "bench", &req));
    return comm_wait(c, req);
}

static int run_iters(comm *c, const bench_buf *b, size_t n, long iters, double *avg_s) {
    TRY(buf_settle(b));
    TRY(comm_barrier(c));
    double t0 = now_s();
    for (long i = 0; i < iters; i++) TRY(allreduce_once(c, b->data, n));
    TRY(buf_settle(b));
    *avg_s = (now_s() - t0) / (double)iters;
    return ST_OK;
}

static int bench_size(comm *c, const bench_opts *o, bench_buf *b, size_t n, bench_row *row) {
    int world = comm_get_info(c)->world;
    for (size_t i = 0; i < n; i++) b->host[i] = (float)(g_rank + 1 + (int)(i % 7));
    TRY(buf_copy(b, n, 1));
    TRY(allreduce_once(c, b->data, n));
    TRY(buf_copy(b, n, 0));
    double wrong = (double)check_mean(b->host, n, world);
    TRY(comm_allreduce_sum_f64(c, &wrong, 1));

    for (long i = 0; i < o->warmup; i++) TRY(allreduce_once(c, b->data, n));
    long iters = o->iters;
    if (iters == 0) {
        // Every rank must run the same count: size it from the slowest rank's estimate.
        double est;
        TRY(run_iters(c, b, n, 3, &est));
        TRY(comm_allreduce_max_f64(c, &est, 1));
        double k = AUTO_TARGET_S / (est > 1e-9 ? est : 1e-9);
        iters = k < AUTO_MIN_ITERS ? AUTO_MIN_ITERS : k > AUTO_MAX_ITERS ? AUTO_MAX_ITERS : (long)k;
    }
    double t;
    TRY(run_iters(c, b, n, iters, &t));
    TRY(comm_allreduce_max_f64(c, &t, 1));

    row->bytes = n * sizeof(float);
    row->count = n;
    row->time_us = t * 1e6;
    row->algbw = (double)row->bytes / t / 1e9;
    row->busbw = row->algbw * 2.0 * (world - 1) / world;
    row->wrong = (long)wrong;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Report

// Weighted least squares of time_us = alpha + bytes/(beta*1e3), weights 1/t^2: the sizes span seven decades,
// so fit relative error, or the largest sizes alone would set alpha.
static void fit_alpha_beta(const bench_row *rows, int n, double *alpha_us, double *beta_gbps) {
    double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (int i = 0; i < n; i++) {
        double w = 1.0 / (rows[i].time_us * rows[i].time_us), x = (double)rows[i].bytes, y = rows[i].time_us;
        sw += w, sx += w * x, sy += w * y, sxx += w * x * x, sxy += w * x * y;
    }
    double det = sw * sxx - sx * sx;
    double slope = det > 0 ? (sw * sxy - sx * sy) / det : 0;  // us per byte
    *alpha_us = det > 0 ? (sy - slope * sx) / sw : (n > 0 ? sy / sw : 0);
    *beta_gbps = slope > 0 ? 1.0 / (slope * 1e3) : INFINITY;
}

static void print_header(const bench_opts *o, int world) {
    printf("# bench_allreduce: comm %s, %d rank(s), %s buffers, average (float32, in place)\n", o->comm_name,
           world, o->device ? "device" : "host");
    printf("# %12s %14s %12s %12s %12s %8s\n", "size(B)", "count(elems)", "time(us)", "algbw(GB/s)", "busbw(GB/s)",
           "#wrong");
    fflush(stdout);
}

static void print_row(const bench_row *r) {
    printf("  %12zu %14zu %12.2f %12.4f %12.4f %8ld\n", r->bytes, r->count, r->time_us, r->algbw, r->busbw,
           r->wrong);
    fflush(stdout);
}

// f was opened before the run, so a bad path fails before minutes of measuring; closes f.
static int write_csv(FILE *f, const char *path, const bench_row *rows, int n) {
    fprintf(f, "size_bytes,count,time_us,algbw_GBps,busbw_GBps,wrong\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "%zu,%zu,%.4f,%.6f,%.6f,%ld\n", rows[i].bytes, rows[i].count, rows[i].time_us, rows[i].algbw,
                rows[i].busbw, rows[i].wrong);
    if (fclose(f) != 0) return ERR(ST_RUNTIME, "%s: write failed", path);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Main

static int bench_run(comm *c, const bench_opts *o, FILE *csv, long *total_wrong) {
    enum { MAX_ROWS = 64 };
    bench_row rows[MAX_ROWS];
    int n_rows = 0;
    bench_buf b;
    TRY(buf_alloc(&b, o->max_bytes / sizeof(float), o->device));
    int st = ST_OK;
    if (o->device) st = comm_bind_stream(c, NULL, 1);
    if (g_rank == 0) print_header(o, comm_get_info(c)->world);
    *total_wrong = 0;
    for (size_t bytes = o->min_bytes; st == ST_OK && bytes <= o->max_bytes && n_rows < MAX_ROWS;
         bytes *= (size_t)o->factor) {
        bench_row *r = &rows[n_rows++];
        st = bench_size(c, o, &b, bytes / sizeof(float), r);
        if (st == ST_OK && g_rank == 0) print_row(r);
        if (st == ST_OK) *total_wrong += r->wrong;
    }
    buf_free(&b);
    TRY(st);
    if (g_rank != 0) return ST_OK;
    double alpha, beta;
    fit_alpha_beta(rows, n_rows, &alpha, &beta);
    printf("# out of bounds values: %ld %s\n", *total_wrong, *total_wrong ? "FAILED" : "OK");
    printf("# fit: alpha_us=%.3f beta_GBps=%.4f\n", alpha, beta);
    fflush(stdout);
    if (csv) TRY(write_csv(csv, o->csv_path, rows, n_rows));
    return ST_OK;
}

#ifdef DDP_HAVE_CUDA
// One GPU per local rank (the nccl backend selects the same one itself).
static void select_device(const comm *c) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) == cudaSuccess && n_dev > 0) cudaSetDevice(comm_get_info(c)->local_rank % n_dev);
    (void)cudaGetLastError();
}
#endif

int main(int argc, char **argv) {
    g_prog = "bench_allreduce";
    if (comm_world_init(&argc, &argv) != ST_OK) {
        fprintf(stderr, "bench_allreduce: error: %s\n", err_msg());
        return 1;
    }
    bench_opts o;
    char msg[512] = "";
    int pr = bench_parse(argc, argv, &o, msg, sizeof msg);
    if (pr != 0) {
        if (g_rank == 0) {
            if (pr < 0) usage(stdout);
            else fprintf(stderr, "%s\n", msg);
        }
        comm_world_finalize();
        return pr < 0 ? 0 : 2;
    }
    comm *c = NULL;
    int st = comm_create(&c, o.comm_name, 300.0);
    if (st != ST_OK) {
        if (g_rank == 0) fprintf(stderr, "bench_allreduce: error: %s\n", err_msg());
        comm_world_finalize();
        return st == ST_INPUT ? 2 : 1;
    }
#ifdef DDP_HAVE_CUDA
    if (o.device) select_device(c);
#endif
    FILE *csv = NULL;
    if (g_rank == 0 && o.csv_path && (csv = fopen(o.csv_path, "w")) == NULL)
        st = ERR(ST_INPUT, "%s: cannot open CSV file for writing", o.csv_path);
    int first_bad;
    if (comm_agree_status(c, st, &first_bad) != ST_OK) {
        if (g_rank == first_bad) fprintf(stderr, "bench_allreduce: error: %s\n", err_msg());
        comm_finalize(c);
        return 2;
    }
    long wrong = 0;
    st = bench_run(c, &o, csv, &wrong);
    if (st != ST_OK) {
        fprintf(stderr, "bench_allreduce: error: %s (at %s)\n", err_msg(), err_where());
        comm_abort(c, 1);
    }
    comm_finalize(c);
    return wrong ? 1 : 0;
}
