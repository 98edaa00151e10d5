#!/usr/bin/env python3
"""make_shards.py — pack an image data set into WebDataset-style tar shards for data.format=shards.

  make_shards.py --out DIR/train-%06d.tar --maxcount N [--maxsize BYTES] --folder ROOT
  make_shards.py --out DIR/train-%06d.tar --maxcount N [--maxsize BYTES] --list FILE [--names FILE | --classes N]

Input: a torchvision ImageFolder tree (--folder: classes are the sub-directories of ROOT in sorted order, images
the .jpg/.jpeg/.png files under each, in torchvision's order: sorted(os.walk(class_dir, followlinks=True)), files
sorted), or a list file (--list: `path label` lines, paths relative to the list's directory, blank lines and
# comments skipped) -- the same samples, in the same order, as the trainer's data.format=folder|list.

Output: uncompressed tar shards of at most --maxcount samples and at most --maxsize bytes each (a single sample
larger than --maxsize gets a shard of its own). Sample i is two members, KEY.<ext> (the image's bytes, its
extension in lower case) and KEY.cls (its label as a decimal integer), KEY = "%09d" % i, so the samples keep
their order across shards. Class names go to DIR/names.txt, one per line (--folder: the class directory names;
--list: the --names file's, else "0".."N-1" with N = --classes or the largest label + 1). The shards are written
deterministically (mtime 0, uid/gid 0, no user names), each to a temporary name first and then renamed.

Prints the brace pattern to give data.train_shards (e.g. DIR/train-{000000..000007}.tar), the sample count and
the class count. Python standard library only. Exit status 2 on bad input.
"""
import argparse
import io
import os
import re
import sys
import tarfile

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def fail(msg):
    print("make_shards.py: error: %s" % msg, file=sys.stderr)
    sys.exit(2)


def folder_samples(root):
    """(path, label) in torchvision ImageFolder order, and the class names."""
    if not os.path.isdir(root):
        fail("%s: not a directory" % root)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        fail("%s: no class directories in it (want ROOT/CLASS/IMAGE.jpg)" % root)
    samples = []
    for label, cls in enumerate(classes):
        found = 0
        for dirpath, _, fnames in sorted(os.walk(os.path.join(root, cls), followlinks=True)):
            for f in sorted(fnames):
                if f.lower().endswith(IMAGE_EXTS):
                    samples.append((os.path.join(dirpath, f), label))
                    found += 1
        if found == 0:
            fail("%s: empty class directory: no .jpg, .jpeg or .png file under it" % os.path.join(root, cls))
    return samples, classes


def read_names(path):
    names = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            name = line.strip(" \t\r\n\v\f")
            if not name:
                fail("%s:%d: empty class name (one name per line)" % (path, n))
            names.append(name)
    if not names:
        fail("%s: no class names in it" % path)
    if len(set(names)) != len(names):
        fail("%s: a class name appears twice" % path)
    return names


