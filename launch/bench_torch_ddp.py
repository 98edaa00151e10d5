#!/usr/bin/env python3
"""bench_torch_ddp.py — PyTorch DDP (gloo, CPU) on any ddp-cnn config, with DDP's communication hooks, for a
side-by-side with the trainer's gradient compression in the same box (launch/bench_comm.sh).

    mpirun -np N python3 launch/bench_torch_ddp.py --config configs/cifar10_resnet18.cfg --batch 16 \
        --hook none|fp16|bf16|powersgd [--powersgd-rank 4] [--powersgd-start 10] [--bucket-mb 25] \
        [--steps 20] [--warmup 5] [--threads 1] [--lr LR] [--master-addr HOST] [--master-port P]
        [--ready-file F --go-file G]

Rank and world come from torchrun's RANK/WORLD_SIZE or Open MPI's OMPI_COMM_WORLD_RANK/SIZE; the rendezvous
is MASTER_ADDR:MASTER_PORT (default: the first host's name, --master-addr, port 29531). The model is the
config's (launch/torch_model.py: same layers, names and parameter count as the trainer's), the optimizer the
config's at a constant lr, the data one synthetic batch per rank held in memory (so only the step is timed,
as the trainer's data.format=synthetic). Hooks: fp16/bf16 are torch's fp16_compress_hook/bf16_compress_hook,
powersgd its powerSGD_hook (PowerSGDState with matrix_approximation_rank, start_powerSGD_iter; error feedback
and warm start on, PyTorch's defaults). Timing: every step between barriers, the mean over --steps after
--warmup; compute_ms is the same step under DDP's no_sync() (no all-reduce at all), so exposed_ms = step_ms -
compute_ms is the communication the step waits for. Prints one line on rank 0:
  torch-ddp world=N hook=H batch=B step_ms=S compute_ms=C exposed_ms=E images_per_s=I grad_mb=G
Benchmark only: nothing in the test suite depends on PyTorch.
"""
import argparse
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_model import build_model, config_of  # noqa: E402
from bench_torch import optimizer_for  # noqa: E402


def env_int(*names, default=None):
    for n in names:
        if n in os.environ:
            return int(os.environ[n])
    return default


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=16, help="images per rank and step")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hook", default="none", choices=["none", "fp16", "bf16", "powersgd"])
    ap.add_argument("--powersgd-rank", type=int, default=1)
    ap.add_argument("--powersgd-start", type=int, default=2, help="start_powerSGD_iter (>= 2 for PyTorch)")
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--height", type=int, help="override net.height (and width)")
    ap.add_argument("--lr", type=float, help="override net.lr")
    ap.add_argument("--master-addr", default=os.environ.get("MASTER_ADDR"))
    ap.add_argument("--master-port", default=os.environ.get("MASTER_PORT", "29531"))
    ap.add_argument("--ready-file", help="rank 0 creates it after the warm-up, then waits for --go-file (a "
                    "driver reshapes the link in between: bench_comm.sh --warm-link)")
    ap.add_argument("--go-file", help="with --ready-file: the timed steps start once this file exists")
    a = ap.parse_args()

    rank = env_int("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", default=0)
    world = env_int("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", default=1)
    os.environ["MASTER_ADDR"] = a.master_addr or socket.gethostname()
    os.environ["MASTER_PORT"] = str(a.master_port)
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)

    cfg = config_of(a.config)
    net = cfg["net"]
    if a.height:
        net["height"] = net["width"] = str(a.height)
    if a.lr:
        net["lr"] = str(a.lr)
    torch.manual_seed(int(net.get("seed", 42)))
    model = build_model(cfg)
    c, h, w = int(net.get("channels", 1)), int(net.get("height", 28)), int(net.get("width", 28))
    classes = int(net.get("classes", 10))
    ddp = DDP(model, bucket_cap_mb=a.bucket_mb)
    if a.hook in ("fp16", "bf16"):
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks as dh
        ddp.register_comm_hook(None, dh.fp16_compress_hook if a.hook == "fp16" else dh.bf16_compress_hook)
    elif a.hook == "powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as ps
        state = ps.PowerSGDState(process_group=None, matrix_approximation_rank=a.powersgd_rank,
                                 start_powerSGD_iter=max(2, a.powersgd_start))
        ddp.register_comm_hook(state, ps.powerSGD_hook)
    opt = optimizer_for(cfg, ddp, False)
    g = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(a.batch, c, h, w, generator=g)
    y = torch.randint(0, classes, (a.batch,), generator=g)
    smoothing = float(net.get("label_smoothing", 0))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ddp(x), y, label_smoothing=smoothing)
        loss.backward()
        opt.step()

    def timed(n, nosync):
        times = []
        for _ in range(n):
            dist.barrier()
            t0 = time.perf_counter()
            if nosync:
                with ddp.no_sync():
                    step()
            else:
                step()
            times.append(time.perf_counter() - t0)
        # the slowest rank's time per step (every rank waits for it in the next barrier anyway)
        t = torch.tensor([statistics.mean(times)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    for _ in range(a.warmup):
        step()
    if a.ready_file and rank == 0:
        open(a.ready_file, "w").close()
        t0 = time.time()
        while a.go_file and not os.path.exists(a.go_file):
            if time.time() - t0 > 300:
                sys.exit(f"bench_torch_ddp.py: no {a.go_file} 300 s after {a.ready_file}")
            time.sleep(0.05)
    dist.barrier()
    step_s = timed(a.steps, False)
    compute_s = timed(max(3, a.steps // 2), True)
    grad_mb = sum(p.numel() for p in model.parameters()) * 4 / 1e6
    if rank == 0:
        print(f"torch-ddp world={world} hook={a.hook} batch={a.batch} step_ms={step_s * 1e3:.1f} "
              f"compute_ms={compute_s * 1e3:.1f} exposed_ms={max(0.0, step_s - compute_s) * 1e3:.1f} "
              f"images_per_s={world * a.batch / step_s:.1f} grad_mb={grad_mb:.1f} torch={torch.__version__}",
              flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
