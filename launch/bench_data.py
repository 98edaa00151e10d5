#!/usr/bin/env python3
"""bench_data.py — the Python half of launch/bench_data.sh (run that; this file is its helper).

  gen ROOT [--train N] [--val N] [--classes 10] [--seed 1] [--jobs J]
      an ImageNet-shaped synthetic ImageFolder tree: ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg, about
      500x375 (each size drawn from 440..560 x 330..420, one in five portrait), JPEG quality 90. A class is told by
      its content: the colour and angle of a field of stripes and the colour of a blob (both class-dependent), on
      a random background with random distractor blobs and blurred noise (texture, so the JPEGs are photo-sized,
      about 100 KB). PIL only (no numpy), so Debian's python3-pil is enough.
  predecode SRC DST [--size 224]
      the pre-decoded copy: every image of SRC resized to SIZE x SIZE (PIL bilinear) and written as an
      uncompressed PNG (zlib level 0: decoding it is a copy), same tree and names (.png).
  lists ROOT N...
      list files ROOT/list_N.txt of N `train/<class>/<file> label` lines, cycling over ROOT/train's images, and
      ROOT/list_val.txt of ROOT/val's images.
  torch ROOT --workers W [--batch B] [--batches N] [--warmup K] [--decoder pil|tvio] [--size 224]
      PyTorch's DataLoader over ImageFolder(ROOT) with Compose([RandomResizedCrop, RandomHorizontalFlip,
      ToTensor, Normalize(ImageNet)]) and num_workers=W (pil: PIL decode, the default ImageFolder loader;
      tvio: torchvision.io.decode_jpeg on uint8 tensors, transforms.v2 with antialias). Prints one line
      `images=.. seconds=.. img_s=.. img_s_per_worker=..` as bench_loader does. K warm-up batches (worker start)
      are not timed.
  report RESULTS
      the final table from the key=value lines bench_data.sh collected.
"""
import argparse
import math
import os
import random
import sys
import time

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------------------
# gen


def _hsv(h, s, v):
    import colorsys
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


_NOISE = None  # the noise tile of this process


def _one_image(job):
    from PIL import Image, ImageChops, ImageDraw, ImageFilter
    path, cls, classes, seed = job
    rnd = random.Random(seed)
    w, h = rnd.randint(440, 560), rnd.randint(330, 420)
    if rnd.random() < 0.2:
        w, h = h, w
    bg = _hsv(rnd.random(), rnd.uniform(0.1, 0.5), rnd.uniform(0.3, 0.9))
    im = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(im)
    # the class: stripes at the class's angle in the class's hue, period and phase random
    hue = cls / classes
    angle = math.pi * cls / classes + rnd.uniform(-0.08, 0.08)
    period = rnd.uniform(24, 60)
    ca, sa = math.cos(angle), math.sin(angle)
    reach = w + h
    color = _hsv(hue + rnd.uniform(-0.03, 0.03), rnd.uniform(0.6, 1.0), rnd.uniform(0.6, 1.0))
    k = -reach + rnd.uniform(0, period)
    while k < reach:
        # a band between offsets k and k + period/2 along the normal (ca, sa), long enough to cross the image
        p = []
        for off, t in ((k, -reach), (k, reach), (k + period / 2, reach), (k + period / 2, -reach)):
            p.append((w / 2 + off * ca - t * sa, h / 2 + off * sa + t * ca))
        d.polygon(p, fill=color)
        k += period
    # distractors, then the class's blob
    for _ in range(rnd.randint(2, 5)):
        x, y, r = rnd.uniform(0, w), rnd.uniform(0, h), rnd.uniform(15, 90)
        d.ellipse((x - r, y - r, x + r, y + r), fill=_hsv(rnd.random(), rnd.random(), rnd.random()))
    x, y, r = rnd.uniform(0.2, 0.8) * w, rnd.uniform(0.2, 0.8) * h, rnd.uniform(40, 110)
    d.ellipse((x - r, y - r, x + r, y + r), fill=_hsv(hue + 0.5, 0.9, 0.9))
    im = im.filter(ImageFilter.GaussianBlur(1.5))
    # texture: per-channel gaussian noise, slightly blurred (spatially correlated, as in photos), cut at a random
    # place from a tile made once per process
    global _NOISE
    if _NOISE is None:
        _NOISE = Image.merge("RGB", [Image.effect_noise((1200, 1200), 30).filter(ImageFilter.GaussianBlur(0.5))
                                     for _ in range(3)])
    x0, y0 = rnd.randint(0, 1200 - w), rnd.randint(0, 1200 - h)
    im = ImageChops.add(im, _NOISE.crop((x0, y0, x0 + w, y0 + h)), 1.0, -128)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im.save(path, "JPEG", quality=90)
    return os.path.getsize(path)


