#!/usr/bin/env bash
# cli_layers.sh — the layer kinds [shortcut], [route], [dropout], [avgpool] in a whole training run: configs/resnet_small.cfg (conv
# bias=0, leaky, [shortcut], [route], global [avgpool], [dropout]) trains on the CPU; the step replayed from the
# emulated CUDA graph (DDP_TEST_CPU_GRAPH=1: the dropout key read from backend memory at replay) gives the same
# parameters as op by op; a resumed run gives the same parameters as an uninterrupted one (the masks are drawn
# again from (seed, step, rank)). Small data: Fashion-MNIST with data.train_limit / data.test_limit. And the
# registry printed: the docs/config.md layer table is `trainer --list-layers --markdown`, --json is valid JSON whose
# name prefixes are the ones a config's layers get, and --json without --list-layers is exit 2.
# Run by ctest: cli_layers.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
make_tmp --cd

# ---- the registry printed (no data needed)
if run --list-layers --markdown && sed -n '/<!-- generated: trainer --list-layers --markdown/,/<!-- end of generated table -->/p' \
    "$src/docs/config.md" | sed '1d;$d' | diff - "$tmp/out" >"$tmp/err"; then
  ok "docs/config.md layer table == trainer --list-layers --markdown ($(grep -c '^| `\[' "$tmp/out") kinds)"
else
  bad "docs/config.md layer table differs from trainer --list-layers --markdown (regenerate it)"
fi
if run --list-layers --json && python3 - "$tmp/out" "$trainer" <<'PY' >"$tmp/err" 2>&1; then
import json, subprocess, sys
kinds = json.load(open(sys.argv[1]))
sections = [k["section"] for k in kinds]
assert len(kinds) >= 10 and "conv" in sections and "softmax" in sections, sections
assert all(k["doc"] and isinstance(k["keys"], list) for k in kinds)
# A config with one layer of every non-terminal kind: the names the trainer gives are <prefix>1.
ini = "[net]\nchannels=1\nheight=8\nwidth=8\nclasses=2\n" + "".join(
    f"[{k['section']}]\n" + "".join(f"{key['name']}=" + ("2" if key["type"] == "int" else "-1") + "\n"
                                    for key in k["keys"] if key["required"])
    for k in kinds if not k["terminal"] and k["section"] in ("conv", "maxpool", "dense", "dropout"))
ini += "[dense]\nunits=2\n[softmax]\n"
open("names.cfg", "w").write(ini)
out = subprocess.run([sys.argv[2], "--config", "names.cfg", "--print-config"], capture_output=True, text=True)
assert out.returncode == 0, out.stderr
names = [l[5:] for l in out.stdout.splitlines() if l.startswith("name=")]
prefix = {k["section"]: k["prefix"] for k in kinds}
want = [prefix["conv"] + "1", prefix["maxpool"] + "1", prefix["dense"] + "1", prefix["dropout"] + "1",
        prefix["dense"] + "2", "softmax"]
assert names == want, (names, want)
print(len(kinds), "kinds;", names)
PY
  ok "--list-layers --json: $(cat "$tmp/err")"
else
  bad "--list-layers --json"
fi
"$trainer" --json >/dev/null 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "for --list-layers" "$tmp/err" && ok "--json without --list-layers: exit 2" || bad "--json alone"

need_data
cfg=$src/configs/resnet_small.cfg
small=(--set data.train_limit=512 --set data.test_limit=256 --threads 1)

if run --config "$cfg" --epochs 2 "${small[@]}" --save full.safetensors && [ -s full.safetensors ]; then
  ok "resnet_small: 2 epochs: $(tail -1 "$tmp/out")"
else
  bad "resnet_small: 2 epochs (exit $?)"
fi
if DDP_TEST_CPU_GRAPH=1 run --config "$cfg" --epochs 2 "${small[@]}" --save graph.safetensors &&
   "$tool" same full.safetensors graph.safetensors >/dev/null 2>"$tmp/err"; then
  ok "graph replay (CPU emulation) == op by op, bit for bit"
else
  bad "graph replay (CPU emulation) differs from op by op"
fi
if run --config "$cfg" --epochs 1 "${small[@]}" --save half.safetensors &&
   run --config "$cfg" --epochs 2 "${small[@]}" --resume half.safetensors --save resumed.safetensors &&
   "$tool" same full.safetensors resumed.safetensors >/dev/null 2>"$tmp/err"; then
  ok "resume after epoch 1 == uninterrupted, bit for bit"
else
  bad "resume after epoch 1 differs from the uninterrupted run"
fi
# Another seed gives other parameters, so the bit-for-bit comparisons above are not vacuous.
if run --config "$cfg" --epochs 2 "${small[@]}" --set net.seed=43 --save other.safetensors &&
   ! "$tool" same full.safetensors other.safetensors >/dev/null 2>&1; then
  ok "another seed gives other parameters"
else
  bad "another seed gave the same parameters"
fi
finish
