// augment.h — data augmentation from the configuration ([data] crop_pad, flip, normalize, mean, std): the
// training set's per-channel statistics, and the gather_aug parameters the backend's gather op applies
// (src/gather_aug.h: the draw, the order of the transforms, the float math).
#pragma once
#include "config.h"
#include "data.h"
#include "gather_aug.h"

// Per-channel mean and (population) standard deviation of every pixel of d, in units of pixel/255: exact
// integer sums, so the figures depend on the data only, not on an order or a thread count.
int augment_stats(const dataset *d, double *mean /* d->c */, double *std /* d->c */);

// normalize=1 without mean/std: write the statistics of `train` (the whole training set after train_limit,
// the same on every rank) into cfg->mean and cfg->std, in the shortest form that reads back exactly, so that
// --print-config and a checkpoint's stored configuration carry them. Otherwise nothing.
int augment_fill_normalize(net_config *cfg, const dataset *train);
// The same where the training set is not loaded yet (--print-config, --eval with a --config that lacks them):
// loads it, fills, frees. Nothing is loaded when normalize=0 or mean/std are given.
int augment_resolve(net_config *cfg);

// The gather parameters: for training batches (crop and flip as configured) or for evaluation and predict
// (normalisation only). *active = 0 when they would change nothing: the plain gather (aug NULL) is then used,
// bit for bit what a run without augmentation always did. The epoch starts at 0 (training: set per epoch).
int augment_params(const net_config *cfg, int training, gather_aug *a, int *active);
