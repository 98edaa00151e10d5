#!/usr/bin/env bash
# cli_log.sh — logs that read well in a cluster job: with stdout not a terminal (a file, as in a Slurm log), a
# progress line every --log-every seconds with step, loss, img/s and ETA; the epoch line short, the step-time
# breakdown only with --verbose; a bad --log-every is exit 2. Run by ctest: cli_log.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
make_tmp
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; sed 's/^/    | /' "$tmp/out" | head -12; fails=$((fails + 1)); fi; }
args=(--config "$src/configs/fashion_mnist_cnn.cfg" --epochs 2 --threads 1 --set data.train_limit=6400
      --set data.test_limit=500)

timeout 120 "$trainer" "${args[@]}" --log-every 0.3 >"$tmp/out" 2>&1
check "exit 0" '[ $? -eq 0 ]'
check "progress lines with step, loss, img/s and ETA" \
  'grep -Eq "^  step [0-9]+ \(epoch [12]/2, [0-9]+/100\) loss [0-9.]+ [0-9]+ img/s ETA [0-9hms]+$" "$tmp/out"'
check "short epoch lines (no breakdown)" \
  '[ "$(grep -c "^epoch [12]/2  loss" "$tmp/out")" -eq 2 ] && ! grep -q "fwd" "$tmp/out"'
echo "excerpt:"; grep -E "^(  step|epoch)" "$tmp/out" | head -4 | sed 's/^/    /'

timeout 120 "$trainer" "${args[@]}" --log-every 0 --verbose >"$tmp/out" 2>&1
check "--log-every 0: no progress lines; --verbose: the breakdown under each epoch" \
  '! grep -q "ETA" "$tmp/out" && [ "$(grep -c "^  step .* ms: fwd .* efficiency" "$tmp/out")" -eq 2 ]'

timeout 30 "$trainer" "${args[@]}" --log-every x >"$tmp/out" 2>&1
check "--log-every x: exit 2, one line" '[ $? -eq 2 ] && [ "$(wc -l <"$tmp/out")" -eq 1 ] && grep -q "log-every" "$tmp/out"'
echo "$((3 + 1 + 1 - fails)) passed, $fails failed"
[ "$fails" -eq 0 ]
