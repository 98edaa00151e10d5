#!/usr/bin/env bash
# bench_data.sh — ddp-cnn's streaming image pipeline against PyTorch's, side by side in one run; prints one table.
#   ./launch/bench_data.sh [--data DIR] [--train 2000] [--val 200] [--workers "1 2"] [--batch 32] [--batches 60]
#                          [--repeat 2] [--e2e-repeat 2] [--e2e-epochs 1] [--rss-sizes "2000 20000 200000"] [--rss-steps 8]
#                          [--skip loader,e2e,rss] [--build build] [--venv DIR] [--no-install]
#   1. decode + RandomResizedCrop(224) + flip + normalise, img/s per worker thread/process at each W: ours
#      (tests/bench_loader.c over src/loader.h) vs torch DataLoader(ImageFolder(...), num_workers=W) (PIL decode,
#      and torchvision.io.decode_jpeg), ratio ours/PyTorch; goal >= 1.5x per core.
#   2. end to end: the trainer on the folder with configs/folder_resnet.cfg (one epoch), step time and data_wait_s
#      from --metrics, streaming vs a reference whose loader does next to nothing; goal within 5 %.
#   3. max RSS of one rank at 2k, 20k, 200k listed images (format=list, --steps N); goal flat.
# --data: the synthetic ImageFolder set, made once (PIL; not timed) and reused (default $BENCH_DATA or
# /tmp/ddp-bench-data). --venv: the PyTorch venv (default $BENCH_VENV or /tmp/ddp-bench-venv), created with
# `python3 -m venv` + `pip install torch torchvision` from PyPI when missing (--no-install: never; without torch
# the PyTorch rows are skipped with a line saying so). Debian's python3-torch, when installed, is a second row.
# --repeat, --e2e-repeat: each measurement runs R times, alternating ours/PyTorch and streaming/reference, the best
# kept (others' processes only slow a run down). --skip: parts to leave out. The default run takes about 8 minutes
# on 2 cores once the data and the venv exist; the table says how much CPU other processes took meanwhile.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."
data=${BENCH_DATA:-/tmp/ddp-bench-data} venv=${BENCH_VENV:-/tmp/ddp-bench-venv}
n_train=2000 n_val=200 workers="1 2" batch=32 batches=60 warmup=4 repeat=2
rss_sizes="2000 20000 200000" rss_steps=8 e2e_epochs=1 e2e_repeat=2 skip="" build=build install=1
cmdline="launch/bench_data.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=$2; shift 2 ;;
    --train) n_train=$2; shift 2 ;;
    --val) n_val=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --batches) batches=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --rss-sizes) rss_sizes=$2; shift 2 ;;
    --rss-steps) rss_steps=$2; shift 2 ;;
    --e2e-epochs) e2e_epochs=$2; shift 2 ;;
    --e2e-repeat) e2e_repeat=$2; shift 2 ;;
    --skip) skip=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --venv) venv=$2; shift 2 ;;
    --no-install) install=0; shift ;;
    -h|--help) sed -n '2,18p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_data.sh: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done
skipped() { [[ ",$skip," == *",$1,"* ]]; }
# the Python that makes the data (PIL): Debian's python3-pil, else the venv's Pillow
py=""
for p in /usr/bin/python3 "$(command -v python3 || true)" "$venv/bin/python"; do
  if [ -x "$p" ] && "$p" -c "import PIL" 2>/dev/null; then py=$p; break; fi
done
[ -n "$py" ] || { echo "bench_data.sh: PIL is needed to make the data set (apt-get install python3-pil)" >&2; exit 2; }

# --- the programs ------------------------------------------------------------------------------------------
if [ ! -x "$build/trainer" ] || [ ! -x "$build/tests/bench_loader" ]; then
  echo "building $build (trainer, bench_loader) ..."
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j "$(nproc)" --target trainer bench_loader >/dev/null
fi
trainer=$build/trainer bench=$build/tests/bench_loader

# CPU time of the whole machine, to tell how much of it other processes took during the run (a 2-core machine
# shared with a compiler skews every figure here)
cpu_busy() { awk '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8) / 100 }' /proc/stat; }
busy0=$(cpu_busy) wall0=$(date +%s.%N)

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
res=$out/results.txt
: >"$res"
note() { echo "note $*" >>"$res"; echo "  ($*)"; }

