#!/usr/bin/env python3
"""trace_merge.py — merge the per-rank timelines of `trainer --trace DIR` into one Chrome trace-event file.

    python3 launch/trace_merge.py DIR [-o DIR/trace.json]
    python3 launch/trace_merge.py trace_rank0.json trace_rank1.json ... -o merged.json

Each rank's events keep their lanes (tid) and go on one track per rank (pid = rank, named "rank R (host)").
The ranks' timestamps already share an origin (taken right after a barrier), so nothing is shifted.
Open the result in https://ui.perfetto.dev (or chrome://tracing). Standard library only.
"""
import argparse
import glob
import json
import os
import re
import sys


def rank_files(inputs):
    files = []
    for p in inputs:
        if os.path.isdir(p):
            files += glob.glob(os.path.join(p, "trace_rank*.json"))
        else:
            files.append(p)

    def rank_of(f):
        m = re.search(r"trace_rank(\d+)\.json$", f)
        return int(m.group(1)) if m else sys.maxsize

    return sorted(set(files), key=lambda f: (rank_of(f), f))


def merge(files):
    events, ranks, dropped = [], [], 0
    for f in files:
        with open(f) as fh:
            doc = json.load(fh)
        evs = doc["traceEvents"] if isinstance(doc, dict) else doc
        other = doc.get("otherData", {}) if isinstance(doc, dict) else {}
        rank = other.get("rank")
        if rank is None:
            m = re.search(r"trace_rank(\d+)\.json$", f)
            rank = int(m.group(1)) if m else len(ranks)
        if rank in ranks:
            raise SystemExit(f"trace_merge.py: {f}: rank {rank} appears twice")
        ranks.append(rank)
        dropped += int(other.get("dropped_events", 0))
        for e in evs:
            e["pid"] = rank  # one track per rank, whatever the file said
            events.append(e)
    # Metadata first, then spans by time: viewers do not need it, but diffs and tests read it more easily.
    events.sort(key=lambda e: (e.get("ph") != "M", e.get("ts", 0.0), -e.get("dur", 0.0)))
    return {"displayTimeUnit": "ms", "otherData": {"ranks": sorted(ranks), "dropped_events": dropped},
            "traceEvents": events}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="a --trace DIR, or trace_rank<R>.json files")
    ap.add_argument("-o", "--output", help="merged file (default: DIR/trace.json for one DIR)")
    a = ap.parse_args()
    files = rank_files(a.inputs)
    if not files:
        raise SystemExit(f"trace_merge.py: no trace_rank*.json in {' '.join(a.inputs)}")
    out = a.output
    if out is None:
        if len(a.inputs) != 1 or not os.path.isdir(a.inputs[0]):
            raise SystemExit("trace_merge.py: -o FILE is needed unless the input is one directory")
        out = os.path.join(a.inputs[0], "trace.json")
    doc = merge(files)
    tmp = out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
    os.replace(tmp, out)
    n = sum(1 for e in doc["traceEvents"] if e.get("ph") == "X")
    print(f"trace_merge.py: {len(files)} rank(s), {n} spans -> {out}")


if __name__ == "__main__":
    main()
