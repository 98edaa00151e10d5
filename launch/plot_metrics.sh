#!/usr/bin/env bash
# plot_metrics.sh — a training run's curves as PNGs (gnuplot) from its --metrics JSON Lines file: loss.png (training
# and test loss per epoch), accuracy.png (training and test accuracy), throughput.png (images/s and scaling
# efficiency per epoch), and metrics.tsv (the columns plotted).
#   ./launch/plot_metrics.sh METRICS.jsonl [--out DIR]      (default DIR: beside the metrics file)
#   several files: one line each per PNG, labelled by file name (e.g. np 1 against np 4)
# Exit: 0 plotted, 2 bad arguments or a file with no epoch record, 1 gnuplot or python3 missing.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
files=() out=''
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "plot_metrics.sh: --out needs a folder" >&2; exit 2; }; out=$2; shift 2 ;;
    -*) echo "plot_metrics.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) files+=("$1"); shift ;;
  esac
done
[ ${#files[@]} -gt 0 ] || { echo "plot_metrics.sh: give a metrics file (see --help)" >&2; exit 2; }
command -v gnuplot >/dev/null || { echo "plot_metrics.sh: needs gnuplot (apt-get install gnuplot-nox)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "plot_metrics.sh: needs python3" >&2; exit 1; }
out=${out:-$(dirname "${files[0]}")}
mkdir -p "$out"
# One TSV block per file (gnuplot's `index`): epoch, train_loss, test_loss, train_acc, test_acc, images_per_s,
# scaling_efficiency. Per-step or other records (no "epoch" and "test_loss") are left out.
python3 - "$out/metrics.tsv" "${files[@]}" <<'PY' || exit 2
import json, sys
out = open(sys.argv[1], "w")
for n, path in enumerate(sys.argv[2:]):
    rows = []
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        d = json.loads(line)
        if "epoch" in d and "test_loss" in d and "train_loss" in d:
            rows.append([d["epoch"], d["train_loss"], d["test_loss"], d["train_acc"], d["test_acc"],
                         d.get("images_per_s") or 0, d.get("scaling_efficiency") or 0])
    if not rows:
        sys.exit(f"plot_metrics.sh: {path}: no epoch record (a --metrics file of a training run?)")
    if n:
        out.write("\n\n")
    out.write(f"# {path}\n")
    for r in rows:
        out.write("\t".join(str(x if x is not None else "nan") for x in r) + "\n")
PY
n=${#files[@]}
labels=() 
for f in "${files[@]}"; do labels+=("$(basename "$f" .jsonl)"); done
plot() {  # plot FILE.png TITLE YLABEL "COL:NAME" ...
  local png=$1 title=$2 ylabel=$3; shift 3
  local cmd="set terminal pngcairo size 900,540 font 'sans,10'; set output '$out/$png'; set title '$title';"
  cmd+=" set xlabel 'epoch'; set ylabel '$ylabel'; set grid; set key outside right; set datafile separator '\\t';"
  cmd+=" set datafile missing 'nan'; plot "
  local first=1 i spec
  for ((i = 0; i < n; i++)); do
    for spec in "$@"; do
      [ $first -eq 1 ] || cmd+=", "
      first=0
      cmd+="'$out/metrics.tsv' index $i using 1:${spec%%:*} with linespoints title '${labels[$i]} ${spec#*:}'"
    done
  done
  gnuplot -e "$cmd"
}
plot loss.png "loss" "cross-entropy" "2:train" "3:test"
plot accuracy.png "accuracy" "fraction correct" "4:train" "5:test"
plot throughput.png "throughput" "images/s" "6:images/s"
echo "plot_metrics.sh: $out/loss.png $out/accuracy.png $out/throughput.png ($n run(s))"
