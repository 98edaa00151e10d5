#!/usr/bin/env python3
"""torch_train.py — train a ddp-cnn config in PyTorch with the same recipe, for a side-by-side accuracy check.

    python3 launch/torch_train.py --config configs/fashion_resnet.cfg [--epochs N] [--threads 2] [--out F.jsonl]

The model is launch/torch_model.py's module for the config; the rest follows the config as the trainer reads
it: optimizer (adam, adamw, sgd with momentum/nesterov; Keras's eps 1e-7 default), weight decay without the
`no_decay` parameters (bias, batchnorm), the learning-rate schedule per step with the trainer's formulas
(constant, step, cosine, onecycle; warmup_epochs), label smoothing, batch, epochs, [data] crop_pad / flip /
normalize (torchvision's order: crop with zero padding, flip, normalise with the training set's mean/std),
IDX data (train_limit/test_limit). It prints one line per epoch (test loss, test accuracy, seconds) and writes
them as JSON lines with --out. Sample order and augmentation draws are PyTorch's own (seeded), so the two runs
agree in distribution, not bit for bit. A benchmark, not a test dependency.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import load_idx  # noqa: E402
from torch_model import build_model, parse_config  # noqa: E402


def lr_at(n, steps_per_epoch, step):
    """src/optim.c lr_schedule_at, the same formulas."""
    kind = n.get("schedule", "constant")
    peak, min_lr = float(n.get("lr", 1e-3)), float(n.get("min_lr", 0))
    total = int(n.get("epochs", 5)) * steps_per_epoch
    warm = float(n.get("warmup_epochs", 0)) * steps_per_epoch
    start = 0.0
    if kind == "onecycle":
        if warm <= 0:
            warm = 0.3 * total
        start = peak / 25.0
    if step < warm:
        return start + (peak - start) * min(1.0, (step + 1.0) / warm)
    if kind == "step":
        epoch = step // steps_per_epoch
        lr = peak
        for m in [int(v) for v in n.get("steps", "").split(",") if v]:
            if epoch >= m:
                lr *= float(n.get("gamma", 0.1))
        return lr
    if kind in ("cosine", "onecycle"):
        span = total - warm
        p = min(1.0, (step - warm) / span) if span > 0 else 1.0
        return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
    return peak


def param_groups(model, net):
    wd = float(net.get("weight_decay", 0))
    no_decay = [s for s in net.get("no_decay", "").split(",") if s]
    bn_names = {name for name, mod in model.named_modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)}
    decay, keep = [], []
    for name, p in model.named_parameters():
        layer, kind = name.rsplit(".", 1)
        skip = ("bias" in no_decay and kind == "bias") or layer in no_decay or ("batchnorm" in no_decay and layer in bn_names)
        (keep if skip else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": keep, "weight_decay": 0.0}]


def optimizer_for(model, net):
    groups = param_groups(model, net)
    kind = net.get("optimizer", "adam")
    lr = float(net.get("lr", 1e-3))
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(net.get("momentum", 0.9)),
                               nesterov=net.get("nesterov", "0") == "1")
    betas = (float(net.get("beta1", 0.9)), float(net.get("beta2", 0.999)))
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, betas=betas, eps=float(net.get("eps", 1e-7)))


def augment(x, pad, flip, gen):
    if pad > 0:
        n, c, h, w = x.shape
        xp = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n x h
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # n x w
        idx_n = torch.arange(n).view(n, 1, 1)
        x = xp.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
    if flip:
        m = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(m.view(-1, 1, 1, 1), x.flip(3), x)
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    cfg = parse_config(open(a.config).read())
    net, data = cfg["net"], cfg["data"]
    if a.epochs:
        net["epochs"] = str(a.epochs)
    epochs, batch = int(net.get("epochs", 5)), int(net.get("batch", 64))
    x, y = load_idx(data["train_images"], data["train_labels"])
    xt, yt = load_idx(data["test_images"], data["test_labels"])
    if int(data.get("train_limit", 0)):
        x, y = x[:int(data["train_limit"])], y[:int(data["train_limit"])]
    if int(data.get("test_limit", 0)):
        xt, yt = xt[:int(data["test_limit"])], yt[:int(data["test_limit"])]
    pad, flip = int(data.get("crop_pad", 0)), data.get("flip", "0") == "1"
    if data.get("normalize", "0") == "1":
        if "mean" in data:
            mean = torch.tensor([float(v) for v in data["mean"].split(",")])
            std = torch.tensor([float(v) for v in data["std"].split(",")])
        else:
            mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), unbiased=False)
    else:
        mean, std = torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    norm = lambda v: (v - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)  # noqa: E731
    model = build_model(cfg)
    opt = optimizer_for(model, net)
    steps = x.shape[0] // batch
    out = open(a.out, "w") if a.out else None
    step = 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        t0 = time.perf_counter()
        for s in range(steps):
            idx = perm[s * batch:(s + 1) * batch]
            xb = norm(augment(x[idx], pad, flip, gen))
            for g in opt.param_groups:
                g["lr"] = lr_at(net, steps, step)
            opt.zero_grad(set_to_none=True)
            loss = model.loss(model(xb), y[idx])
            loss.backward()
            opt.step()
            step += 1
        secs = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(norm(xt[i:i + 1000])) for i in range(0, xt.shape[0], 1000)])
            tl = F.cross_entropy(logits, yt).item()
            acc = (logits.argmax(1) == yt).float().mean().item()
        row = {"epoch": epoch + 1, "test_loss": tl, "test_acc": acc, "epoch_s": secs,
               "images_per_s": steps * batch / secs}
        print(f"torch epoch {epoch + 1}/{epochs} test loss {tl:.4f} acc {acc:.4f} | {secs:.1f} s "
              f"{steps * batch / secs:.0f} img/s", flush=True)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
