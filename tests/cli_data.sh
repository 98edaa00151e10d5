#!/usr/bin/env bash
# cli_data.sh — your own images (data.format=folder|list, src/train_stream.c): Fashion-MNIST written as PNG
# ImageFolder trees and list files trains bit for bit as the IDX path with the same samples in the same order
# (crop and flip drawn by the loader's workers equal the gather's) at np 1 and np 2; any worker count, a
# mid-epoch resume and a validation split; --eval names the classes; bad input exits 2 naming the file and the
# reason. Prints the measured figures. Run by ctest: cli_data.sh TRAINER SOURCE_DIR BINARY_DIR
# needs: mpi
. "$(dirname "$0")/testlib.sh" "$@"
need_data
need_tool
make_tmp --cd
python3 "$src/tests/make_images.py" fmnist "$data" img 384 192 || { echo "FAIL: make_images.py"; exit 1; }
for s in train test; do  # the same samples as tar shards of 100 (launch/make_shards.py keeps the folder's order)
  python3 "$src/launch/make_shards.py" --folder img/$s --out "img/sh/$s-%06d.tar" --maxcount 100 >/dev/null ||
    { echo "FAIL: make_shards.py"; exit 1; }
done
cfg=$src/configs/fashion_mnist_cnn.cfg
base=(--config "$cfg" --epochs 1 --threads 1 --set net.batch=32 --set data.crop_pad=2 --set data.flip=1
  --set data.normalize=1 --set data.mean=0.286 --set data.std=0.353)
idx=(--set data.train_images=img/train-images-idx3-ubyte --set data.train_labels=img/train-labels-idx1-ubyte
  --set data.test_images=img/test-images-idx3-ubyte --set data.test_labels=img/test-labels-idx1-ubyte)
folder=(--set data.format=folder --set data.train_dir=img/train --set data.test_dir=img/test)
list=(--set data.format=list --set data.train_list=img/train.txt --set data.test_list=img/test.txt)
shards=(--set data.format=shards --set "data.train_shards=img/sh/train-{000000..000003}.tar"
  --set "data.test_shards=img/sh/test-{000000..000001}.tar" --set data.names=img/sh/names.txt)
line() { grep -m1 "^epoch 1/" "$1" | sed 's/ | [0-9.]* s .*//'; }

expect2() {  # expect2 NAME TEXT ARGS...: exit 2 and TEXT in the message
  local name=$1 text=$2
  shift 2
  local t0
  t0=$(now)
  run "$@"
  local rc=$?
  if [ "$rc" -eq 2 ] && has "$text"; then
    ok "$name: exit 2 in $(since "$t0") s: $(grep -m1 -i 'error' "$tmp/err" | cut -c1-150)"
  else
    bad "$name: exit $rc, want 2 and '$text'"
  fi
}

# ---- the same samples, three formats: bit-identical weights (np 1, np 2)
for np in 1 2; do
  launch=()
  [ "$np" -gt 1 ] && { need_mpirun; launch=("${mpi[@]}" -np "$np"); }
  for fmt in idx folder list shards; do
    declare -n extra=$fmt
    if timeout -k 2 300 "${launch[@]}" "$trainer" "${base[@]}" "${extra[@]}" --save "$fmt$np.safetensors" \
      >"$tmp/out" 2>"$tmp/err"; then
      cat "$tmp/out" "$tmp/err" >"$fmt$np.log"
    else
      bad "np $np format=$fmt: exit $?"
    fi
  done
  for fmt in folder list shards; do
    if "$tool" same "idx$np.safetensors" "$fmt$np.safetensors" >/dev/null 2>&1; then
      ok "np $np: format=$fmt trains bit-identically to the IDX path ($(line "$fmt$np.log"))"
    else
      bad "np $np: format=$fmt differs from the IDX path: $(line "$fmt$np.log") vs $(line "idx$np.log")"
    fi
  done
done

# ---- any number of decode threads, and a deep prefetch: the same batches
if run "${base[@]}" "${folder[@]}" --set data.workers=3 --set data.prefetch=5 --save w3.safetensors &&
  "$tool" same folder1.safetensors w3.safetensors >/dev/null; then
  ok "data.workers=3 prefetch=5 gives the same weights as the default"
