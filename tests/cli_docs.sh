#!/usr/bin/env bash
# cli_docs.sh — the documents point at things that exist: every relative link of README.md and docs/*.md resolves,
# every repository path they name (launch/…, configs/…, tests/…, src/…, comm/…, cuda/…, docs/…) exists, and the
# README stays a guide (at most 350 lines). Placeholders (<kind>, X.cfg, …) are not paths.
# Run by ctest: cli_docs.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
command -v python3 >/dev/null || { echo "SKIP: no python3"; exit 77; }
python3 - "$src" <<'PY'
import glob, os, re, sys

src = sys.argv[1]
docs = [os.path.join(src, "README.md")] + sorted(glob.glob(os.path.join(src, "docs", "*.md")))
bad = links = paths = 0
placeholder = re.compile(r"[<>*{}$]|/X\.|/x\.|/new\.|\.\.\.|…")
for doc in docs:
    text = open(doc, encoding="utf-8").read()
    rel_doc = os.path.relpath(doc, src)
    for m in re.finditer(r"\]\(([^)\s]+)\)", text):
        target = m.group(1).split("#")[0]
        if not target or re.match(r"[a-z]+://", target):
            continue
        links += 1
        if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(doc), target))):
            print(f"FAIL {rel_doc}: link to {target}, which does not exist")
            bad += 1
    for m in re.finditer(r"(?<![\w./-])((?:launch|configs|tests|src|comm|cuda|docs)/[\w./-]*[\w/])", text):
        p = m.group(1)
        if placeholder.search(p) or p.endswith("/"):
            continue
        paths += 1
        if not os.path.exists(os.path.join(src, p)):
            print(f"FAIL {rel_doc}: names {p}, which does not exist")
            bad += 1
readme_lines = sum(1 for _ in open(docs[0], encoding="utf-8"))
if readme_lines > 350:
    print(f"FAIL README.md has {readme_lines} lines (a guide: at most 350; reference goes to docs/)")
    bad += 1
print(f"{len(docs)} documents, {links} links, {paths} repository paths, README {readme_lines} lines: {bad} broken")
sys.exit(1 if bad else 0)
PY
rc=$?
if [ "$rc" -eq 0 ]; then ok "every link and named path of README.md and docs/ exists"; else fails=$((fails + 1)); fi
finish docs