# --- the data ----------------------------------------------------------------------------------------------
stamp="train=$n_train val=$n_val classes=10 seed=1 gen=2"
if [ "$(cat "$data/.stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$data"
  mkdir -p "$data"
  "$py" launch/bench_data.py gen "$data" --train "$n_train" --val "$n_val"
  echo "$stamp" >"$data/.stamp"
fi
if ! skipped e2e && [ "$(cat "$data/.stamp_png" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$data/png224" "$data/eval10"
  for c in "$data/val"/*/; do  # eval10: one validation image per class, the end-to-end runs' evaluation set
    mkdir -p "$data/eval10/$(basename "$c")"
    cp "$(ls "$c"* | head -n 1)" "$data/eval10/$(basename "$c")/"
  done
  for split in train val eval10; do "$py" launch/bench_data.py predecode "$data/$split" "$data/png224/$split" --size 224 >/dev/null; done
  echo "$stamp" >"$data/.stamp_png"
fi
mean_kib=$(du -sk "$data/train" | awk -v n="$n_train" '{printf "%.0f", $1 / n}')
{
  echo "meta date $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "meta machine $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r)"
  echo "meta command $cmdline"
  echo "meta data $data: $n_train train + $n_val val JPEGs (q90, ~500x375, 10 classes, ~$mean_kib KiB each on disk)"
  echo "meta workers $workers"
} >>"$res"

# --- PyTorch -----------------------------------------------------------------------------------------------
torch_py="" torch_note=""
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  torch_py=$venv/bin/python
elif [ "$install" = 1 ] && ! skipped loader; then
  echo "installing torch + torchvision into $venv (python3 -m venv; pip, PyPI) ..."
  if { [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"; } &&
     "$venv/bin/pip" install --quiet torch torchvision >"$out/pip.log" 2>&1; then
    torch_py=$venv/bin/python
  else
    echo "  PyPI install failed ($(tail -n 1 "$out/pip.log" 2>/dev/null)); trying the CPU-only wheels"
    if "$venv/bin/pip" install --quiet --index-url https://download.pytorch.org/whl/cpu torch torchvision >"$out/pip.log" 2>&1; then
      torch_py=$venv/bin/python
    fi
  fi
fi
if [ -n "$torch_py" ]; then
  tv=$("$torch_py" -c "import torch, torchvision, PIL; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}')")
  case "$tv" in *+cpu*) src="CPU-only wheels" ;; *) src="PyPI wheels" ;; esac
  torch_note="pip venv $venv: $tv ($src)"
else
  torch_note="pip venv $venv: torch not available (install failed or --no-install) — PyTorch rows not measured"
fi
deb_note="Debian python3-torch: not installed — not measured"
deb_torch=0
if /usr/bin/python3 -c "import torch, torchvision" 2>/dev/null; then
  deb_torch=1
  deb_note="Debian: $(/usr/bin/python3 -c "import torch, torchvision, PIL; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}')")"
fi

# --- 1. loader throughput ----------------------------------------------------------------------------------
best() {  # TAG LINE [KEY [min]]: keep under TAG the line with the higher KEY (default img_s_per_worker; min: lower)
  local tag=$1 line=$2 key=${3:-img_s_per_worker} dir=${4:-max} old new
  old=$(sed -n "s/^$tag .*$key=\([0-9.e+-]*\).*/\1/p" "$res")
  new=$(sed -n "s/.*$key=\([0-9.e+-]*\).*/\1/p" <<<"$line")
  [ -n "$new" ] || return 0
  if [ -z "$old" ] || awk -v a="$new" -v b="$old" -v d="$dir" 'BEGIN { exit !(d == "min" ? a < b : a > b) }'; then
    sed -i "/^$tag /d" "$res"
    echo "$tag $line" >>"$res"
  fi
}
if ! skipped loader; then
  echo "== 1. loader throughput: $batches batches of $batch after $warmup warm-up, W in {$workers}, best of $repeat"
  cat "$data/train"/*/* >/dev/null  # page cache: every pipeline reads from memory
  for w in $workers; do
    for r in $(seq "$repeat"); do
      args=(--workers "$w" --batch "$batch" --batches "$batches" --warmup "$warmup")
      l=$("$bench" --dir "$data/train" "${args[@]}"); echo "  ours       W=$w  $l"; best "ours_w$w" "$l"
      l=$("$bench" --dir "$data/train" "${args[@]}" --dct 1); echo "  ours dct   W=$w  $l"; best "oursdct_w$w" "$l"
      if [ -n "$torch_py" ]; then
        for dec in pil tvio; do
          l=$("$torch_py" launch/bench_data.py torch "$data/train" "${args[@]}" --decoder "$dec" 2>"$out/torch.err") ||
            l="failed: $(tail -n 1 "$out/torch.err")"
          echo "  torch $dec  W=$w  $l"; best "${dec}_w$w" "$l"
        done
      fi
      if [ "$deb_torch" = 1 ]; then
        l=$(/usr/bin/python3 launch/bench_data.py torch "$data/train" "${args[@]}" --decoder pil 2>/dev/null) || l=failed
        echo "  debian pil W=$w  $l"; best "debpil_w$w" "$l"
      fi
    done
  done
  ncons=$(sed -n 's/^ours_w1 .*normalize_ms_per_img=\([0-9.]*\).*/\1/p' "$res")
  note "1: ours = W loader threads (read, decode, crop/resize, flip to u8) + the consumer thread's float normalise pass (${ncons:-?} ms/img, included); PyTorch = W worker processes (RRC, flip, ToTensor, Normalize) + the main process collating. Per worker = img/s / W"
  note "1: $torch_note"
  note "1: $deb_note"
fi

# --- 2. end to end -----------------------------------------------------------------------------------------
metrics_line() {  # TAG LABEL REF METRICS.jsonl: the epoch's figures as one line
  "$py" - "$@" <<'PY'
import json, sys
label, ref, path = sys.argv[1:4]
m = json.loads(open(path).read().splitlines()[-1])
print(f"label={label.replace(' ', '_')}", f"ref={ref}" if ref else "",
      " ".join(f"{k}={m[k]}" for k in ("step_s", "data_s", "data_wait_s", "images_per_s", "gflop_per_s", "timed_steps")))
PY
}
if ! skipped e2e; then
  echo "== 2. end to end: configs/folder_resnet.cfg, $e2e_epochs epoch(s) over $data/train"
  common=(--config configs/folder_resnet.cfg --epochs "$e2e_epochs" --quiet --set net.classes=10)
  stream=(--set data.train_dir="$data/train" --set data.val_dir="$data/eval10" --set data.test_dir="$data/eval10")
  ref=(--set data.train_dir="$data/png224/train" --set data.val_dir="$data/png224/eval10" --set data.test_dir="$data/png224/eval10"
       --set data.random_resized_crop=0 --set data.resize=0)
  for r in $(seq "$e2e_repeat"); do
    for threads in 1 2; do
      # threads=1: compute on one core, the decode worker on the other (the layout of a GPU rank with its own
      # decode cores); threads=2: the decode worker shares the cores with the compute threads.
      rm -f "$out/s.jsonl" "$out/r.jsonl"
      "$trainer" "${common[@]}" "${stream[@]}" --set net.threads=$threads --set data.workers=1 --metrics "$out/s.jsonl" >/dev/null
      l=$(metrics_line "threads=$threads workers=1: streaming JPEG" "e2e_t${threads}b" "$out/s.jsonl")
      echo "  $l"; best "e2e_t${threads}a" "$l" step_s min
      "$trainer" "${common[@]}" "${ref[@]}" --set net.threads=$threads --set data.workers=1 --set data.prefetch=8 --metrics "$out/r.jsonl" >/dev/null
      l=$(metrics_line "threads=$threads workers=1: reference (pre-decoded)" "" "$out/r.jsonl")
      echo "  $l"; best "e2e_t${threads}b" "$l" step_s min
    done
  done
  note "2: streaming = the JPEG folder, random_resized_crop=1 + flip, workers=1, prefetch=4 (the config's). reference (\"pre-decoded\") = the same images resized once to 224x224 and stored as uncompressed PNG (zlib level 0), random_resized_crop=0, resize=0: the loader's work per image is a file read and a copy (no JPEG decode, no resampling), workers=1, prefetch=8. Same model, batch, steps; flip and normalise run in the gather in both. step_s and data_s (the step's data phase: wait + copy to the staging buffer) are means over every step of the epoch, the first included; data_wait_s is the epoch's total loader wait over its steps, and the trainer counts the epoch's evaluation batches in it (src/train.c), so evaluation here is on eval10 (one val image per class) to keep that out of the figure"
fi

# --- 3. resident memory ------------------------------------------------------------------------------------
if ! skipped rss; then
  echo "== 3. max RSS at {$rss_sizes} listed images, --steps $rss_steps"
  # shellcheck disable=SC2086
  "$py" launch/bench_data.py lists "$data" $rss_sizes >/dev/null
  for n in $rss_sizes; do
    /usr/bin/time -v "$trainer" --config configs/folder_resnet.cfg --quiet --steps "$rss_steps" --set net.classes=10 \
      --set data.format=list \
      --set data.train_list="$data/list_$n.txt" --set data.test_list="$data/list_val.txt" \
      --set data.workers=1 >/dev/null 2>"$out/time_$n.txt"
    kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$out/time_$n.txt")
    echo "rss_$n kb=$kb steps=$rss_steps" >>"$res"
    echo "  $n images: max RSS $kb KiB"
  done
  note "3: trainer --steps $rss_steps (batch 32, eval_batch 64, workers=1, prefetch=4) on list files that repeat the training paths, test_list = the 200 val images; max RSS of the process from /usr/bin/time -v. Most of it is the model's activation buffers for the training and evaluation batches; the loader's ring is (prefetch + 1) x 32 x 150 KB = 24 MB"
fi

# our children's CPU seconds (user + system) from `times`, against the machine's
times >"$out/times"  # in this shell: a subshell's `times` would not see the children
ours=$(tail -n 1 "$out/times" | awk '{ for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } print s }')
awk -v b0="$busy0" -v b1="$(cpu_busy)" -v w0="$wall0" -v w1="$(date +%s.%N)" -v o="$ours" -v n="$(nproc)" 'BEGIN {
  other = (b1 - b0 - o) / (w1 - w0); if (other < 0) other = 0
  printf "meta quiet %.0f s wall; other processes used %.2f of %d cores on average during it%s\n", w1 - w0, other, n,
         (other > 0.1) ? " -- NOT QUIET: the figures are skewed, run again" : "" }' >>"$res"
"$py" launch/bench_data.py report "$res"
