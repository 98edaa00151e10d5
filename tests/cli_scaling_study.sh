#!/usr/bin/env bash
# needs: mpi
# cli_scaling_study.sh — launch/scaling_study.sh end to end, tiny: np 1 and 2, strong and weak, 4 steps per
# epoch on the first samples of Fashion-MNIST. Checks scaling.csv (header, one row per mode and np, numbers,
# the model's columns), the summary's mean relative error line and that both PNGs exist and are not empty.
# Then launch/overlap_sweep.sh, as tiny: its table (rows, numbers, ratios), with --paired too, and its exit 2 on
# bad arguments.
# Run by ctest: cli_scaling_study.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
for tool in mpirun gnuplot python3; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool not installed (launch/deps.sh)"; exit 77; }
done
[ -x "$build/bench_allreduce" ] || { echo "FAIL: $build/bench_allreduce not built"; exit 1; }
make_tmp
fail() { echo "FAIL: $*"; exit 1; }

MPIRUN="mpirun --oversubscribe --bind-to none --mca btl self,vader --mca btl_vader_single_copy_mechanism none"
[ "$(id -u)" -eq 0 ] && MPIRUN+=" --allow-run-as-root"
MPIRUN=$MPIRUN bash "$src/launch/scaling_study.sh" --build "$build" --out "$tmp/s" --max-np 2 --steps 4 --epochs 1 \
  --batch 32 --test-limit 100 --model-max-n 64 >"$tmp/log" 2>&1 || { cat "$tmp/log"; fail "scaling_study.sh failed"; }
cat "$tmp/log"

