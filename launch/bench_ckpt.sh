#!/usr/bin/env bash
# bench_ckpt.sh — checkpoint save and load of ResNet-50 (configs/resnet50.cfg) timed next to the disk's own speed,
# in one run, in one directory:
#   ./launch/bench_ckpt.sh [--dir DIR] [--repeats R] [--build build] [--no-drop]
# The checkpoint is the trainer's own: one SGD step of resnet50.cfg at 32x32 on 4 PNGs of two classes (fc 2 units:
# 23.5 M parameters, 94 MB, plus the SGD velocity: 188 MB in 481 tensors). tests/bench_ckpt then times the
# checkpoint API alone, no training: ckpt_save (temp file, fsync, rename, directory fsync) R times, the same bytes
# saved as ONE tensor R times (so (save − save of one tensor) / tensors is the per-tensor cost), and ckpt_load +
# reading every tensor, R times from the page cache and once cold. Next to it: the disk's sequential write
# (dd bs=1M conv=fsync, the same size) and read (dd after the page cache is dropped). Cold reads need
# /proc/sys/vm/drop_caches writable (root, not in every container); otherwise those rows say "cached".
# Prints one table: seconds (best and median of R) and MB/s (10^6 bytes). --no-drop: never drop the cache.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."
dir=${TMPDIR:-/tmp} repeats=5 build=build drop=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --no-drop) drop=0; shift ;;
    -h|--help) sed -n '2,13p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_ckpt.sh: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done
[[ $repeats =~ ^[1-9][0-9]*$ ]] || { echo "bench_ckpt.sh: --repeats '$repeats' is not a positive integer" >&2; exit 2; }
[ -d "$dir" ] || { echo "bench_ckpt.sh: --dir $dir is not a directory" >&2; exit 2; }
if [ ! -x "$build/trainer" ] || [ ! -x "$build/tests/bench_ckpt" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j2 --target trainer bench_ckpt >/dev/null
fi
work=$(mktemp -d -p "$dir" bench_ckpt.XXXXXX)
trap 'rm -rf "$work"' EXIT

# ---- the checkpoint: one step of ResNet-50 at 32x32, two classes
mkdir -p "$work/img/a" "$work/img/b"
for i in 0 1; do
  python3 tests/make_images.py png "$work/img/a/$i.png" 32 32 3
  python3 tests/make_images.py png "$work/img/b/$i.png" 32 32 3
done
"$build/trainer" --config configs/resnet50.cfg --threads 2 --epochs 1 --steps 1 --batch 4 --set net.height=32 \
  --set net.width=32 --set net.classes=2 --set fc.units=2 --set "data.train_dir=$work/img" \
  --set "data.test_dir=$work/img" --set data.val_fraction=0 --set data.resize=32 --set net.eval_batch=4 --quiet \
  --save "$work/r50.safetensors" >/dev/null

drop_caches() {  # 0 when the page cache was dropped
  [ "$drop" = 1 ] || return 1
  sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null
}
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
row() { printf '%-44s %9s %9s %9s\n' "$@"; }
ddsec() { sed -n 's/.* copied, \([0-9.]*\) s,.*/\1/p'; }

# ---- the API: save R times (+ one tensor), load R times from the cache, once cold
"$build/tests/bench_ckpt" save "$work/r50.safetensors" "$work/out.safetensors" "$repeats" >"$work/save"
"$build/tests/bench_ckpt" load "$work/out.safetensors" "$repeats" >"$work/load"
cold=cached
if drop_caches; then cold=cold; fi
"$build/tests/bench_ckpt" load "$work/out.safetensors" 1 >"$work/load1"
read -r _ n bytes save_best save_med <"$work/save"
read -r _ _ _ one_best one_med < <(sed -n 2p "$work/save")
read -r _ _ _ load_best load_med <"$work/load"
read -r _ _ _ load1 _ <"$work/load1"
mb=$((bytes / 1000000))

# ---- the disk: the same size written (fsync) and read back
dd if=/dev/zero of="$work/dd" bs=1M count=$((bytes / 1048576 + 1)) conv=fsync 2>"$work/ddw" >/dev/null
ddbytes=$(( (bytes / 1048576 + 1) * 1048576 ))
ddw=$(ddsec <"$work/ddw")
dcold=cached
if drop_caches; then dcold=cold; fi
dd if="$work/dd" of=/dev/null bs=1M 2>"$work/ddr" >/dev/null
ddr=$(ddsec <"$work/ddr")

echo "ResNet-50 checkpoint: $n tensors, $mb MB; $(date -u +%F), $(nproc) cores, $(df -P "$dir" | awk 'NR==2 {print $1}') ($dir)"
row "" "best s" "median s" "MB/s"
row "ckpt_save ($n tensors, fsync, rename)" "$save_best" "$save_med" "$(mbps "$bytes" "$save_best")"
row "ckpt_save (the same bytes as 1 tensor)" "$one_best" "$one_med" "$(mbps "$bytes" "$one_best")"
row "disk: dd bs=1M conv=fsync" "$ddw" "-" "$(mbps "$ddbytes" "$ddw")"
row "ckpt_load + read all (page cache)" "$load_best" "$load_med" "$(mbps "$bytes" "$load_best")"
row "ckpt_load + read all ($cold)" "$load1" "-" "$(mbps "$bytes" "$load1")"
row "disk: dd bs=1M read ($dcold)" "$ddr" "-" "$(mbps "$ddbytes" "$ddr")"
awk -v a="$save_med" -v b="$one_med" -v n="$n" \
  'BEGIN { c = (a - b) / n * 1e6; printf "per-tensor cost of save: (median %.3f - %.3f s) / %d tensors = %.1f us%s\n", a, b, n, c, c < 0 ? " (below the run-to-run noise)" : "" }'
