#!/usr/bin/env python3
"""bench_torch.py — the reference CNN in PyTorch on the CPU or a GPU, for a side-by-side with ddp-cnn.

Same model (Conv 32 3x3 relu, MaxPool 2, Conv 64 3x3 relu, MaxPool 2, Dense 64 relu, Dense 10), Adam 1e-3
with eps 1e-7 — or, with --config, any ddp-cnn config's model and optimizer through launch/torch_model.py — sparse categorical cross-entropy, same batch and threads, data already in memory as float
tensors (so only the training step is timed). Prints one line: `torch images_per_s=<v> ...`.
--device cuda: the data lives on the GPU and batches are gathered there by index; Adam is the fused one,
cudnn.benchmark is on, TF32 is off unless --tf32 (as ddp-cnn's net.tf32); the timed steps lie between
torch.cuda.synchronize() calls, after the warm-up steps. --compile: the model goes through torch.compile
(compiled during the warm-up); if that fails, one line `torch-compile failed: ...` and exit status 3.
--data synthetic: no files; a pool of 4 batches of uniform [0, 1) images of the config's channels x height x width
and labels in [0, classes) (as ddp-cnn's data.format=synthetic; the ImageNet configs need it), cycled. The line
ends with max_rss_mib=, this process's peak resident memory (getrusage), for the memory comparison.
--amp bf16|fp16: the forward under torch.autocast in that type (fp16 with a GradScaler), PyTorch's mixed precision as
ddp-cnn's net.precision; --channels-last: model and batches in torch.channels_last (NHWC), where cuDNN's tensor-core
kernels are fastest. Both go into the printed line (amp=, channels_last=).
Benchmark only: nothing in the test suite depends on PyTorch.
"""
import argparse
import os
import resource
import gzip
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_model import build_model, config_of  # noqa: E402  any config as the same nn.Module


def load_idx(images_path, labels_path):
    with gzip.open(images_path, "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 0x803, images_path
        x = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).reshape(n, 1, rows, cols)
    with gzip.open(labels_path, "rb") as f:
        magic, n2 = struct.unpack(">II", f.read(8))
        assert magic == 0x801 and n2 == n, labels_path
        y = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
    return x.float().div_(255.0), y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dense1 = nn.Linear(1600, 64)
        self.dense2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.dense1(torch.flatten(x, 1)))
        return self.dense2(x)


def optimizer_for(cfg, model, cuda):
    """The config's optimizer with its hyper-parameters (constant lr: the schedule costs nothing per step)."""
    n = cfg["net"]
    lr, wd = float(n.get("lr", 1e-3)), float(n.get("weight_decay", 0))
    kind = n.get("optimizer", "adam")
    extra = {"fused": True} if cuda and kind != "sgd" else {}
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=float(n.get("momentum", 0.9)),
                               nesterov=n.get("nesterov", "0") == "1", weight_decay=wd)
    betas = (float(n.get("beta1", 0.9)), float(n.get("beta2", 0.999)))
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=lr, betas=betas, eps=float(n.get("eps", 1e-7)), weight_decay=wd, **extra)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist",
                    help="the Fashion-MNIST folder, or `synthetic` (random images of the config's shape)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--tf32", action="store_true", help="CUDA: allow TF32 in cuDNN and cuBLAS")
    ap.add_argument("--amp", choices=("bf16", "fp16"), help="torch.autocast the forward in this type (fp16: GradScaler)")
    ap.add_argument("--channels-last", action="store_true", help="model and batches in torch.channels_last")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="with --config: change a [net]/[data]/[parallel] key, as the trainer's --set (net.height=64)")
    ap.add_argument("--config", help="a ddp-cnn config: the model (and optimizer) built by launch/torch_model.py "
                                     "(default: the reference CNN)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            print("bench_torch.py: no CUDA device", file=sys.stderr)
            sys.exit(2)
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = a.tf32
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
    cfg = config_of(a.config) if a.config else None
    for kv in a.set:
        key, _, value = kv.partition("=")
        section, _, name = key.partition(".")
        if not cfg or section not in ("net", "data", "parallel") or not name or not _:
            ap.error(f"--set {kv}: want SECTION.KEY=VALUE with SECTION net, data or parallel, and --config")
        cfg[section][name] = value
    if a.data == "synthetic":
        n = cfg["net"] if cfg else {"channels": 1, "height": 28, "width": 28, "classes": 10}
        shape = (4 * a.batch, int(n["channels"]), int(n["height"]), int(n["width"]))
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(shape, generator=g), torch.randint(0, int(n.get("classes", 10)), (shape[0],), generator=g)
    else:
        x, y = load_idx(f"{a.data}/train-images-idx3-ubyte.gz", f"{a.data}/train-labels-idx1-ubyte.gz")
    x, y = x.to(dev), y.to(dev)
    if cfg:
        model = build_model(cfg).to(dev)
        opt = optimizer_for(cfg, model, cuda)
        loss_fn = model.loss
    else:
        model = Net().to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7, **({"fused": True} if cuda else {}))
        loss_fn = F.cross_entropy
    model.train()
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp)
    scaler = torch.amp.GradScaler(dev.type) if a.amp == "fp16" else None
    perm = torch.randperm(x.shape[0], device=dev)
    label = "torch-compile" if a.compile else "torch"
    forward = model

    def step(i):
        idx = perm[(i * a.batch) % max(x.shape[0] - a.batch, 1):][: a.batch]
        xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        if amp_dtype is None:
            loss = loss_fn(forward(xb), yb)
        else:
            with torch.autocast(dev.type, dtype=amp_dtype):
                out = forward(xb)
            loss = loss_fn(out.float(), yb)  # the loss in fp32, as autocast's op lists have it
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize()

    try:
        if a.compile:
            forward = torch.compile(model)
        for i in range(a.warmup):
            step(i)
        sync()
    except Exception as e:  # a compiler that cannot run here is a result to report, not a crash
        if not a.compile:
            raise
        msg = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"{label} failed: {type(e).__name__}: {msg}")
        sys.exit(3)
    t0 = time.perf_counter()
    for i in range(a.steps):
        step(i)
    sync()
    dt = time.perf_counter() - t0
    line = f"{label} images_per_s={a.steps * a.batch / dt:.1f} step_ms={dt / a.steps * 1e3:.3f} batch={a.batch} "
    if cuda:
        line += f"device=cuda tf32={int(a.tf32)} gpu=\"{torch.cuda.get_device_name(dev)}\" "
    else:
        line += f"threads={a.threads} "
    line += f"amp={a.amp or 'off'} channels_last={int(a.channels_last)} "
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(line + f"version={torch.__version__} max_rss_mib={rss:.0f}")


if __name__ == "__main__":
    main()