for f in scaling.png scaling_model.png; do
  [ -s "$tmp/s/$f" ] || fail "$f missing or empty"
  [ "$(head -c 8 "$tmp/s/$f" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$f is not a PNG"
done
grep -q "^mean relative error of model vs measurement over 2 run(s)" "$tmp/s/summary.txt" || fail "no mean error line"
# The model uses the buckets the np 2 runs report (metrics bucket_bytes), not slices of the cap.
grep -q "as the runs' metrics report them" "$tmp/s/summary.txt" "$tmp/log" || { cat "$tmp/s/summary.txt"; fail "model not on the reported buckets"; }

python3 - "$tmp/s/scaling.csv" "$tmp/s/scaling_model.dat" <<'PY' || exit 1
import csv, sys
want = ["mode", "np", "global_batch", "images_per_s", "images_per_s_per_rank", "step_ms", "compute_ms", "comm_ms",
        "exposed_comm_ms", "efficiency", "efficiency_kind", "model_step_ms", "model_compute_ms", "model_comm_ms",
        "model_exposed_comm_ms", "model_images_per_s", "model_efficiency", "step_rel_err"]
rows = list(csv.DictReader(open(sys.argv[1])))
assert rows and list(rows[0].keys()) == want, f"columns {list(rows[0].keys()) if rows else None}"
got = sorted((r["mode"], int(r["np"]), int(r["global_batch"])) for r in rows)
assert got == [("strong", 1, 32), ("strong", 2, 32), ("weak", 1, 32), ("weak", 2, 64)], got
for r in rows:
    for k in want[3:10] + want[11:]:
        v = float(r[k])
        assert v == v and abs(v) != float("inf"), (k, r)
    for k in ("images_per_s", "step_ms", "model_step_ms", "model_images_per_s", "efficiency", "model_efficiency"):
        assert float(r[k]) > 0, (k, r)
    if r["np"] == "1":
        assert float(r["comm_ms"]) == 0 and r["efficiency_kind"] == "estimate", r
        assert abs(float(r["model_step_ms"]) - float(r["step_ms"])) < 1e-2, r  # the model's input
    else:
        assert r["efficiency_kind"] == "baseline" and float(r["model_comm_ms"]) > 0, r
model = [l.split() for l in open(sys.argv[2]) if not l.startswith("#")]
assert [int(m[0]) for m in model] == [1, 2, 4, 8, 16, 32, 64], model
assert all(0 < float(x) <= 1.0 + 1e-9 for m in model for x in (m[1], m[2], m[5], m[6])), model
# overlap never predicts less efficiency than no overlap
assert all(float(m[1]) >= float(m[2]) - 1e-9 and float(m[5]) >= float(m[6]) - 1e-9 for m in model), model
print(f"scaling.csv: {len(rows)} rows OK; scaling_model.dat: {len(model)} rows OK")
PY
# launch/overlap_sweep.sh, tiny: 2 bucket sizes x overlap on/off, 4 steps each; its table and its argument checks.
OUT=$tmp/ov TRAINER=$trainer bash "$src/launch/overlap_sweep.sh" --mpirun "$MPIRUN" --np 2 --steps 4 --batch 16 \
  --buckets "32 1024" --repeat 1 --test-limit 50 >"$tmp/ov.log" 2>&1 || { cat "$tmp/ov.log"; fail "overlap_sweep.sh failed"; }
cat "$tmp/ov.log"
[ "$(find "$tmp/ov" -name 'np2_kb*_ov*_r1.jsonl' | wc -l)" -eq 4 ] || fail "overlap_sweep.sh: not 4 metrics files"
python3 - "$tmp/ov.log" <<'PY' || exit 1
import sys
rows = [l.split() for l in open(sys.argv[1]) if l[:1].isdigit()]
assert [(r[0], r[2]) for r in rows] == [("32", "on"), ("32", "off"), ("1024", "on"), ("1024", "off")], rows
for r in rows:
    vals = [float(x) for x in r[3:]]  # step, backward, comm, exposed, skew, net (and the on rows' three ratios)
    assert len(vals) == (9 if r[2] == "on" else 6) and all(v >= 0 for v in vals[:5]), r
    assert int(r[1]) >= 1, r
on32 = rows[0]
assert float(on32[11]) <= float(on32[9]) + 0.011, on32  # skew(on)/exposed(off) <= exposed on/off (rounding)
print("overlap_sweep.sh: table OK")
PY
# --paired: one run per size alternating overlap off and on step by step; the same table from its two halves.
OUT=$tmp/ovp TRAINER=$trainer bash "$src/launch/overlap_sweep.sh" --mpirun "$MPIRUN" --np 2 --steps 4 --batch 16 \
  --buckets 32 --repeat 1 --test-limit 50 --paired >"$tmp/ovp.log" 2>&1 || { cat "$tmp/ovp.log"; fail "overlap_sweep.sh --paired failed"; }
cat "$tmp/ovp.log"
[ -s "$tmp/ovp/np2_kb32_ab_r1.jsonl" ] || fail "overlap_sweep.sh --paired: no np2_kb32_ab_r1.jsonl"
grep -q "each alternating overlap off and on step by step" "$tmp/ovp.log" || fail "overlap_sweep.sh --paired: header"
python3 - "$tmp/ovp.log" <<'PY' || exit 1
import sys
rows = [l.split() for l in open(sys.argv[1]) if l[:1].isdigit()]
assert [(r[0], r[2]) for r in rows] == [("32", "on"), ("32", "off")], rows
assert all(float(x) >= 0 for r in rows for x in r[3:]), rows
print("overlap_sweep.sh --paired: table OK")
PY
for a in "--np 0" "--buckets x" "--steps" "--nosuch"; do
  # shellcheck disable=SC2086
  bash "$src/launch/overlap_sweep.sh" $a >"$tmp/out" 2>"$tmp/err"; rc=$?
  [ "$rc" -eq 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q '^overlap_sweep.sh: ' "$tmp/err" ||
    fail "overlap_sweep.sh $a: exit $rc, stderr: $(cat "$tmp/err")"
done
echo "overlap_sweep.sh: bad arguments exit 2 with one line"
echo "PASS"