def cmd_gen(a):
    from multiprocessing import Pool
    jobs = []
    for split, n in (("train", a.train), ("val", a.val)):
        for i in range(n):
            cls = i % a.classes
            path = os.path.join(a.root, split, f"class{cls:02d}", f"{split}_{i:06d}.jpg")
            jobs.append((path, cls, a.classes, a.seed * 1_000_003 + (0 if split == "train" else 10**7) + i))
    t0 = time.time()
    with Pool(a.jobs or os.cpu_count()) as pool:
        sizes = pool.map(_one_image, jobs, chunksize=16)
    print(f"gen: {len(jobs)} JPEGs ({a.train} train, {a.val} val, {a.classes} classes) under {a.root}, "
          f"mean {sum(sizes) / len(sizes) / 1024:.0f} KiB, {time.time() - t0:.0f} s")


# ------------------------------------------------------------------------------------------------------------
# predecode, lists


def _walk_images(root):
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f.lower().endswith((".jpg", ".jpeg", ".png")):
                yield os.path.join(dirpath, f)


def _predecode_one(job):
    from PIL import Image
    src, dst, size = job
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with Image.open(src) as im:
        im.convert("RGB").resize((size, size), Image.BILINEAR).save(dst, "PNG", compress_level=0)


def cmd_predecode(a):
    from multiprocessing import Pool
    jobs = [(p, os.path.splitext(os.path.join(a.dst, os.path.relpath(p, a.src)))[0] + ".png", a.size)
            for p in _walk_images(a.src)]
    with Pool(a.jobs or os.cpu_count()) as pool:
        pool.map(_predecode_one, jobs, chunksize=16)
    print(f"predecode: {len(jobs)} images as {a.size}x{a.size} uncompressed PNG under {a.dst}")


def cmd_lists(a):
    train = os.path.join(a.root, "train")
    classes = sorted(e for e in os.listdir(train) if os.path.isdir(os.path.join(train, e)))
    lines = []
    for label, c in enumerate(classes):
        for p in _walk_images(os.path.join(train, c)):
            lines.append(f"{os.path.relpath(p, a.root)} {label}\n")
    for n in a.n:
        with open(os.path.join(a.root, f"list_{n}.txt"), "w") as f:
            f.writelines(lines[i % len(lines)] for i in range(n))
    val = os.path.join(a.root, "val")
    with open(os.path.join(a.root, "list_val.txt"), "w") as f:
        for label, c in enumerate(classes):
            f.writelines(f"{os.path.relpath(p, a.root)} {label}\n" for p in _walk_images(os.path.join(val, c)))
    print(f"lists: {', '.join(f'list_{n}.txt' for n in a.n)} under {a.root} ({len(classes)} classes)")


# ------------------------------------------------------------------------------------------------------------
# torch


