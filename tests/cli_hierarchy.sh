#!/usr/bin/env bash
# needs: mpi
# cli_hierarchy.sh — parallel.hierarchy (docs/parallelism.md "Hierarchical all-reduce") on one host, its nodes made
# by the test hook DDP_TEST_FAKE_NODES=N (node k: ranks [k*np/N, (k+1)*np/N)):
#   * np 4 as 2 nodes x 2 ranks: hierarchy=node says so at start-up, passes the end-of-epoch replica check and
#     ends with parameters equal to flat's within max relative difference |a - b| / max(|a|, 1e-2) < 1e-4 (SGD,
#     one epoch of 32 steps: flat's ring and node's reduce-to-leader add in different orders, and 32 steps carry
#     those last-bit differences to ~2e-5; test_ddp's 1e-5 is for one order against another at np 2 vs np 1);
#   * hierarchy=auto there picks node; with compress=bf16, node passes the replica check, test loss within 0.05;
#   * uneven nodes (np 3 as 2 + 1 ranks) train as flat does;
#   * the notes: hierarchy=node at np 2 without the hook (one node) and with one rank per node run flat and say so;
#   * bad input: parallel.hierarchy=ring is exit 2 naming the key.
# Run by ctest: cli_hierarchy.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
need_mpirun
need_tool
make_tmp

small_cnn_cfg "$tmp/plain.cfg" "optimizer=sgd
lr=0.05"

# runp NP FAKE NAME ARGS...: an NP-rank run (FAKE: DDP_TEST_FAKE_NODES, 0 for none), checkpoint $tmp/NAME.st,
# metrics $tmp/NAME.jsonl, stdout $tmp/NAME.out; rc is its exit code.
runp() {
  local np=$1 fake=$2 name=$3
  shift 3
  local env=()
  [ "$fake" -gt 0 ] && env=(env DDP_TEST_FAKE_NODES="$fake")
  timeout -k 5 300 "${env[@]}" "${mpi[@]}" -np "$np" "$trainer" --config "$tmp/plain.cfg" --save "$tmp/$name.st" \
    --metrics "$tmp/$name.jsonl" "$@" >"$tmp/$name.out" 2>"$tmp/err"
  rc=$?
}
fig() { grep -o "\"$2\":[^,}]*" "$tmp/$1.jsonl" | tail -1 | cut -d: -f2; }
close() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= t) }'; }
# the largest relative parameter difference, |a - b| / max(|a|, 1e-2), as tests/test_ddp.c measures np 2 vs np 1
reldiff() { "$tool" reldiff "$tmp/$1.st" "$tmp/$2.st" | cut -d' ' -f1; }
# same_as_flat NAME FLAT WHAT: NAME's parameters within the tolerance of FLAT's
same_as_flat() {
  local d
  d=$(reldiff "$1" "$2")
  if awk -v a="$d" 'BEGIN { exit !(a < 1e-4) }'; then ok "$3: parameters equal to flat's (max relative difference $d < 1e-4)"
  else bad "$3: max relative difference from flat '$d' (want < 1e-4)"; fi
}

# ---- np 4 as 2 nodes x 2 ranks
line='hierarchy: node (2 nodes x 2 ranks; leaders all-reduce across nodes; fake nodes: a test hook)'
runp 4 2 flat4
if [ "$rc" -ne 0 ]; then bad "np 4 flat: exit $rc"
elif grep -q "hierarchy" "$tmp/flat4.out"; then bad "np 4 flat printed a hierarchy line"
else ok "np 4 flat: exit 0, no hierarchy line"; fi
runp 4 2 node4 --set parallel.hierarchy=node
if [ "$rc" -ne 0 ]; then bad "np 4 hierarchy=node: exit $rc (the replica check fails with exit 1)"
elif ! grep -qxF "$line" "$tmp/node4.out"; then bad "np 4 hierarchy=node: no line '$line' in: $(head -3 "$tmp/node4.out")"
else ok "np 4, 2 fake nodes: '$line', replica check passed"; same_as_flat node4 flat4 "np 4 hierarchy=node"; fi
runp 4 2 auto4 --set parallel.hierarchy=auto
if [ "$rc" -eq 0 ] && grep -qF "hierarchy: node (2 nodes x 2 ranks; leaders all-reduce across nodes; auto;" "$tmp/auto4.out"; then
  ok "np 4 hierarchy=auto: picks node"
else bad "np 4 hierarchy=auto: exit $rc, $(grep hierarchy "$tmp/auto4.out")"; fi
runp 4 2 bf16 --set parallel.hierarchy=node --set parallel.compress=bf16
l=$(fig bf16 test_loss) l0=$(fig flat4 test_loss)
if [ "$rc" -ne 0 ]; then bad "np 4 hierarchy=node compress=bf16: exit $rc"
elif ! grep -qxF "$line" "$tmp/bf16.out"; then bad "np 4 hierarchy=node compress=bf16: no hierarchy line"
elif ! close "$l" "$l0" 0.05; then bad "np 4 hierarchy=node compress=bf16: test loss $l, flat float32's $l0 (want within 0.05)"
else ok "np 4 hierarchy=node compress=bf16: replica check passed, test loss $l (flat float32: $l0)"; fi

# ---- uneven nodes: np 3 as ranks 0-1 and 2
runp 3 2 flat3
rc_flat=$rc
runp 3 2 node3 --set parallel.hierarchy=node
if [ "$rc_flat" -ne 0 ] || [ "$rc" -ne 0 ]; then bad "np 3 uneven nodes: exit $rc_flat (flat), $rc (node)"
elif ! grep -qF "hierarchy: node (2 nodes of 1 to 2 ranks;" "$tmp/node3.out"; then bad "np 3 uneven: $(grep hierarchy "$tmp/node3.out")"
else ok "np 3 as 2 + 1 ranks: hierarchy=node runs"; same_as_flat node3 flat3 "np 3 uneven hierarchy=node"; fi

# ---- notes: flat all-reduce where grouping by node has nothing to group
runp 2 0 one_node --set parallel.hierarchy=node
if [ "$rc" -eq 0 ] && grep -qxF "hierarchy=node with all ranks on one node: flat all-reduce" "$tmp/one_node.out"; then
  ok "np 2 on one host (no hook): the note, flat, exit 0"
else bad "np 2 on one host, hierarchy=node: exit $rc, $(grep hierarchy "$tmp/one_node.out")"; fi
runp 2 2 one_per_node --set parallel.hierarchy=node
if [ "$rc" -eq 0 ] && grep -qF "hierarchy=node with one rank per node: flat all-reduce" "$tmp/one_per_node.out"; then
  ok "np 2 as 2 nodes of 1 rank: the note, flat, exit 0"
else bad "np 2, one rank per node, hierarchy=node: exit $rc, $(grep hierarchy "$tmp/one_per_node.out")"; fi

# ---- bad input
runp 1 0 bad --set parallel.hierarchy=ring
if [ "$rc" -eq 2 ] && grep -q "hierarchy" "$tmp/err"; then ok "hierarchy=ring: exit 2 naming the key"
else bad "hierarchy=ring: exit $rc: $(head -2 "$tmp/err")"; fi

finish cli_hierarchy