def list_samples(list_path, names_path, classes):
    base = os.path.dirname(list_path)
    samples = []
    with open(list_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip(" \t\r\n\v\f")
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2:
                fail("%s:%d: no label (want 'path label')" % (list_path, n))
            path, label = parts
            try:
                label = int(label)
            except ValueError:
                fail("%s:%d: label '%s' is not an integer" % (list_path, n, label))
            if label < 0:
                fail("%s:%d: label %d is negative" % (list_path, n, label))
            samples.append((path if os.path.isabs(path) else os.path.join(base, path), label))
    if not samples:
        fail("%s: no samples in the list" % list_path)
    top = max(label for _, label in samples) + 1
    if names_path:
        names = read_names(names_path)
        if classes and classes != len(names):
            fail("%s: %d class names, but --classes %d" % (names_path, len(names), classes))
    else:
        names = [str(c) for c in range(classes or top)]
    if top > len(names):
        fail("%s: label %d is out of range [0, %d)" % (list_path, top - 1, len(names)))
    return samples, names


def shard_template(out):
    """The --out template's one %d / %0Nd conversion: (format, brace pattern maker)."""
    convs = re.findall(r"%[^%]*?[a-zA-Z%]", out)
    ok = [c for c in convs if re.fullmatch(r"%(0\d+)?d", c)]
    if len(convs) != 1 or len(ok) != 1:
        fail("--out %s: want exactly one %%d or %%0Nd (e.g. DIR/train-%%06d.tar)" % out)
    return out


def tar_size(offset):
    """A tar's size once closed at offset: the two end blocks, padded to tarfile's 10240-byte records."""
    end = offset + 2 * tarfile.BLOCKSIZE
    return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def member_bytes(n):
    return tarfile.BLOCKSIZE + -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def add_member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(samples, out, maxcount, maxsize):
    """Writes the shards; returns their count."""
    shard = -1
    tar = None
    tmp = None
    count = offset = 0

    def close():
        if tar is not None:
            tar.close()
            os.replace(tmp, out % shard)

    for i, (path, label) in enumerate(samples):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            fail("%s: %s" % (path, e.strerror))
        key = "%09d" % i
        ext = os.path.splitext(path)[1].lower()
        cls = b"%d" % label
        need = member_bytes(len(data)) + member_bytes(len(cls))
        if tar is None or count == maxcount or (maxsize and tar_size(offset + need) > maxsize):
            close()
            shard += 1
            tmp = out % shard + ".tmp"
            tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
            count = offset = 0
        add_member(tar, key + ext, data)
        add_member(tar, key + ".cls", cls)
        count += 1
        offset += need
    close()
    return shard + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].split(" — ")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--out", required=True, help="shard path template with one %%d or %%0Nd, e.g. DIR/train-%%06d.tar")
    ap.add_argument("--maxcount", type=int, required=True, help="most samples per shard")
    ap.add_argument("--maxsize", type=int, default=0, help="most bytes per shard (default: no limit)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--folder", help="an ImageFolder tree ROOT/CLASS/**/IMAGE")
    src.add_argument("--list", help="a list file of 'path label' lines")
    ap.add_argument("--names", help="with --list: class names, one per line")
    ap.add_argument("--classes", type=int, default=0, help="with --list and no --names: the class count")
    a = ap.parse_args()
    if a.maxcount < 1:
        fail("--maxcount must be at least 1")
    if a.maxsize < 0:
        fail("--maxsize must not be negative")
    if a.folder and (a.names or a.classes):
        fail("--names and --classes go with --list (a folder's classes are its directories)")
    if a.classes < 0:
        fail("--classes must not be negative")
    out = shard_template(a.out)
    if a.folder:
        samples, names = folder_samples(a.folder)
    else:
        samples, names = list_samples(a.list, a.names, a.classes)
    for n in names:
        if "\n" in n or "\r" in n or n != n.strip(" \t\v\f"):
            fail("class name %r cannot be written one per line" % n)
    out_dir = os.path.dirname(out) or "."
    os.makedirs(out_dir, exist_ok=True)
    n_shards = write_shards(samples, out, a.maxcount, a.maxsize)
    names_path = os.path.join(out_dir, "names.txt")
    with open(names_path + ".tmp", "w", encoding="utf-8") as f:
        f.write("".join(n + "\n" for n in names))
    os.replace(names_path + ".tmp", names_path)
    conv = re.search(r"%(0\d+)?d", out)
    if n_shards == 1:
        pattern = out % 0
    else:
        fmt = conv.group(0)
        pattern = out[:conv.start()] + "{%s..%s}" % (fmt % 0, fmt % (n_shards - 1)) + out[conv.end():]
    print("shards: %s" % pattern)
    print("samples: %d in %d shards" % (len(samples), n_shards))
    print("classes: %d (names in %s)" % (len(names), names_path))


if __name__ == "__main__":
    main()
