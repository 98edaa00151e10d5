#!/usr/bin/env python3
"""torch_io.py — tests/cli_torch_io.sh's PyTorch side: torchvision models against the trainer's outputs.

    torch_io.py weights --arch A [--num-classes N] --out W.pth
        torchvision.models.A() (seeded) with every batch norm's running statistics, affine parameters and
        num_batches_tracked made random, so eval mode's normalisation is exercised (torchvision's own init has
        mean 0, var 1, weight 1, bias 0, count 0) and the classifier's weight scaled by --head-scale (10), saved
        as a state dict.
    torch_io.py pngs DIR N SIZE [--classes K] [--seed S]
        N random RGB PNGs of SIZE x SIZE (DIR/<i>.png, or with --classes DIR/c<k>/<i>.png round robin).
    torch_io.py compare CSV --arch A (--weights W.pth | --ckpt CKPT) [--num-classes N] [--tol 1e-4]
        The trainer's --predict CSV (path, class, class_name, probability, p0..pK-1) against torchvision's
        module in eval mode on the same images (PIL decode, pixel/255, ImageNet Normalize: the trainer's
        normalize=imagenet in float32). Softmax keeps the logits up to one constant per image, so the comparison
        is of centred logits: log p - mean(log p) (ours) vs z - mean(z) (torch), error = max |diff| / max |torch|
        over the batch. Also the probabilities' max abs difference and the top classes. --ckpt loads a trainer
        checkpoint into torchvision.models.A(num_classes=N) with load_state_dict(strict=True) (optim.* dropped;
        each num_batches_tracked must be a 0-dim int64). Exit 1 above --tol.
    torch_io.py strict CKPT --arch A [--num-classes N]
        The checkpoint into torchvision.models.A(num_classes=N) with load_state_dict(strict=True), as compare --ckpt.
    torch_io.py eval METRICS.json --arch A --weights W.pth --dir DIR [--num-classes N] [--tol 1e-4]
        The trainer's --eval test loss and accuracy (its --metrics JSON) against torchvision's on DIR/c<k>/*.png.
    torch_io.py onnx MODEL.onnx CSV [--tol 1e-5]
        onnxruntime's softmax probabilities on the CSV's images against the CSV's (the trainer's --predict).
    torch_io.py STEP ARGS + STEP ARGS + ...
        Several steps in one process; each step's last line printed as "RESULT ok|bad LINE", exit 1 if any failed.
"""
import argparse
import contextlib
import csv
import io
import json
import os
import struct
import sys
import zlib

import torch

MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float32).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float32).view(3, 1, 1)


def tv_model(arch, classes):
    import torchvision
    kw = {} if classes is None else {"num_classes": classes}
    return getattr(torchvision.models, arch)(weights=None, **kw)


