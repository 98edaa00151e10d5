// tensorboard.h — training curves for TensorBoard (`--tensorboard DIR`): an event file of scalar summaries
// (tensorflow.Event records in TFRecord framing, CRC-32C checked), written by rank 0 as training runs, each record
// with one write(2) so `tensorboard --logdir DIR` shows it at once. No TensorFlow or protobuf library is needed.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct tboard tboard;

typedef struct tb_scalar {
    const char *tag;   // e.g. "train/loss"
    double value;      // written as a float (TensorBoard's simple_value)
} tb_scalar;

// Creates DIR (when missing) and DIR/events.out.tfevents.<time>.<host>.<pid> with its version record.
int tb_open(tboard **out, const char *dir, const char *host);
// One event at `step` holding n scalars. NULL w: nothing (TensorBoard off).
int tb_scalars(tboard *w, long long step, const tb_scalar *v, int n);
int tb_close(tboard *w);  // NULL: nothing
uint32_t tb_crc32c(const void *p, size_t n);  // CRC-32C of n bytes (tests check it against known values)
