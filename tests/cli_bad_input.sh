#!/usr/bin/env bash
# cli_bad_input.sh — every class of bad input gets exit code 2 and ONE line on stderr naming the file/field,
# and leaves no partial output behind. Run by ctest: cli_bad_input.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
make_tmp

# expect_error NAME WANT_IN_MESSAGE -- args...
expect_error() {
  local name=$1 want=$2; shift 3
  "$trainer" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$? lines
  lines=$(wc -l <"$tmp/err")
  if [ "$rc" -eq 2 ] && [ "$lines" -eq 1 ] && grep -qF -- "$want" "$tmp/err"; then
    passes=$((passes + 1))
  else
    fails=$((fails + 1))
    echo "FAIL $name: exit $rc (want 2), $lines stderr line(s) (want 1) containing '$want':"
    sed 's/^/    /' "$tmp/err"
  fi
}

# A small valid data set and config to break one piece at a time.
python3 - "$tmp" <<'PY'
import gzip, struct, sys, random
d = sys.argv[1]; random.seed(1)
def pair(prefix, n):
    img = struct.pack(">IIII", 0x803, n, 28, 28) + bytes(random.randrange(256) for _ in range(n * 784))
    lab = struct.pack(">II", 0x801, n) + bytes(random.randrange(10) for _ in range(n))
    open(f"{d}/{prefix}-images.idx", "wb").write(img)
    open(f"{d}/{prefix}-labels.idx", "wb").write(lab)
    gzip.open(f"{d}/{prefix}-images.idx.gz", "wb").write(img)
pair("train", 64); pair("test", 32)
PY
cat >"$tmp/good.cfg" <<CFG
[net]
batch=16
epochs=1
channels=1
height=28
width=28
threads=1
[data]
train_images=$tmp/train-images.idx
train_labels=$tmp/train-labels.idx
test_images=$tmp/test-images.idx
test_labels=$tmp/test-labels.idx
[conv]
filters=4
[maxpool]
[dense]
units=10
[softmax]
CFG
"$trainer" --config "$tmp/good.cfg" --quiet >/dev/null 2>"$tmp/err" || { echo "good config failed:"; cat "$tmp/err"; exit 1; }

# ---- CLI
expect_error no-config "--config" -- --epochs 1
expect_error unknown-option "--bogus" -- --config "$tmp/good.cfg" --bogus
expect_error bad-epochs "epochs" -- --config "$tmp/good.cfg" --epochs abc
expect_error bad-batch "batch" -- --config "$tmp/good.cfg" --batch 0
expect_error bad-lr "lr" -- --config "$tmp/good.cfg" --lr -1
expect_error bad-set-key "nosuchkey" -- --config "$tmp/good.cfg" --set net.nosuchkey=1
expect_error bad-set-section "nolayer" -- --config "$tmp/good.cfg" --set nolayer.units=3
expect_error bad-steps "--steps" -- --config "$tmp/good.cfg" --steps x
expect_error missing-value "--config" -- --config

# ---- config files
expect_error missing-config "nope.cfg" -- --config "$tmp/nope.cfg"
sed 's/^filters=4/filtres=4/' "$tmp/good.cfg" >"$tmp/typo.cfg"
expect_error unknown-key "filtres" -- --config "$tmp/typo.cfg"
sed 's/^\[maxpool\]/[maxpooling]/' "$tmp/good.cfg" >"$tmp/sect.cfg"
expect_error unknown-section "maxpooling" -- --config "$tmp/sect.cfg"
sed 's/^height=28/height=2/' "$tmp/good.cfg" >"$tmp/shape.cfg"
expect_error impossible-shape "shape.cfg" -- --config "$tmp/shape.cfg"
sed 's/^units=10/units=7/' "$tmp/good.cfg" >"$tmp/units.cfg"
expect_error units-vs-classes "units.cfg" -- --config "$tmp/units.cfg"
# Layer kinds [shortcut], [route], [dropout], [avgpool]: references and shapes (file:line, section and key named)
sed 's/^\[dense\]/[shortcut]\nfrom=-2\n[dense]/' "$tmp/good.cfg" >"$tmp/sc_shape.cfg"
expect_error shortcut-shape "sc_shape.cfg:16: [shortcut] 'shortcut1': from: layer 0 ('conv1') gives 4x26x26" -- --config "$tmp/sc_shape.cfg"
sed 's/^\[dense\]/[shortcut]\nfrom=3\n[dense]/' "$tmp/good.cfg" >"$tmp/sc_fwd.cfg"
expect_error shortcut-forward "sc_fwd.cfg:16: [shortcut] 'shortcut1': from: 3 does not name an earlier layer" -- --config "$tmp/sc_fwd.cfg"
sed 's/^\[dense\]/[route]\nlayers=-2,-1\n[dense]/' "$tmp/good.cfg" >"$tmp/rt_shape.cfg"
expect_error route-shape "rt_shape.cfg:16: [route] 'route1': layers: layer 0 ('conv1') gives 4x26x26, layer 1 ('pool1') 4x13x13" -- --config "$tmp/rt_shape.cfg"
sed 's/^\[dense\]/[dropout]\nrate=1\n[dense]/' "$tmp/good.cfg" >"$tmp/dr_one.cfg"
expect_error dropout-rate-1 "dr_one.cfg:16: [dropout] 'drop1': rate: 1 is outside [0, 1)" -- --config "$tmp/dr_one.cfg"
sed 's/^\[dense\]/[dropout]\nrate=-0.5\n[dense]/' "$tmp/good.cfg" >"$tmp/dr_neg.cfg"
expect_error dropout-rate-negative "dr_neg.cfg:17: [dropout] drop1.rate: '-0.5' is not a number in [0, 1]" -- --config "$tmp/dr_neg.cfg"
sed 's/^\[dense\]/[avgpool]\nsize=14\n[dense]/' "$tmp/good.cfg" >"$tmp/ap_size.cfg"
expect_error avgpool-size "ap_size.cfg:16: [avgpool] 'avgpool1': size: impossible shape: window 14 on a 13x13 input" -- --config "$tmp/ap_size.cfg"
printf 'garbage line\n' >"$tmp/garbage.cfg"
expect_error not-ini "garbage.cfg" -- --config "$tmp/garbage.cfg"