else
  bad "workers=3 differs"
fi

# ---- a mid-epoch resume is bit-identical to the uninterrupted run
if run "${base[@]}" "${folder[@]}" --steps 5 --save part.safetensors &&
  run "${base[@]}" "${folder[@]}" --resume part.safetensors --save part.safetensors &&
  "$tool" same folder1.safetensors part.safetensors >/dev/null; then
  ok "stopped at step 5 of 12 and resumed: the same weights as one run"
else
  bad "mid-epoch resume differs"
fi

# ---- shards through a shuffle buffer (shards split over ranks, read in order): any workers, a mid-epoch resume
buf=("${base[@]}" "${shards[@]}" --set data.shuffle_buffer=64)
if run "${buf[@]}" --save sb.safetensors && run "${buf[@]}" --set data.workers=3 --save sb3.safetensors &&
  "$tool" same sb.safetensors sb3.safetensors >/dev/null && run "${buf[@]}" --steps 7 --save sbp.safetensors &&
  run "${buf[@]}" --resume sbp.safetensors --save sbp.safetensors && "$tool" same sb.safetensors sbp.safetensors >/dev/null &&
  ! "$tool" same sb.safetensors shards1.safetensors >/dev/null 2>&1; then
  ok "shards, shuffle_buffer=64: workers 1 == 3, resumed at step 7 == one run, another order than the permutation"
else
  bad "shards with a shuffle buffer"
fi
if timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" "${buf[@]}" >"$tmp/out" 2>"$tmp/err" &&
  [ "$(grep -c 'read 192 training image files' "$tmp/out")" -eq 2 ]; then
  ok "np 2, shuffle_buffer=64: each rank read its shards: $(grep -o 'rank [0-9] ([^)]*) read [0-9]* training image files ([0-9]* distinct)' "$tmp/out" | tr '\n' ';')"
else
  bad "np 2 shards with a shuffle buffer: $(grep 'read' "$tmp/out" | tr '\n' ' ')"
fi

# ---- --eval: the checkpoint's class names, and its test figures again
if run --eval folder1.safetensors --threads 1 && grep -q "  0 c0: " "$tmp/out" && grep -q "identical" "$tmp/out"; then
  ok "--eval of a folder checkpoint: class names and the epoch's test figures, bit for bit"
else
  bad "--eval of the folder checkpoint: $(head -3 "$tmp/out" | tr '\n' ' ')"
fi

# ---- --predict on image files, a folder and a list file: path,class,class_name,probability,p0..p9
if run --predict folder1.safetensors --threads 1 --images img/test/c0/"$(ls img/test/c0 | head -1)" --images img/test/c1 \
  --images img/test.txt --out pred.csv; then
  rows=$(($(wc -l <pred.csv) - 1)) want=$((1 + $(ls img/test/c1 | wc -l) + 192))
  if [ "$rows" -eq "$want" ] && head -1 pred.csv | grep -q '^path,class,class_name,probability,p0,' &&
    sed -n 2p pred.csv | grep -q '^img/test/c0/.*png,[0-9],c[0-9],0\.'; then
    ok "--predict on a file, a folder and a list: $rows rows, e.g. $(sed -n 2p pred.csv | cut -d, -f1-4)"
  else
    bad "--predict rows: $rows (want $want): $(head -2 pred.csv | tr '\n' ' ')"
  fi
else
  bad "--predict on image files"
fi

# ---- JPEG: a folder of JPEGs (libjpeg-turbo's cjpeg from the PGMs) trains; a truncated one is refused
if command -v cjpeg >/dev/null; then
  for d in c0 c1; do
    mkdir -p jpg/$d
    for f in $(ls img/train/$d | head -8); do
      python3 -c "import sys,zlib,struct