def cmd_torch(a):
    import torch
    import torchvision
    from torch.utils.data import DataLoader, RandomSampler
    from torchvision import datasets

    torch.set_num_threads(1)  # the main process only collates; the workers run with one thread (DataLoader's rule)
    if a.decoder == "pil":
        from torchvision import transforms as T
        tf = T.Compose([T.RandomResizedCrop(a.size), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        ds = datasets.ImageFolder(a.root, transform=tf)
    else:
        from torchvision.io import ImageReadMode, decode_jpeg, read_file
        from torchvision.transforms import v2

        def load(path):
            return decode_jpeg(read_file(path), mode=ImageReadMode.RGB)

        tf = v2.Compose([v2.RandomResizedCrop(a.size, antialias=True), v2.RandomHorizontalFlip(),
                         v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        ds = datasets.ImageFolder(a.root, transform=tf, loader=load)
    total = (a.warmup + a.batches) * a.batch
    sampler = RandomSampler(ds, num_samples=total, generator=torch.Generator().manual_seed(42))
    dl = DataLoader(ds, batch_size=a.batch, sampler=sampler, num_workers=a.workers, drop_last=True)
    images, t0, sink = 0, None, 0.0
    for b, (x, y) in enumerate(dl):
        if b == a.warmup:
            t0 = time.perf_counter()
        if b >= a.warmup:
            images += x.shape[0]
        sink += float(x[-1, 0, 0, 0])
    secs = time.perf_counter() - t0
    print(f"images={images} seconds={secs:.3f} img_s={images / secs:.1f} img_s_per_worker={images / secs / a.workers:.1f} "
          f"workers={a.workers} batch={a.batch} decoder={a.decoder} torch={torch.__version__} "
          f"torchvision={torchvision.__version__}")


# ------------------------------------------------------------------------------------------------------------
# report


def _kv(line):
    out = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v
    return out


def cmd_report(a):
    rows = {}
    notes = []
    with open(a.results) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            tag, _, rest = line.partition(" ")
            if tag == "note":
                notes.append(rest)
            elif tag == "meta":
                k, _, v = rest.partition(" ")
                rows.setdefault("meta", {})[k] = v
            else:
                rows[tag] = _kv(rest)
    meta = rows.get("meta", {})

    def f(tag, key):
        try:
            return float(rows[tag][key])
        except (KeyError, ValueError):
            return None

    def num(v, fmt="{:.1f}"):
        return "—" if v is None else fmt.format(v)

    def ratio(x, y):
        return None if x is None or y is None or y == 0 else x / y

    out = []
    w = out.append
    w("")
    w("=" * 100)
    w("bench_data: ddp-cnn's streaming image pipeline")
    w(f"date     {meta.get('date', '?')}")
    w(f"machine  {meta.get('machine', '?')}")
    w(f"command  {meta.get('command', '?')}")
    w(f"data     {meta.get('data', '?')}")
    w(f"load     {meta.get('quiet', '?')}")
    w("")
    w("1. decode + RandomResizedCrop(224) + flip + ToTensor/Normalize, img/s per worker "
      "(ours: src/loader.h threads + normalise pass on the consumer thread)")
    ws = [x for x in meta.get("workers", "1 2").split()]
    w(f"   {'pipeline':<56}" + "".join(f"{'W=' + x:>12}" for x in ws))
    lines = [("ours (bench_loader, libjpeg-turbo, exact PIL resample)", "ours"),
             ("ours, dct_scaling=1", "oursdct"),
             ("PyTorch DataLoader + ImageFolder, PIL (pip)", "pil"),
             ("PyTorch DataLoader, torchvision.io.decode_jpeg (pip)", "tvio"),
             ("PyTorch DataLoader + ImageFolder, PIL (Debian)", "debpil")]
    for name, tag in lines:
        vals = [f(f"{tag}_w{x}", "img_s_per_worker") for x in ws]
        if all(v is None for v in vals):
            continue
        w(f"   {name:<56}" + "".join(f"{num(v):>12}" for v in vals))
    for ref, label in (("pil", "PIL"), ("tvio", "decode_jpeg"), ("debpil", "Debian PIL")):
        rs = [ratio(f(f"ours_w{x}", "img_s_per_worker"), f(f"{ref}_w{x}", "img_s_per_worker")) for x in ws]
        if all(r is None for r in rs):
            continue
        w(f"   {'ratio ours / PyTorch ' + label:<56}" + "".join(f"{num(r, '{:.2f}x'):>12}" for r in rs)
          + "   goal >= 1.5x per core: " + ("met" if all(r is not None and r >= 1.5 for r in rs) else "NOT met"))
    for n in notes:
        if n.startswith("1:"):
            w("   " + n[2:].strip())
    w("")
    w("2. end to end: trainer, configs/folder_resnet.cfg, one epoch over the training folder (metrics JSONL)")
    w(f"   {'run':<44}{'step ms':>10}{'data_s ms':>11}{'data_wait ms':>14}{'img/s':>9}{'vs ref':>9}")
    pairs = []
    for tag in sorted(k for k in rows if k.startswith("e2e_")):
        r = rows[tag]
        step = f(tag, "step_s")
        refstep = f(r.get("ref", ""), "step_s") if r.get("ref") else None
        rr = ratio(step, refstep)
        pairs.append((tag, rr))
        w(f"   {r.get('label', tag).replace('_', ' '):<44}{num(step and step * 1e3):>10}"
          f"{num(f(tag, 'data_s') and f(tag, 'data_s') * 1e3, '{:.2f}'):>11}"
          f"{num(f(tag, 'data_wait_s') and f(tag, 'data_wait_s') * 1e3, '{:.2f}'):>14}"
          f"{num(f(tag, 'images_per_s')):>9}{num(rr, '{:.3f}x') if rr else '':>9}")
    for tag, rr in pairs:
        if rr is not None:
            w(f"   {rows[tag].get('label', tag).replace('_', ' ')}: streaming step time {100 * (rr - 1):+.1f} % vs "
              f"its reference; goal within 5 %: {'met' if rr <= 1.05 else 'NOT met'}")
    for n in notes:
        if n.startswith("2:"):
            w("   " + n[2:].strip())
    w("")
    w("3. resident memory of one rank (max RSS, /usr/bin/time -v), format=list, same steps")
    sizes = sorted((int(k[4:]), k) for k in rows if k.startswith("rss_"))
    for n, tag in sizes:
        w(f"   {n:>8} listed images   max RSS {num(f(tag, 'kb') and f(tag, 'kb') / 1024, '{:.1f}')} MiB"
          f"   ({rows[tag].get('steps', '?')} steps)")
    if len(sizes) >= 2:
        lo, hi = f(sizes[0][1], "kb"), f(sizes[-1][1], "kb")
        r = ratio(hi, lo)
        w(f"   ratio {sizes[-1][0]} / {sizes[0][0]}: {num(r, '{:.3f}x')}; +{num((hi - lo) / 1024, '{:.1f}')} MiB "
          f"(goal: flat; the path pool, labels and the epoch's index arrays grow with the list, "
          f"about 100 bytes per listed image)")
    for n in notes:
        if n.startswith("3:"):
            w("   " + n[2:].strip())
    w("=" * 100)
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("root")
    g.add_argument("--train", type=int, default=2000)
    g.add_argument("--val", type=int, default=200)
    g.add_argument("--classes", type=int, default=10)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--jobs", type=int, default=0)
    p = sub.add_parser("predecode")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--jobs", type=int, default=0)
    l = sub.add_parser("lists")
    l.add_argument("root")
    l.add_argument("n", type=int, nargs="+")
    t = sub.add_parser("torch")
    t.add_argument("root")
    t.add_argument("--workers", type=int, required=True)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--batches", type=int, default=40)
    t.add_argument("--warmup", type=int, default=4)
    t.add_argument("--size", type=int, default=224)
    t.add_argument("--decoder", choices=("pil", "tvio"), default="pil")
    r = sub.add_parser("report")
    r.add_argument("results")
    a = ap.parse_args()
    {"gen": cmd_gen, "predecode": cmd_predecode, "lists": cmd_lists, "torch": cmd_torch, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
