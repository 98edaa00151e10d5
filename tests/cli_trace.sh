#!/usr/bin/env bash
# needs: mpi
# cli_trace.sh — `--trace DIR`: two ranks write Chrome trace-event timelines, launch/trace_merge.py merges them
# into one track per rank, and with overlap on (small buckets, so there are many) at least one bucket's
# all-reduce overlaps in time a per-layer backward span on the same rank; with --no-overlap none does.
# A bad --trace directory is a bad-input error (exit 2). Run by ctest: cli_trace.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
need_mpirun
make_tmp
# 10 steps of 2 x 32 samples; bucket_kb=8 gives 63 buckets for the 121,930 parameters (dense2; dense1 in 51 parts; conv2 in 10; conv1).
common=(--config "$src/configs/fashion_mnist_cnn.cfg" --threads 1 --epochs 1 --batch 32 --bucket-kb 8
        --set data.train_limit=640 --set data.test_limit=200 --quiet)
fail() { echo "FAIL: $*"; exit 1; }

"${mpi[@]}" -np 2 "$trainer" "${common[@]}" --trace "$tmp/on" >"$tmp/log" 2>&1 || { cat "$tmp/log"; fail "np 2 --trace run"; }
"${mpi[@]}" -np 2 "$trainer" "${common[@]}" --trace "$tmp/off" --no-overlap >"$tmp/log" 2>&1 ||
  { cat "$tmp/log"; fail "np 2 --trace --no-overlap run"; }
for d in on off; do
  for r in 0 1; do [ -s "$tmp/$d/trace_rank$r.json" ] || fail "$d: trace_rank$r.json missing"; done
  python3 "$src/launch/trace_merge.py" "$tmp/$d" -o "$tmp/$d.json" || fail "trace_merge.py $d"
done

# Per-layer time by kind (launch/trace_layers.py): the layer table is in the file, and in this CNN the two
# convolutions take the most time.
python3 "$src/launch/trace_layers.py" "$tmp/on" >"$tmp/layers.txt" || { cat "$tmp/layers.txt"; fail "trace_layers.py"; }
grep -q "^  0 conv1 *conv " "$tmp/layers.txt" && grep -q "^slowest kind: conv " "$tmp/layers.txt" ||
  { cat "$tmp/layers.txt"; fail "trace_layers.py: want conv1 listed and conv the slowest kind"; }

python3 - "$tmp/on.json" "$tmp/off.json" <<'PY' || exit 1
import json, sys
from collections import defaultdict

def spans(path):
    doc = json.load(open(path))
    by_rank = defaultdict(list)
    for e in doc["traceEvents"]:
        if e.get("ph") == "X":
            assert isinstance(e["ts"], (int, float)) and e["dur"] >= 0, e
            by_rank[e["pid"]].append(e)
    names = {e["args"]["name"] for e in doc["traceEvents"] if e.get("ph") == "M" and e["name"] == "process_name"}
    return by_rank, names

def overlaps(a, b):
    return a["ts"] < b["ts"] + b["dur"] and b["ts"] < a["ts"] + a["dur"]

def comm_backward_overlaps(evs):
    comm = [e for e in evs if e["cat"] == "comm"]
    layers = [e for e in evs if e["cat"] == "backward" and e["name"] != "backward"]
    return sum(1 for c in comm for l in layers if overlaps(c, l))

on, names = spans(sys.argv[1])
assert sorted(on) == [0, 1], f"want one track per rank (pid 0 and 1), got {sorted(on)}"
assert any(n.startswith("rank 0") for n in names) and any(n.startswith("rank 1") for n in names), names
for rank, evs in on.items():
    cats = {e["cat"] for e in evs}
    for want in ("step", "data", "forward", "backward", "wait", "optimizer", "comm", "eval"):
        assert want in cats, f"rank {rank}: no '{want}' span (have {sorted(cats)})"
    layer_fwd = {e["name"] for e in evs if e["cat"] == "forward" and e["name"] != "forward"}
    layer_bwd = {e["name"] for e in evs if e["cat"] == "backward" and e["name"] != "backward"}
    assert "forward conv1" in layer_fwd and "backward conv2" in layer_bwd, (layer_fwd, layer_bwd)
    steps = [e for e in evs if e["cat"] == "step"]
    assert len(steps) == 10, f"rank {rank}: {len(steps)} step spans, want 10"
    comm = [e for e in evs if e["cat"] == "comm"]
    assert len(comm) == 10 * 63, f"rank {rank}: {len(comm)} all-reduce spans, want 630"
    assert all(e["tid"] >= 100 for e in comm) and len({e["tid"] for e in comm}) == 63, "one lane per bucket"
    # every per-layer span lies inside its phase span of the same step
    phase = {(e["cat"], e["args"]["step"]): e for e in evs if e["name"] in ("forward", "backward")}
    for e in evs:
        if e["cat"] in ("forward", "backward") and e["name"] not in ("forward", "backward") and "step" in e["args"]:
            p = phase[(e["cat"], e["args"]["step"])]
            assert p["ts"] - 0.01 <= e["ts"] and e["ts"] + e["dur"] <= p["ts"] + p["dur"] + 0.01, (e, p)
n_on = {r: comm_backward_overlaps(evs) for r, evs in on.items()}
assert any(n > 0 for n in n_on.values()), f"overlap on: no all-reduce span overlaps a backward layer span {n_on}"
off, _ = spans(sys.argv[2])
n_off = {r: comm_backward_overlaps(evs) for r, evs in off.items()}
assert all(n == 0 for n in n_off.values()), f"--no-overlap: all-reduce spans overlap backward layers {n_off}"
print(f"all-reduce x backward-layer overlaps per rank: overlap on {n_on}, --no-overlap {n_off}")
PY

# A directory that cannot be created is bad input: exit 2, one line naming it.
"${mpi[@]}" -np 1 "$trainer" "${common[@]}" --trace /proc/no/such/dir >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ "$rc" -ne 2 ] || ! grep -q -- "--trace /proc/no/such/dir" "$tmp/err"; then
  cat "$tmp/err"; fail "bad --trace dir: exit $rc"
fi
echo "PASS"