d=open(sys.argv[1],'rb').read(); w,h=struct.unpack('>II',d[16:24]); i=d.index(b'IDAT'); n=struct.unpack('>I',d[i-4:i])[0]
raw=zlib.decompress(d[i+4:i+4+n]); px=b''.join(raw[y*(w+1)+1:(y+1)*(w+1)] for y in range(h))
sys.stdout.buffer.write(b'P5 %d %d 255\n'%(w,h)+px)" "img/train/$d/$f" | cjpeg -quality 90 >"jpg/$d/${f%.png}.jpg"
    done
  done
  if run --config "$cfg" --epochs 1 --threads 1 --set net.batch=4 --set net.classes=2 --set dense2.units=2 \
    --set data.format=folder --set data.train_dir=jpg --set data.test_dir=jpg; then
    ok "a folder of JPEGs trains: $(grep '^epoch 1/1' "$tmp/out" | cut -c1-60)"
  else
    bad "JPEG folder"
  fi
  j=$(find jpg/c1 -name '*.jpg' | sort | head -1)
  head -c 300 "$j" >t.jpg && mv t.jpg "$j"
  expect2 "truncated JPEG" "$j" --config "$cfg" --epochs 1 --threads 1 --set net.batch=4 --set net.classes=2 \
    --set dense2.units=2 --set data.format=folder --set data.train_dir=jpg --set data.test_dir=jpg
else
  bad "cjpeg missing (launch/deps.sh installs libjpeg-turbo-progs)"
fi

# ---- validation: held out by val_fraction; epochs report it, the test set is measured at the end
if run "${base[@]}" "${folder[@]}" --set data.val_fraction=0.25 --epochs 2 && grep -q "^epoch 2/2 .*| val loss" "$tmp/out" &&
  grep -q "^final test: loss" "$tmp/out"; then
  ok "val_fraction=0.25: $(grep -m1 '^data:' "$tmp/out" | cut -c1-110)...; $(grep '^final test' "$tmp/out")"
else
  bad "val_fraction"
fi