def cmd_weights(a):
    torch.manual_seed(a.seed)
    m = tv_model(a.arch, a.num_classes)
    g = torch.Generator().manual_seed(a.seed + 1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
                mod.weight.copy_(0.5 + 0.5 * torch.rand(c, generator=g))
                mod.bias.copy_(0.1 * torch.randn(c, generator=g))
                mod.num_batches_tracked.fill_(int(torch.randint(1, 5000, (1,), generator=g)))
        head = m.fc if hasattr(m, "fc") else m.classifier[-1]
        head.weight.mul_(a.head_scale)  # logits of a few units, not torchvision's near-uniform init
    torch.save(m.state_dict(), a.out)
    print(f"{a.out}: torchvision {a.arch} state dict, batch-norm statistics made random")
    return 0


def png_bytes(pix):  # pix: H x W x 3 uint8 tensor
    h, w, _ = pix.shape
    rows = b"".join(b"\x00" + bytes(pix[y].flatten().tolist()) for y in range(h))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


def cmd_pngs(a):
    g = torch.Generator().manual_seed(a.seed)
    for i in range(a.n):
        d = os.path.join(a.dir, f"c{i % a.classes}") if a.classes else a.dir
        os.makedirs(d, exist_ok=True)
        # smooth-ish images: a random low-resolution field upsampled, plus noise (not only white noise)
        low = torch.rand(1, 3, 4, 4, generator=g)
        img = torch.nn.functional.interpolate(low, size=(a.size, a.size), mode="bilinear", align_corners=False)[0]
        img = (img * 200 + 55 * torch.rand(3, a.size, a.size, generator=g)).clamp(0, 255).to(torch.uint8)
        with open(os.path.join(d, f"{i}.png"), "wb") as f:
            f.write(png_bytes(img.permute(1, 2, 0).contiguous()))
    print(f"{a.dir}: {a.n} random {a.size}x{a.size} RGB PNGs")
    return 0


def image_tensor(path):
    """The model's input for one image: decoded, pixel/255, Normalize(ImageNet) in float32 (no resize: the
    images are the model's size and the trainer runs with data.resize=0, so its center crop is the identity)."""
    from PIL import Image
    import numpy as np
    with Image.open(path) as im:
        pix = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())
    x = pix.permute(2, 0, 1).to(torch.float32) / 255.0
    return (x - MEAN) / STD


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head, rows = rows[0], rows[1:]
    pcols = [i for i, h in enumerate(head) if h.startswith("p") and h[1:].isdigit()]
    if not pcols:
        raise ValueError(f"{path}: no p0..pK columns (more than 100 classes: the trainer prints the top class only)")
    paths = [r[0] for r in rows]
    probs = torch.tensor([[float(r[i]) for i in pcols] for r in rows], dtype=torch.float64)
    top = [int(r[1]) for r in rows]
    return paths, probs, top


def strict_load(ckpt, arch, classes):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "launch"))
    from torch_model import load_safetensors
    tensors, meta = load_safetensors(ckpt)
    sd = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    counts = [k for k in sd if k.endswith("num_batches_tracked")]
    bad = [k for k in counts if sd[k].dtype != torch.int64 or sd[k].dim() != 0]
    if bad:
        raise ValueError(f"{ckpt}: {bad[0]} is {sd[bad[0]].dtype} of shape {list(sd[bad[0]].shape)}, not a 0-dim int64")
    m = tv_model(arch, classes)
    res = m.load_state_dict(sd, strict=True)
    print(f"strict load: torchvision.models.{arch}(num_classes={classes}).load_state_dict(strict=True) -> {res}; "
          f"{len(sd)} tensors ({len(tensors) - len(sd)} optim.* dropped), {len(counts)} num_batches_tracked int64 "
          f"0-dim (e.g. {counts[0]} = {int(sd[counts[0]])})")
    return m


def cmd_strict(a):
    strict_load(a.ckpt, a.arch, a.num_classes)
    return 0


def torch_logits(m, paths):
    m.eval()
    x = torch.stack([image_tensor(p) for p in paths])
    with torch.no_grad():
        return m(x).double()


def cmd_compare(a):
    paths, probs, top = read_csv(a.csv)
    if a.ckpt:
        with contextlib.redirect_stdout(io.StringIO()):  # the strict subcommand reports the load
            m = strict_load(a.ckpt, a.arch, a.num_classes)
    else:
        m = tv_model(a.arch, a.num_classes)
        m.load_state_dict(torch.load(a.weights, map_location="cpu", weights_only=True), strict=True)
    z = torch_logits(m, paths)
    ours = probs.log()
    ours = ours - ours.mean(1, keepdim=True)
    ref = z - z.mean(1, keepdim=True)
    rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    pdiff = (probs - torch.softmax(z, 1)).abs().max().item()
    same_top = sum(int(t == int(r)) for t, r in zip(top, z.argmax(1)))
    ok = rel <= a.tol
    print(f"{a.arch}: {len(paths)} images {tuple(z.shape)}, logits range [{z.min().item():.3g}, {z.max().item():.3g}]: "
          f"centred logits max rel diff {rel:.3g} (tolerance {a.tol:g}), probabilities max abs diff {pdiff:.3g}, "
          f"top class equal {same_top}/{len(paths)}{'' if ok else '  FAIL'}")
    return 0 if ok and same_top == len(paths) else 1


