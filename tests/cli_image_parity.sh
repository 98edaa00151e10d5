#!/usr/bin/env bash
# cli_image_parity.sh — src/image.c's decoding, resampling and crops against PIL (and torchvision.transforms when
# importable) on small images of every mode PIL writes, through tests/image_tool (tests/image_parity.py): the
# tolerance is docs/images.md's (0: bit-exact). Skips (77) when PIL is not importable ($PYTHON, python3,
# /usr/bin/python3): PIL is never a hard test dependency. Run by ctest: cli_image_parity.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
py=""
for p in ${PYTHON:-} python3 /usr/bin/python3; do
  if "$p" -c "import PIL" 2>/dev/null; then py=$p; break; fi
done
[ -n "$py" ] || { echo "SKIP: PIL is not importable (\$PYTHON, python3, /usr/bin/python3; apt-get install python3-pil)"; exit 77; }
img_tool=$build/tests/image_tool
[ -x "$img_tool" ] || { echo "FAIL: $img_tool not built"; exit 1; }
make_tmp
"$py" "$src/tests/image_parity.py" "$img_tool" "$tmp"
