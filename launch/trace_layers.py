#!/usr/bin/env python3
"""trace_layers.py — per-layer forward and backward time from `trainer --trace DIR`, summed by layer kind.

    python3 launch/trace_layers.py DIR [--rank 0] [--top 10]

Reads DIR/trace_rank<R>.json: every per-layer span (cat forward/backward, args.index = the layer) averaged over
the traced steps, the layer table the trainer writes in otherData.layers (name, kind), and prints one row per
layer (mean ms per step forward, backward, share of all layer time) and one per kind, slowest first, ending with
the slowest kind. On a GPU the spans are device time between events; on the CPU host time. Standard library only.
"""
import argparse
import collections
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--top", type=int, default=0, help="only the N slowest layers (0: all, in layer order)")
    a = ap.parse_args()
    path = os.path.join(a.dir, f"trace_rank{a.rank}.json")
    doc = json.load(open(path))
    layers = doc.get("otherData", {}).get("layers", [])
    if not layers:
        sys.exit(f"trace_layers.py: {path} has no layer table (written by this trainer version and later)")
    fwd, bwd = collections.defaultdict(float), collections.defaultdict(float)
    steps = set()
    for e in doc["traceEvents"]:
        if e.get("ph") != "X" or e.get("cat") not in ("forward", "backward"):
            continue
        idx = e.get("args", {}).get("index")
        if idx is None or e["name"] in ("forward", "backward"):
            continue
        steps.add(e["args"].get("step"))
        (fwd if e["cat"] == "forward" else bwd)[idx] += e["dur"] / 1e3  # us -> ms
    n = max(1, len(steps))
    total = (sum(fwd.values()) + sum(bwd.values())) / n
    if total <= 0:
        sys.exit(f"trace_layers.py: {path} has no per-layer spans")
    rows = [(i, name, kind, fwd[i] / n, bwd[i] / n) for i, (name, kind) in enumerate(layers)]
    order = sorted(rows, key=lambda r: -(r[3] + r[4]))[:a.top] if a.top else rows
    print(f"{len(steps)} traced step(s) of rank {a.rank}; mean ms per step")
    print(f"{'#':>3} {'layer':<16} {'kind':<10} {'forward':>9} {'backward':>9} {'share':>6}")
    for i, name, kind, f, b in order:
        print(f"{i:>3} {name:<16} {kind:<10} {f:9.3f} {b:9.3f} {100 * (f + b) / total:5.1f}%")
    kinds = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for _, _, kind, f, b in rows:
        kinds[kind][0] += f
        kinds[kind][1] += b
        kinds[kind][2] += 1
    print(f"\n{'kind':<10} {'layers':>6} {'forward':>9} {'backward':>9} {'share':>6}")
    by_kind = sorted(kinds.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))
    for kind, (f, b, c) in by_kind:
        print(f"{kind:<10} {c:>6} {f:9.3f} {b:9.3f} {100 * (f + b) / total:5.1f}%")
    k, (f, b, _) = by_kind[0]
    print(f"\nslowest kind: {k} ({100 * (f + b) / total:.1f}% of the layer time, {total:.2f} ms per step in layers)")


if __name__ == "__main__":
    main()