def cmd_eval(a):
    with open(a.metrics) as f:
        r = json.load(f)
    m = tv_model(a.arch, a.num_classes)
    m.load_state_dict(torch.load(a.weights, map_location="cpu", weights_only=True), strict=True)
    classes = sorted(d for d in os.listdir(a.dir) if os.path.isdir(os.path.join(a.dir, d)))
    paths, labels = [], []
    for k, c in enumerate(classes):
        for fn in sorted(os.listdir(os.path.join(a.dir, c))):
            paths.append(os.path.join(a.dir, c, fn))
            labels.append(k)
    z = torch_logits(m, paths)
    y = torch.tensor(labels)
    loss = torch.nn.functional.cross_entropy(z, y).item()
    acc = (z.argmax(1) == y).double().mean().item()
    rel = abs(loss - r["test_loss"]) / abs(loss)
    ok = rel <= a.tol and abs(acc - r["test_acc"]) < 1e-12 and r["test_samples"] == len(paths)
    print(f"{a.arch} --eval: {r['test_samples']} samples, test loss {r['test_loss']:.9g} vs torch {loss:.9g} "
          f"(rel diff {rel:.3g}), test acc {r['test_acc']:.4f} vs torch {acc:.4f}{'' if ok else '  FAIL'}")
    return 0 if ok else 1


def cmd_onnx(a):
    import numpy as np
    import onnxruntime as ort
    paths, probs, _ = read_csv(a.csv)
    sess = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    x = torch.stack([image_tensor(p) for p in paths]).numpy()
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64)
    if sess.get_outputs()[0].name == "logits":
        out = torch.softmax(torch.from_numpy(out), 1).numpy()
    diff = float(np.abs(out - probs.numpy()).max())
    ok = diff <= a.tol
    print(f"onnxruntime {ort.__version__}: {len(paths)} images, probabilities vs --predict max abs diff {diff:.3g} "
          f"(tolerance {a.tol:g}){'' if ok else '  FAIL'}")
    return 0 if ok else 1


def parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("weights")
    p.add_argument("--arch", required=True)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--head-scale", type=float, default=10.0)
    p.add_argument("--out", required=True)
    p = sub.add_parser("pngs")
    p.add_argument("dir")
    p.add_argument("n", type=int)
    p.add_argument("size", type=int)
    p.add_argument("--classes", type=int, default=0)
    p.add_argument("--seed", type=int, default=2)
    p = sub.add_parser("compare")
    p.add_argument("csv")
    p.add_argument("--arch", required=True)
    p.add_argument("--weights")
    p.add_argument("--ckpt")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--tol", type=float, default=1e-4)
    p = sub.add_parser("strict")
    p.add_argument("ckpt")
    p.add_argument("--arch", required=True)
    p.add_argument("--num-classes", type=int)
    p = sub.add_parser("eval")
    p.add_argument("metrics")
    p.add_argument("--arch", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--tol", type=float, default=1e-4)
    p = sub.add_parser("onnx")
    p.add_argument("model")
    p.add_argument("csv")
    p.add_argument("--tol", type=float, default=1e-5)
    return ap


def main(argv):
    """One step, or several joined by '+' (one Python start-up for all: importing torch takes seconds). Each
    step's last line is printed as "RESULT ok|bad <line>"; exit 1 when any step failed."""
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    steps, cur = [], []
    for w in argv:
        if w == "+":
            steps.append(cur)
            cur = []
        else:
            cur.append(w)
    steps.append(cur)
    fails = 0
    cmds = {"weights": cmd_weights, "pngs": cmd_pngs, "compare": cmd_compare, "strict": cmd_strict,
            "eval": cmd_eval, "onnx": cmd_onnx}
    for argv1 in steps:
        a = parser().parse_args(argv1)
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                rc = cmds[a.cmd](a)
        except Exception as e:  # one failed step is reported, the others still run
            buf.write(f"{a.cmd}: {type(e).__name__}: {e}\n")
            rc = 1
        lines = buf.getvalue().splitlines() or [f"{a.cmd}: no output"]
        for ln in lines[:-1]:
            print(f"  {ln}")
        print(f"RESULT {'ok' if rc == 0 else 'bad'} {lines[-1]}", flush=True)
        fails += rc != 0
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
