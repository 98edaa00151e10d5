// thread_pool_cpu.c — the CPU backend's thread pool (one job at a time; the calling thread is part 0) and the
// progress hook that long ops call between chunks (set_progress). Why a pool of its own: backend_cpu_impl.h.
#define _DEFAULT_SOURCE  // clock_gettime
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend_cpu_impl.h"

// ---------------------------------------------------------------------------------------------------------
// Thread pool

#define POOL_SPIN_NS 30000  // a wait shorter than this is spun; longer ones block

typedef struct worker_arg {
    cpu_pool *p;
    int id;
} worker_arg;

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// Spin until *gen differs from seen, for at most POOL_SPIN_NS; returns whether it did.
static int spin_for_gen(const cpu_pool *p, uint64_t seen) {
    int64_t t0 = mono_ns();
    for (int i = 0;; i++) {
        if (atomic_load_explicit(&p->gen, memory_order_acquire) != seen) return 1;
        if ((i & 255) == 255 && mono_ns() - t0 > POOL_SPIN_NS) return 0;
        cpu_relax();
    }
}

static void *pool_worker(void *varg) {
    worker_arg *wa = varg;
    cpu_pool *p = wa->p;
    const int id = wa->id;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        if (!spin_for_gen(p, seen)) {
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->gen) == seen) pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        seen = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (atomic_load(&p->stop)) return NULL;
        // Every worker acknowledges every job, taking part or not, so that none can still be reading this
        // job's fn/arg/parts when the caller publishes the next one.
        if (id < p->parts) p->fn(p->arg, id, p->parts);
        if (atomic_fetch_sub_explicit(&p->remaining, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

void cpu_pool_run(cpu_pool *p, int parts, pool_fn fn, void *arg) {
    if (parts > p->n) parts = p->n;
    if (parts <= 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->parts = parts;
    atomic_store(&p->remaining, p->n - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, parts);
    int64_t t0 = mono_ns();
    for (int i = 0; atomic_load_explicit(&p->remaining, memory_order_acquire) > 0; i++) {
        if ((i & 255) == 255 && mono_ns() - t0 > POOL_SPIN_NS) {
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->remaining) > 0) pthread_cond_wait(&p->done, &p->mu);
            pthread_mutex_unlock(&p->mu);
            break;
        }
        cpu_relax();
    }
}

void cpu_pool_stop(cpu_pool *p) {
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->tids[i], NULL);
    free(p->tids);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
}

int cpu_pool_start(cpu_pool *p, int n) {
    memset(p, 0, sizeof *p);
    p->n = n;
    if (pthread_mutex_init(&p->mu, NULL) != 0) return ERR(ST_RUNTIME, "cpu backend: pthread_mutex_init failed");
    if (pthread_cond_init(&p->wake, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        return ERR(ST_RUNTIME, "cpu backend: pthread_cond_init failed");
    }
    if (pthread_cond_init(&p->done, NULL) != 0) {
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->mu);
        return ERR(ST_RUNTIME, "cpu backend: pthread_cond_init failed");
    }
    p->tids = calloc((size_t)n, sizeof *p->tids);
    int st = p->tids ? ST_OK : ERR(ST_RUNTIME, "cpu backend: out of host memory for %d threads", n);
    for (int i = 1; st == ST_OK && i < n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) {
            st = ERR(ST_RUNTIME, "cpu backend: out of host memory for %d threads", n);
            break;
        }
        wa->p = p, wa->id = i;
        if (pthread_create(&p->tids[p->n_started], NULL, pool_worker, wa) != 0) {
            free(wa);
            st = ERR(ST_RUNTIME, "cpu backend: cannot start thread %d of %d", i + 1, n);
            break;
        }
        p->n_started++;
    }
    if (st != ST_OK) cpu_pool_stop(p);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Progress hook

void cpu_set_progress(void *ctx, void (*fn)(void *arg), void *arg) {
    cpu_ctx *c = ctx;
    c->progress = fn;
    c->progress_arg = arg;
}