# ---- [data] augmentation (file, section [data] and key named)
sed 's/^test_labels=.*/&\ncrop_pad=-1/' "$tmp/good.cfg" >"$tmp/cropneg.cfg"
expect_error aug-crop-negative "cropneg.cfg:13: data.crop_pad" -- --config "$tmp/cropneg.cfg"
expect_error aug-crop-too-big "[data] crop_pad=28 must be smaller than the image (28x28)" -- --config "$tmp/good.cfg" --set data.crop_pad=28
expect_error aug-flip "data.flip: '2' is not an integer in [0, 1]" -- --config "$tmp/good.cfg" --set data.flip=2
expect_error aug-normalize "data.normalize" -- --config "$tmp/good.cfg" --set data.normalize=yes
expect_error aug-std-zero "good.cfg: [data] std: 0 (channel 0) must be > 0" -- --config "$tmp/good.cfg" --set data.normalize=1 --set data.mean=0.5 --set data.std=0
expect_error aug-std-count "good.cfg: [data] std='1,1' has more than 1 value(s)" -- --config "$tmp/good.cfg" --set data.normalize=1 --set data.mean=0.5 --set data.std=1,1
expect_error aug-mean-count "good.cfg: [data] mean='0.5,0.5' has more than 1 value(s): net.channels=1 wants one per channel" -- --config "$tmp/good.cfg" --set data.normalize=1 --set data.mean=0.5,0.5 --set data.std=1
expect_error aug-mean-alone "[data] mean is given without std" -- --config "$tmp/good.cfg" --set data.normalize=1 --set data.mean=0.5
expect_error aug-unknown-key "unknown key 'crop' in [data]" -- --config "$tmp/good.cfg" --set data.crop=2

# ---- data files
expect_error missing-data "missing.idx" -- --config "$tmp/good.cfg" --set data.train_images="$tmp/missing.idx"
head -c 5000 "$tmp/train-images.idx" >"$tmp/trunc.idx"
expect_error truncated-idx "trunc.idx" -- --config "$tmp/good.cfg" --set data.train_images="$tmp/trunc.idx"
cp "$tmp/train-images.idx" "$tmp/trail.idx"; printf 'x' >>"$tmp/trail.idx"
expect_error trailing-bytes "trail.idx" -- --config "$tmp/good.cfg" --set data.train_images="$tmp/trail.idx"
head -c 3000 "$tmp/train-images.idx.gz" >"$tmp/trunc.idx.gz"
expect_error truncated-gz "trunc.idx.gz" -- --config "$tmp/good.cfg" --set data.train_images="$tmp/trunc.idx.gz"
printf '\x00\x00\x08\x01\x00\x00\x00\x40' >"$tmp/badmagic.idx"; head -c 64 /dev/zero >>"$tmp/badmagic.idx"
expect_error wrong-magic "badmagic.idx" -- --config "$tmp/good.cfg" --set data.train_images="$tmp/badmagic.idx"
expect_error count-mismatch "test-labels.idx" -- --config "$tmp/good.cfg" --set data.train_labels="$tmp/test-labels.idx"
expect_error shape-mismatch "height" -- --config "$tmp/good.cfg" --set net.height=32 --set net.width=32

# ---- checkpoints and outputs
head -c 100 /dev/urandom >"$tmp/garbage.safetensors"
expect_error garbage-checkpoint "garbage.safetensors" -- --config "$tmp/good.cfg" --resume "$tmp/garbage.safetensors"
expect_error missing-checkpoint "none.safetensors" -- --config "$tmp/good.cfg" --resume "$tmp/none.safetensors"
expect_error metrics-dir "nodir" -- --config "$tmp/good.cfg" --metrics "$tmp/nodir/m.jsonl"
expect_error baseline-missing "nobase.jsonl" -- --config "$tmp/good.cfg" --baseline "$tmp/nobase.jsonl"
# Buckets may use all request slots but the COMM_RESERVED_REQS (8) kept for sync batch norm's all-reduces.
if [ -f "$data/train-images-idx3-ubyte.gz" ]; then
  expect_error too-many-buckets "(at most 248)" -- --config "$src/configs/fashion_mnist_cnn.cfg" --bucket-kb 1 --set data.train_limit=64
fi

# No partial outputs left behind by the failed runs.
if ls "$tmp"/*.tmp.* >/dev/null 2>&1; then echo "FAIL: temp files left: $(ls "$tmp"/*.tmp.*)"; fails=$((fails + 1)); fi

finish
