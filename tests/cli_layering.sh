#!/usr/bin/env bash
# cli_layering.sh — no two source files of the trainer depend on each other, directly or around a loop: for the
# built object files of src/, comm/ and cuda/, an arrow A -> B where A calls (or reads) a symbol that B defines,
# and for the headers, A -> B where A includes B. Fails naming every cycle with the symbols that tie it; prints
# the files in layers (each calls only files of lower layers) as the evidence anyone can rerun. And the release
# trainer carries no test aid (no DDP_TEST_ string, no capture recorder): those are in trainer_test only.
#   bash tests/cli_layering.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
make_tmp
command -v nm >/dev/null || { echo "SKIP: no nm (binutils)"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: no python3"; exit 77; }
python3 - "$src" "$build" <<'PY'
import collections, os, re, subprocess, sys

src, build = sys.argv[1], sys.argv[2]
# Object files of the project's libraries and the trainer (tests, fuzzers and benchmarks are not the product).
objs = {}
for root, _, files in os.walk(build):
    rel_root = os.path.relpath(root, build)  # this tree's own objects, not those of a build tree inside it
    if not (rel_root.startswith("CMakeFiles/ddp_") or rel_root.startswith("CMakeFiles/trainer.dir")):
        continue
    for f in files:
        if f.endswith(".o"):
            path = os.path.join(root, f)
            rel = re.sub(r"^.*?\.dir/", "", path)[:-2]  # src/train.c
            objs[rel] = path
if not objs:
    print("FAIL: no object files under", build)
    sys.exit(1)

def nm(path, flags):
    out = subprocess.run(["nm", "-P", *flags, path], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}

defined = {f: nm(p, ["--defined-only", "-g"]) for f, p in objs.items()}
undefined = {f: nm(p, ["-u"]) for f, p in objs.items()}
owner = {}
for f, syms in defined.items():
    for s in syms:
        owner.setdefault(s, f)
edges = collections.defaultdict(lambda: collections.defaultdict(set))
for f, syms in undefined.items():
    for s in syms:
        g = owner.get(s)
        if g and g != f:
            edges[f][g].add(s)

# Headers: A.h -> B.h for every #include "B.h" that resolves to a header of the tree.
headers = {}
for d in ("src", "src/layers", "src/cpu", "comm", "cuda"):
    for f in os.listdir(os.path.join(src, d)):
        if f.endswith(".h"):
            headers.setdefault(f, f"{d}/{f}")
inc = collections.defaultdict(lambda: collections.defaultdict(set))
for name, rel in headers.items():
    for m in re.finditer(r'^#include "(?:\.\./)?([^"]+)"', open(os.path.join(src, rel)).read(), re.M):
        b = headers.get(os.path.basename(m.group(1)))
        if b and b != rel:
            inc[rel][b].add("#include")

def sccs(graph, nodes):  # Tarjan
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            out.append(comp)
    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index: visit(v)
    return out

bad = 0
for kind, graph, nodes in (("call", edges, objs.keys()), ("include", inc, headers.values())):
    for comp in sccs(graph, set(nodes)):
        if len(comp) < 2:
            continue
        bad += 1
        print(f"FAIL {kind} cycle among {len(comp)} files: {', '.join(sorted(comp))}")
        for a in sorted(comp):
            for b in sorted(graph[a]):
                if b in comp:
                    print(f"    {a} -> {b}: {', '.join(sorted(graph[a][b])[:8])}")

# Layers: 1 = calls no other file; each file one above the highest it calls.
layer = {}
def depth(f, seen=()):
    if f in layer: return layer[f]
    if f in seen: return 0
    layer[f] = 1 + max([depth(g, seen + (f,)) for g in edges.get(f, {})] or [0])
    return layer[f]
for f in objs: depth(f)
trainer_files = sorted((f for f in objs if f.startswith("src/train")), key=lambda f: -layer[f])
print("layers of the trainer's files (each calls only lower ones):",
      "; ".join(f"{f} {layer[f]}" for f in trainer_files))
print(f"{len(objs)} object files, {sum(len(v) for v in edges.values())} call arrows, "
      f"{len(headers)} headers: {bad} cycle(s)")
sys.exit(1 if bad else 0)
PY
rc=$?
if [ "$rc" -eq 0 ]; then ok "no call or include cycle among the trainer's files"; else fails=$((fails + 1)); fi

# Test aids out of the product: the release trainer holds no DDP_TEST_ string (nor the crash hook's variable) and
# no capture recorder; the test trainer does (so the check is not vacuous).
if command -v strings >/dev/null && [ -x "$build/trainer" ] && [ -x "$build/trainer_test" ]; then
  n_rel=$(strings "$build/trainer" | grep -c 'DDP_TEST_\|DDP_CKPT_CRASH')
  n_test=$(strings "$build/trainer_test" | grep -c 'DDP_TEST_')
  rec=$(nm "$build/trainer" 2>/dev/null | grep -c 'backend_record_wrap')
  if [ "$n_rel" -eq 0 ] && [ "$rec" -eq 0 ] && [ "$n_test" -gt 0 ]; then
    ok "release trainer: 0 DDP_TEST_ strings and no capture recorder (trainer_test: $n_test strings)"
  else
    bad "release trainer: $n_rel DDP_TEST_/crash-hook strings, $rec recorder symbols (trainer_test: $n_test)"
  fi
fi
# The release trainer trains (the suite's other whole-program tests run trainer_test), and ignores the test hooks:
# a stall that trainer_test would honour for 30 s is not one here.
if [ -x "$build/trainer" ] && [ -f "$data/train-images-idx3-ubyte.gz" ]; then
  t0=$(now)
  DDP_TEST_STALL=0:1:30 timeout 60 "$build/trainer" --config "$src/configs/fashion_mnist_cnn.cfg" --steps 4 --threads 1 \
    --set data.train_limit=256 --set data.test_limit=64 --quiet >"$tmp/out" 2>&1
  rc=$?
  secs=$(since "$t0")
  if [ "$rc" -eq 0 ] && grep -q "^done: .*4 steps in" "$tmp/out" && awk -v s="$secs" 'BEGIN { exit !(s < 20) }'; then
    ok "release trainer: 4 steps in ${secs} s, DDP_TEST_STALL ignored"
  else
    bad "release trainer run: exit $rc in ${secs} s: $(head -2 "$tmp/out")"
  fi
fi
finish layering
