// backend_record.h — a backend wrapper that emulates CUDA stream capture on a synchronous backend, so the
// trainer's CUDA Graph path (capture_begin / capture_end / replay) runs and is tested on a CPU-only machine.
// See src/backend_record.c for the rules it enforces.
#pragma once
#include "backend.h"

// Wraps the backend *be in a table whose capture_begin/capture_end/replay emulate CUDA stream capture: inside
// a capture the stream ops are recorded (arguments by value, pointed-to data read at replay) instead of run,
// and the calls a capture forbids fail and invalidate it. Outside a capture every op forwards unchanged, and
// the table keeps the inner backend's name. Takes ownership: destroying the wrapper destroys the inner
// backend. On failure *be is left as it was (still the caller's).
int backend_record_wrap(backend *be);

// Test aid: every later capture on the wrapper *be fails as one invalidated by a refused call would (no graph;
// capture_end reports it), so the trainer's fall-back to op-by-op steps is tested without a GPU.
int backend_record_refuse_captures(backend *be);