# ---- bad input: exit 2, one line naming the file and the reason
cp -r img/test bad
tfolder() { echo --set data.format=folder --set data.train_dir="$1" --set data.test_dir=img/test; }
reset_bad() { rm -rf bad; cp -r img/test bad; }
f0=$(find bad/c0 -name '*.png' | sort | head -1)
head -c 200 "$f0" >t.png && mv t.png "$f0"
# shellcheck disable=SC2046
expect2 "truncated PNG" "$f0" "${base[@]}" $(tfolder bad)
reset_bad
echo "this is not an image" >"$f0"
# shellcheck disable=SC2046
expect2 "a text file named .png" "not a JPEG or PNG" "${base[@]}" $(tfolder bad)
reset_bad
python3 "$src/tests/make_images.py" png "$f0" 20000 20000 1 --bad bomb
# shellcheck disable=SC2046
expect2 "a 20000x20000 PNG (decompression bomb)" "max_pixels" "${base[@]}" $(tfolder bad)
reset_bad
rm -f bad/c3/*.png
# shellcheck disable=SC2046
expect2 "an empty class directory" "bad/c3" "${base[@]}" $(tfolder bad)
reset_bad
mkfifo bad/c1/fifo.png
# shellcheck disable=SC2046
expect2 "a FIFO named .png" "fifo.png" "${base[@]}" $(tfolder bad)
reset_bad
ln -s .. bad/c2/loop
# shellcheck disable=SC2046
expect2 "a directory symlink loop" "loop" "${base[@]}" $(tfolder bad)
reset_bad
mkdir -p empty
expect2 "no images at all" "empty" "${base[@]}" --set data.format=folder --set data.train_dir=empty --set data.test_dir=img/test
mkdir -p val2/c0 val2/zz && cp img/test/c0/*.png val2/c0/ && cp img/test/c1/*.png val2/zz/
expect2 "a class in val but not in train" "zz" "${base[@]}" "${folder[@]}" --set data.val_dir=val2
sed '3s/ [0-9]*$/ 12/' img/train.txt >img/bad_label.txt
expect2 "a label out of range in a list" "bad_label.txt:3" "${base[@]}" "${list[@]}" --set data.train_list=img/bad_label.txt
sed '4s/^train/missing/' img/train.txt >img/missing.txt
expect2 "a missing file in a list" "missing" "${base[@]}" "${list[@]}" --set data.train_list=img/missing.txt
expect2 "net.classes differs from the class directories" "net.classes=7" "${base[@]}" "${folder[@]}" --set net.classes=7 \
  --set dense2.units=7
expect2 "normalize=1 without mean/std on a streamed set" "needs data.mean" --config "$cfg" "${folder[@]}" --set data.normalize=1

# shards: a member without its label, a truncated shard
mkdir -p badsh && python3 - badsh <<'PY'
import io, sys, tarfile
def add(t, name, data):
    ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
with tarfile.open(sys.argv[1] + "/nocls-000000.tar", "w", format=tarfile.USTAR_FORMAT) as t:
    add(t, "a.png", b"x" * 10); add(t, "a.cls", b"1"); add(t, "b.png", b"y" * 10)
PY
expect2 "a tar member without its .cls" "has no 'b.cls'" "${base[@]}" "${shards[@]}" --set "data.train_shards=badsh/nocls-000000.tar"
head -c 3000 img/sh/train-000001.tar >badsh/cut-000000.tar
expect2 "a truncated tar shard" "cut-000000.tar" "${base[@]}" "${shards[@]}" --set "data.train_shards=badsh/cut-000000.tar"
mknod bad/c1/dev.png c 1 3 2>/dev/null && {
  # shellcheck disable=SC2046
  expect2 "a character device named .png" "dev.png" "${base[@]}" $(tfolder bad)
  reset_bad
}

# ---- data.skip_bad: an unreadable image is replaced, counted and reported; more than max_bad is an error
cp -r img/train skip
echo "not an image" >"$(find skip/c5 -name '*.png' | sort | head -1)"
if run "${base[@]}" --set data.format=folder --set data.train_dir=skip --set data.test_dir=img/test --set data.skip_bad=1 \
  --metrics m.jsonl && grep -q "1 unreadable image(s) skipped" "$tmp/out" && grep -q '"bad_images":1' m.jsonl; then
  ok "skip_bad=1: the bad image skipped, counted in the log and the metrics"
else
  bad "skip_bad=1"
fi
expect2 "more than data.max_bad skipped" "max_bad=0" "${base[@]}" --set data.format=folder --set data.train_dir=skip \
  --set data.test_dir=img/test --set data.skip_bad=1 --set data.max_bad=0

# ---- 100,000 classes: a list with a names file of 100,000 lines (labels up to 99,999)
seq 0 99999 | sed 's/^/class_/' >names100k.txt
{ echo "train/c0/$(ls img/train/c0 | head -1) 0"; echo "train/c1/$(ls img/train/c1 | head -1) 99999"
  echo "train/c2/$(ls img/train/c2 | head -1) 50000"; echo "train/c3/$(ls img/train/c3 | head -1) 7"; } >img/big.txt
if run --config "$cfg" --epochs 1 --threads 1 --set net.batch=4 --set net.classes=100000 --set dense2.units=100000 --bucket-kb 4096 \
  --set data.format=list --set data.train_list=img/big.txt --set data.test_list=img/big.txt --set data.names=names100k.txt \
  --save big.safetensors && run --eval big.safetensors --threads 1 && grep -q "100000 classes: no per-class table" "$tmp/out"; then
  ok "100,000 classes (a names file, labels to 99,999): trains, --eval reports without a 10^10 confusion matrix"
else
  bad "100,000 classes"
fi

# ---- 1x1 images train (resized to the input)
mkdir -p tiny/a tiny/b
for i in 0 1 2 3; do
  python3 "$src/tests/make_images.py" png "tiny/a/$i.png" 1 1 1
  python3 "$src/tests/make_images.py" png "tiny/b/$i.png" 1 1 3
done
if run --config "$cfg" --epochs 1 --threads 1 --set net.batch=2 --set net.classes=2 --set dense2.units=2 --set data.format=folder \
  --set data.train_dir=tiny --set data.test_dir=tiny --set data.resize=28; then
  ok "1x1 images (gray and RGB) train at 28x28"
else
  bad "1x1 images"
fi
finish cli_data
