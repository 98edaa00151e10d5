// backend.c — the parts of the backend that no single implementation owns: the backend_<op>() wrappers and the
// table check (both made from src/backend_ops.def), and the factory. Shape descriptors: src/backend_desc.c.
#include "backend.h"

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

// ---------------------------------------------------------------------------------------------------------
// Wrappers: backend_<op>(be, ...) calls the slot with be->ctx; an absent OPTIONAL slot gives ST_RUNTIME naming
// the op (int), nothing (void) or NULL (ptr).

#define BE_SELF const backend *be
#define BE_ARG be->ctx
#define BE_ABSENT_int(op) return ERR(ST_RUNTIME, "backend '%s' does not offer %s", backend_name(be), op)
#define BE_ABSENT_void(op) return
#define BE_ABSENT_ptr(op) return NULL
#define BE_WRAP_REQUIRED(ret, name, params, args) \
    BE_RET_##ret backend_##name params { BE_RETURN_##ret be->ops->name args; }
#define BE_WRAP_OPTIONAL(ret, name, params, args)          \
    BE_RET_##ret backend_##name params {                   \
        if (!be->ops->name) BE_ABSENT_##ret(#name);        \
        BE_RETURN_##ret be->ops->name args;                \
    }
#define BE_WRAP_INTERNAL(ret, name, params, args)
#define BACKEND_OP(ret, name, slot, capture, params, args) BE_WRAP_##slot(ret, name, params, args)
#include "backend_ops.def"
#undef BACKEND_OP

const char *backend_name(const backend *be) { return be->ops->name; }

int backend_can_capture(const backend *be) {
    return be->ops->capture_begin && be->ops->capture_end && be->ops->replay;
}

int backend_is_async(const backend *be) { return be->ops->stream != NULL; }

int backend_is_nhwc(const backend *be) {
    int nhwc = 0;
    return be->ops->nhwc && be->ops->nhwc(be->ctx, &nhwc) == ST_OK && nhwc;
}

int backend_is_grads16(const backend *be) {
    int on = 0;
    return be->ops->grads16 && be->ops->grads16(be->ctx, &on) == ST_OK && on;
}

int backend_act_format(const backend *be) {
    int format = 0;
    return be->ops->act16 && be->ops->act16(be->ctx, &format) == ST_OK ? format : 0;
}

size_t backend_act_bytes(const backend *be) { return backend_act_format(be) ? 2 : sizeof(float); }

// ---------------------------------------------------------------------------------------------------------
// Table completeness (tests: a new op left out of a backend fails them)

#define BE_REQUIRED_REQUIRED 1
#define BE_REQUIRED_OPTIONAL 0
#define BE_REQUIRED_INTERNAL 1

int backend_ops_missing(const backend_ops *ops, const char **first) {
    int missing = 0;
#define BACKEND_OP(ret, name, slot, capture, params, args) \
    if (BE_REQUIRED_##slot && !ops->name && missing++ == 0 && first) *first = #name;
#include "backend_ops.def"
#undef BACKEND_OP
    return missing;
}

// ---------------------------------------------------------------------------------------------------------
// Factory

// tf32 is CUDA's; deterministic=1 changes nothing (the CPU backend is deterministic for a fixed thread count).
static int cpu_create(backend *be, const backend_options *o) {
    if (o->tf32) return ERR(ST_INPUT, "tf32=1 needs backend=cuda (backend is 'cpu')");
    const backend_cpu_opts co = {
        .threads = o->threads, .conv = CPU_CONV_AUTO, .grads16 = o->grads16, .act16 = o->act16};
    return backend_cpu_create_opts(be, &co);
}

static const struct backend_kind {
    const char *name;
    int (*create)(backend *be, const backend_options *o);
    int host_cores;  // backend_uses_host_cores
} kinds[] = {
    {"cpu", cpu_create, 1},
    {"cuda", backend_cuda_create, 0},
};

static const struct backend_kind *kind_find(const char *name) {
    for (size_t i = 0; name && i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(name, kinds[i].name) == 0) return &kinds[i];
    return NULL;
}

int backend_create(backend *be, const char *name, const backend_options *opt) {
    memset(be, 0, sizeof *be);
    const backend_options none = {0};
    if (!name) return ERR(ST_INPUT, "backend: no name given (want cpu or cuda)");
    const struct backend_kind *k = kind_find(name);
    if (!k) return ERR(ST_INPUT, "backend \"%s\": unknown (want cpu or cuda)", name);
    return k->create(be, opt ? opt : &none);
}

int backend_uses_host_cores(const char *name) {
    const struct backend_kind *k = kind_find(name);
    return k && k->host_cores;
}

void backend_destroy(backend *be) {
    if (!be) return;
    if (be->ops && be->ops->destroy) be->ops->destroy(be->ctx);
    be->ops = NULL;
    be->ctx = NULL;
}

#ifndef DDP_HAVE_CUDA
int backend_cuda_create(backend *be, const backend_options *opt) {
    (void)opt;
    memset(be, 0, sizeof *be);
    return ERR(ST_RUNTIME, "this build has no CUDA backend (configure with -DTRAINER_CUDA=ON on a machine with nvcc)");
}

int backend_cuda_available(void) { return 0; }
#endif
