// bucket_plan.h — gradient buckets: the rule that forms them (closed at layer boundaries, each within a cap), and
// for parallel.bucket_kb=auto the cap that a pipeline model of backward and the all-reduces predicts to leave the
// least communication exposed, from a start-up probe of the link (two all-reduce sizes, agreed over the ranks)
// and the model's layers. Pure arithmetic: the trainer (train_ddp.c) times the probe and builds the buckets.
#pragma once
#include <stddef.h>

#include "model.h"

// A slice [begin, end) of the flat gradient buffer, in floats.
typedef struct bucket_span {
    size_t begin, end;
} bucket_span;

// One layer with gradients, in the buffer's order (= backward's order: the last layer first).
typedef struct bucket_layer {
    size_t begin, end;  // its gradients: floats [begin, end)
    double ready_s;     // when backward has finished them, from backward's start (no launches counted)
    int whole;          // never split, however large: one bucket of its own (PowerSGD compresses whole matrices)
    // PowerSGD (set on every layer, or on none): what its gradients all-reduce as two all-reduces, P's with the
    // uncompressed values, then the Q's (powersgd_span_floats). 0 and 0: the floats themselves, in one.
    size_t p_floats, q_floats;
} bucket_layer;

// The all-reduce of one bucket, once started, one at a time in launch order: n measured sizes (bytes, seconds),
// joined by straight lines (a link's cost per byte is not one number: MPI switches protocols, a 2-rank
// all-reduce of a large vector sends it one way and then the other); below the first size its time, above the
// last the last segment's slope (at least the slope from the first size to the last). n = 0: alpha_s + S * beta_s.
// alpha_s, beta_s: the line through the first and the last size (what the choice line prints). Launching one
// costs the host launch_s, which delays the rest of backward (host-progress comms).
#define BUCKET_LINK_MAX 8
typedef struct bucket_link {
    int n;
    double bytes[BUCKET_LINK_MAX], s[BUCKET_LINK_MAX];
    double alpha_s, beta_s, launch_s;
} bucket_link;

// Caps tried by bucket_plan_choose: 4 KiB x 2^k up to 64 MiB.
#define BUCKET_PLAN_MIN_KB 4
#define BUCKET_PLAN_MAX_KB (64 * 1024)
// The probe's sizes: 4 KiB, then x4 up to 4 MiB, stopping after the first at least as large as the gradients or
// whose all-reduce took BUCKET_PROBE_ENOUGH_S; a size is timed once (no warm-up) after one that took
// BUCKET_PROBE_SLOW_S, so a slow link is probed in about half a second.
#define BUCKET_PROBE_FIRST_BYTES (4 * 1024)
#define BUCKET_PROBE_LAST_BYTES (4 * 1024 * 1024)
#define BUCKET_PROBE_ENOUGH_S 0.05
#define BUCKET_PROBE_SLOW_S 0.02

// The model's layers with gradients in buffer order, backward's time split over the layers by their arithmetic
// (the kinds' flops; layers without any take none), each ready when backward has finished it. out: n_layers
// entries. Returns how many layers have gradients.
int bucket_plan_layers(const model *m, double backward_s, bucket_layer *out);

// Buckets of at most per floats over the layers (in buffer order), closed at layer boundaries: layers are gathered
// while the bucket stays within per, a layer larger than per is split into equal parts no larger than it, and
// the last bucket runs to n_params; a layer marked whole larger than per is a bucket alone. out (NULL: count
// only) receives them in launch order. Returns the count.
int bucket_plan_form(const bucket_layer *layers, int n_layers, size_t n_params, size_t per, bucket_span *out);

// The communication a step pays beyond backward with buckets of at most per floats: the end of the last
// all-reduce minus backward_s (exposed wait plus the launches' host time). Under PowerSGD (the layers' p_floats,
// q_floats) a bucket is its P all-reduce and then its Q one, each priced on the link by its own size. Each bucket starts when backward has
// finished its last layer (overlap 0: when backward ends) and the previous all-reduce is done. *n_buckets: how
// many (may be NULL). Returns a negative number when out of memory.
double bucket_plan_simulate(const bucket_layer *layers, int n_layers, size_t n_params, double backward_s,
                            size_t per, const bucket_link *link, int overlap, int *n_buckets);

typedef struct bucket_choice {
    int kb;             // the cap in KiB
    int n_buckets;
    double exposed_s;   // bucket_plan_simulate's figure at that cap
} bucket_choice;

// The cap among BUCKET_PLAN_MIN_KB .. BUCKET_PLAN_MAX_KB (powers of 2) with at most max_buckets buckets that
// minimises bucket_plan_simulate; within 1 % (or 1 us) of the best, the one with fewer buckets; of caps giving as
// many buckets, the smallest. out->kb = 0 when no cap gives at most max_buckets; ST_RUNTIME when out of memory.
int bucket_plan_choose(const bucket_layer *layers, int n_layers, size_t n_params, double backward_s,
                       const bucket_link *link, int overlap, int max_buckets, bucket_choice *out);

// The link from the probe: all-reduces of bytes[i] (increasing) took s[i], i < n (1 <= n <= BUCKET_LINK_MAX);
// times made non-decreasing in size (noise), alpha and beta of the line through the first and the last
// (alpha >= 0, beta > 0; one size: alpha its time, beta 1e-12); launch_s as given (at least 0).
bucket_link bucket_plan_fit(const double *bytes, const double *s, int n, double launch_s);
// One all-reduce of `bytes` on the link (see bucket_link).
double bucket_plan_allreduce_s(const bucket_link *link, double bytes);

// The median of n values (sorts them in place); 0 for n = 0.
double bucket_plan_median(double *v, int n);
