#!/usr/bin/env bash
# needs: mpi
# cli_speedrun.sh — launch/speedrun.sh: the first epoch reaching the target is reported with its training time
# (exit 0), an unreachable target exits 1 with the best accuracy, bad arguments exit 2; speedrun.json holds the
# summary. Run by ctest: cli_speedrun.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
make_tmp
fail() { echo "FAIL: $*"; exit 1; }
small=(-- --threads 1 --set data.train_limit=1280 --set data.test_limit=300 --quiet)
run() { TRAINER=$trainer bash "$src/launch/speedrun.sh" --config "$src/configs/fashion_mnist_cnn.cfg" --backend cpu "$@"; }

run --epochs 2 --target 0.3 --out "$tmp/a" "${small[@]}" >"$tmp/log" 2>&1 || { cat "$tmp/log"; fail "reachable target: exit $?"; }
grep -q "target 0.3: reached at epoch 1 after" "$tmp/log" || { cat "$tmp/log"; fail "no 'reached at epoch 1' line"; }
python3 -c "import json,sys; s=json.load(open(sys.argv[1])); assert s['reached']['epoch']==1 and s['epochs']==2 and s['best']['test_acc']>0.3, s" \
  "$tmp/a/speedrun.json" || fail "speedrun.json"
run --epochs 1 --target 1.0 --out "$tmp/b" "${small[@]}" >"$tmp/log" 2>&1
[ $? -eq 1 ] || { cat "$tmp/log"; fail "unreachable target: want exit 1"; }
grep -q "not reached in 1 epochs" "$tmp/log" && grep -q "best test acc" "$tmp/log" || { cat "$tmp/log"; fail "no 'not reached' report"; }
for bad in "--target 0" "--target x" "--config /nonexistent.cfg" "--bogus"; do
  # shellcheck disable=SC2086
  run $bad >"$tmp/log" 2>&1
  [ $? -eq 2 ] || { cat "$tmp/log"; fail "$bad: want exit 2"; }
done
echo "PASS: speedrun.sh reports time to target, exit 0/1/2"
