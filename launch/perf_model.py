#!/usr/bin/env python3
"""perf_model.py — the data-parallel performance model of ddp-cnn (docs/parallelism.md, "Scaling study"), in one place.

    python3 launch/perf_model.py ring-fit NP BENCH_OUTPUT...
        convert bench_allreduce's `# fit: alpha_us=a beta_GBps=b` (time = a + S/b, measured with NP ranks) into
        the ring model's per-hop latency alpha and link bandwidth beta; prints "alpha_us beta_GBps". With several
        outputs, the least disturbed one (lowest a + 256 KiB / b) is used
    python3 launch/perf_model.py cores NPROC ALONE.jsonl TOGETHER.jsonl...
        effective cores of a host: NPROC * step_s(alone) / mean step_s(together) (runs at the same time)
    python3 launch/perf_model.py study --dir DIR --params P --alpha-us A --beta-gbps B [options]
        read DIR/metrics_<mode>_np<N>.jsonl (rank 0's --metrics of each run), write DIR/scaling.csv with the
        model next to every measurement, DIR/scaling_<mode>.dat and DIR/scaling_model.dat for gnuplot, and
        print the table and the mean relative error of model vs measurement
    python3 launch/perf_model.py comm --params P --np N --alpha-us A --beta-gbps B [options]
        one step's communication at N ranks without runs: the all-reduce of every bucket, comm and exposed
        (with --backward-ms), under the options below; prints "comm_ms exposed_ms wire_bytes"
    python3 launch/perf_model.py box --dir OUT --tensors T [--link-eff E] [--alpha-ms A] [--host-ns-per-byte H]
        the cluster box's measured rows (launch/bench_comm.sh: OUT/rows.csv, each run's metrics, the one-node
        baselines) next to the model's step for each ddp-cnn row and its relative error; then the same model at
        64-1024 GPUs with the real-cluster parameters of docs/clusters.md (links (a) and (b))

Options of study and comm for what goes on the wire (defaults: the plain fp32 ring, as before):
    --compress none|bf16|fp16|powersgd   bytes per element 4 (none), 2 (bf16, fp16); powersgd: a tensor of m x n
        (shape[0] x the rest) sends r(m+n) values in two all-reduces (P, then Q) when r(m+n) * 2 < m*n (PyTorch's
        min_compression_rate), else m*n; 1-D tensors (biases, batch norm) go uncompressed; needs --tensors
    --powersgd-rank R                    r (default 1)
    --tensors FILE                       the gradient tensors' shapes: a .safetensors checkpoint (its model
        tensors; running statistics and optimizer state left out) or a text file, one shape per line (64x3x7x7)
    --hierarchy flat|node|auto --ranks-per-node G --intra-alpha-us A --intra-beta-gbps B
        node: reduce within each node (G ranks, intra-node alpha/beta), all-reduce among the N/G leaders
        (alpha/beta above), broadcast within the node; flat: one ring over all N ranks at the inter-node alpha/beta;
        auto: the faster of the two
    --skew-ms S                          ranks finish backward apart: S ms of the slowest peer's lag at 2 ranks,
        growing as the expected maximum of N normal lags, sqrt(2 ln N) / sqrt(2 ln 2); added to exposed

The model (per training step, on every rank):
    compute(N)  = k(N) * [ (c1 - o1) * b(N)/b(1) + o1 ]     c1 = step_s - exposed_comm_s, o1 = optimizer_s of np 1
    backward(N) = k(N) * bwd1 * b(N)/b(1)                    b(N) = per-rank batch (weak: b(1); strong: G/N)
    k(N)        = max(1, N * threads / cores)                ranks sharing one host's (effective) cores;
                                                             1 when cores = 0
    t_ar(S, N)  = alpha * 2(N-1) + 2(N-1)/N * S / beta       ring all-reduce of one bucket of S bytes (0 at N=1)
    comm(N)     = sum over buckets of t_ar(S_i, N)           buckets: the sizes the trainer used (metrics
                                                             bucket_bytes of any np > 1 run: closed at layer
                                                             boundaries), else 4*P bytes in bucket_kb KiB slices
    exposed(N)  = comm(N)                                    without overlap
                = max(t_ar(S_last, N), comm(N) - backward(N)) with overlap: the last bucket (the first layers)
                                                             is ready only when backward ends; the others hide
                                                             behind the rest of backward at best
                  + skew(N)                                  skew(N) = S * sqrt(ln N / ln 2) (0 at N = 1)
    compression: S_i -> wire bytes of bucket i (bf16/fp16: S_i / 2; powersgd: S_i * the tensors' compressed /
                 uncompressed bytes, with 2 all-reduces, so 2 latency terms, per bucket)
    hierarchy:  t_node(S, N) = 2 * [a_i (G-1) + (G-1)/G * S / b_i] + t_ar(S, N/G)   (reduce, leaders, broadcast)
    step(N)     = compute(N) + exposed(N)
    images/s    = G(N) / step(N)
    efficiency  = step(1) / step(N) (weak),  step(1) / (N * step(N)) (strong)   (as in src/metrics.c)
Standard library only.
"""
import argparse
import csv
import glob
import json
import math
import os
import re
import sys

# ---------------------------------------------------------------------------------------------------------
# The model


def ring_from_fit(a_us, b_gbps, n):
    """bench_allreduce fits time = a + S/b at n ranks; the ring formula at n gives alpha = a / 2(n-1) and
    beta = b * 2(n-1)/n. Returns (alpha_s, beta_Bps)."""
    if n < 2:
        raise ValueError("the all-reduce fit needs at least 2 ranks")
    hops = 2 * (n - 1)
    return a_us * 1e-6 / hops, b_gbps * 1e9 * hops / n


def buckets(n_params, bucket_kb):
    """Bucket sizes in bytes, in launch order (as train.c cuts the flat gradient buffer)."""
    per = max(1, bucket_kb * 1024 // 4)
    return [4 * min(per, n_params - i) for i in range(0, n_params, per)]


def measured_buckets(data):
    """The bucket sizes (bytes, launch order) a run's metrics report, from the first np > 1 run that has them."""
    for mode in sorted(data):
        for n in sorted(data[mode]):
            sizes = data[mode][n].get("bucket_bytes")
            if n > 1 and sizes:
                return [int(s) for s in sizes]
    return None


def allreduce_s(size_bytes, n, alpha_s, beta_bps):
    if n <= 1:
        return 0.0
    return alpha_s * 2 * (n - 1) + 2 * (n - 1) / n * size_bytes / beta_bps


class Wire:
    """What the all-reduces carry and how (the options of study and comm): compression, hierarchy, skew.
    Wire() is the plain fp32 flat ring with no skew: the model as it was."""

    def __init__(self, compress="none", powersgd_rank=1, tensors=None, hierarchy="flat", ranks_per_node=1,
                 intra_alpha_s=0.0, intra_beta_bps=float("inf"), skew_s=0.0):
        if compress not in ("none", "bf16", "fp16", "powersgd"):
            raise ValueError(f"compress: '{compress}' is not none, bf16, fp16 or powersgd")
        if hierarchy not in ("flat", "node", "auto"):
            raise ValueError(f"hierarchy: '{hierarchy}' is not flat, node or auto")
        if compress == "powersgd" and not tensors:
            raise ValueError("compress powersgd needs the tensors' shapes (--tensors)")
        self.compress, self.hierarchy, self.skew_s = compress, hierarchy, skew_s
        self.ranks_per_node = max(1, int(ranks_per_node))
        self.intra_alpha_s, self.intra_beta_bps = intra_alpha_s, intra_beta_bps
        self.ratio, self.rounds = 1.0, 1  # wire bytes per fp32 byte; all-reduces per bucket
        if compress in ("bf16", "fp16"):
            self.ratio = 0.5
        elif compress == "powersgd":
            full = sum(numel(sh) for sh in tensors)
            self.ratio = sum(powersgd_values(sh, powersgd_rank) for sh in tensors) / full
            self.rounds = 2


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def powersgd_values(shape, r):
    """Values a tensor sends under PowerSGD of rank r: r(m + n) for m x n = shape[0] x the rest (P then Q) when
    that compresses at least 2x (PyTorch's min_compression_rate), else every value; 1-D tensors: every value."""
    if len(shape) < 2:
        return numel(shape)
    m, n = shape[0], numel(shape[1:])
    return r * (m + n) if r * (m + n) * 2 < m * n else m * n


def skew_at(skew_s, n):
    """The slowest peer's lag at n ranks from the lag measured at 2: the expected maximum of n normal lags grows
    as sqrt(2 ln n)."""
    return 0.0 if n <= 1 else skew_s * math.sqrt(math.log(n) / math.log(2))


def bucket_s(size_bytes, n, alpha_s, beta_bps, wire=None):
    """One bucket's all-reduce at n ranks on the wire: compressed bytes in `rounds` all-reduces, one flat ring at
    the inter-node alpha/beta (every hop priced as the slowest), or by node: reduce within each node, all-reduce
    among the leaders, broadcast (one node: an all-reduce on the node's own links)."""
    w = wire or Wire()
    part = size_bytes * w.ratio / w.rounds
    g = w.ranks_per_node
    t = allreduce_s(part, n, alpha_s, beta_bps)
    if w.hierarchy != "flat" and g > 1:
        if n <= g:
            node = allreduce_s(part, n, w.intra_alpha_s, w.intra_beta_bps)
        else:
            intra = w.intra_alpha_s * (g - 1) + (g - 1) / g * part / w.intra_beta_bps
            node = 2 * intra + allreduce_s(part, math.ceil(n / g), alpha_s, beta_bps)
        t = node if w.hierarchy == "node" else min(node, t)
    return w.rounds * t


def step_comm(n, alpha_s, beta_bps, bucket_sizes, overlap, backward, wire=None):
    """(comm, exposed) of one step at n ranks: the buckets one after the other; with overlap all but the last
    can hide behind backward; plus the slowest peer's lag (skew)."""
    w = wire or Wire()
    per_bucket = [bucket_s(s, n, alpha_s, beta_bps, w) for s in bucket_sizes]
    comm = sum(per_bucket)
    if n <= 1:
        return comm, 0.0
    exposed = max(per_bucket[-1], comm - backward) if overlap else comm
    return comm, exposed + skew_at(w.skew_s, n)


def predict(base, n, mode, alpha_s, beta_bps, bucket_sizes, overlap, cores=0, threads=1, wire=None):
    """base: np 1 figures {step_s, exposed_comm_s, backward_s, optimizer_s, batch}. Returns a dict of the
    predicted per-step figures at n ranks (seconds) and the efficiency. wire: compression, hierarchy and skew
    (None: the fp32 flat ring)."""
    b1 = base["batch"]
    bn = b1 if mode == "weak" else b1 / n
    k = max(1.0, n * threads / cores) if cores > 0 else 1.0
    c1 = base["step_s"] - base["exposed_comm_s"]
    o1 = base["optimizer_s"]
    compute = k * ((c1 - o1) * bn / b1 + o1)
    backward = k * base["backward_s"] * bn / b1
    comm, exposed = step_comm(n, alpha_s, beta_bps, bucket_sizes, overlap, backward, wire)
    step = compute + exposed
    step1 = c1  # the model at n = 1
    eff = step1 / step if mode == "weak" else step1 / (n * step)
    gb = bn * n
    return {"step_s": step, "compute_s": compute, "comm_s": comm, "exposed_comm_s": exposed,
            "images_per_s": gb / step, "efficiency": eff}


# ---------------------------------------------------------------------------------------------------------
# Inputs


def read_tensors(path):
    """The gradient tensors' shapes: a .safetensors checkpoint's model tensors (not its running statistics or
    optimizer state), or a text file with one shape per line (64x3x7x7, or 64,3,7,7)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if path.endswith(".safetensors"):
            meta = json.loads(f.read(int.from_bytes(head, "little")))
            skip = ("running_mean", "running_var", "num_batches_tracked")
            return [v["shape"] for k, v in meta.items()
                    if k != "__metadata__" and not k.startswith("optim.") and not k.endswith(skip)]
    shapes = []
    with open(path) as f:
        for ln in f:
            ln = ln.split("#")[0].strip()
            if ln:
                shapes.append([int(d) for d in re.split(r"[x,\s]+", ln) if d])
    if not shapes:
        raise SystemExit(f"perf_model.py: {path}: no tensor shapes")
    return shapes


def wire_of(a):
    """The Wire of the command line's options."""
    try:
        return Wire(a.compress, a.powersgd_rank, read_tensors(a.tensors) if a.tensors else None, a.hierarchy,
                    a.ranks_per_node, a.intra_alpha_us * 1e-6, a.intra_beta_gbps * 1e9, a.skew_ms * 1e-3)
    except ValueError as e:
        raise SystemExit(f"perf_model.py: {e}")


def bucket_kb_of(text):
    """--bucket-kb: KiB, or auto (the trainer's choice: the runs' bucket_bytes; without them 32 KiB slices)."""
    if text == "auto":
        return text
    try:
        kb = int(text)
    except ValueError:
        kb = 0
    if kb < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of KiB or auto")
    return kb


def parse_fit(text):
    m = re.search(r"# fit: alpha_us=([0-9.eE+-]+) beta_GBps=([0-9.eE+-]+|inf)", text)
    if not m:
        raise SystemExit("perf_model.py: no '# fit: alpha_us=... beta_GBps=...' line in the bench_allreduce output")
    return float(m.group(1)), float(m.group(2))


def last_metrics(path):
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    if not lines:
        raise SystemExit(f"perf_model.py: {path}: empty (did the run finish an epoch?)")
    return json.loads(lines[-1])


def runs(directory):
    """{mode: {np: metrics}} from DIR/metrics_<mode>_np<N>.jsonl"""
    out = {}
    for p in glob.glob(os.path.join(directory, "metrics_*_np*.jsonl")):
        m = re.search(r"metrics_(weak|strong)_np(\d+)\.jsonl$", p)
        if m:
            out.setdefault(m.group(1), {})[int(m.group(2))] = last_metrics(p)
    return out


def base_of(m):
    return {"step_s": m["step_s"], "exposed_comm_s": m["exposed_comm_s"], "backward_s": m["backward_s"],
            "optimizer_s": m["optimizer_s"], "batch": m["batch"]}


# ---------------------------------------------------------------------------------------------------------
# Commands


def cmd_ring_fit(a):
    fits = []
    for path in a.bench_output:
        with open(path) as f:
            fits.append(parse_fit(f.read()))
    a_us, b_gbps = min(fits, key=lambda ab: ab[0] + 256 * 1024 / (ab[1] * 1e3))
    alpha_s, beta_bps = ring_from_fit(a_us, b_gbps, a.np)
    print(f"{alpha_s * 1e6:.6g} {beta_bps / 1e9:.6g}")


def cmd_cores(a):
    alone = last_metrics(a.alone)["step_s"]
    together = [last_metrics(p)["step_s"] for p in a.together]
    eff = a.nproc * alone / (sum(together) / len(together))
    print(f"{min(float(a.nproc), max(1.0, eff)):.3f}")


CSV_FIELDS = ["mode", "np", "global_batch", "images_per_s", "images_per_s_per_rank", "step_ms", "compute_ms",
              "comm_ms", "exposed_comm_ms", "efficiency", "efficiency_kind", "model_step_ms", "model_compute_ms",
              "model_comm_ms", "model_exposed_comm_ms", "model_images_per_s", "model_efficiency", "step_rel_err"]


def cmd_study(a):
    alpha_s, beta_bps = a.alpha_us * 1e-6, a.beta_gbps * 1e9
    data = runs(a.dir)
    if not data:
        raise SystemExit(f"perf_model.py: no metrics_<mode>_np<N>.jsonl in {a.dir}")
    sizes = measured_buckets(data)
    bucket_origin = "as the runs' metrics report them (layer boundaries)"
    if sizes is None:
        kb = 32 if a.bucket_kb == "auto" else a.bucket_kb
        sizes = buckets(a.params, kb)
        bucket_origin = f"{kb} KiB slices (no run reports bucket_bytes)"
    wire = wire_of(a)
    rows, errs = [], {"step": [], "images_per_s": [], "efficiency": []}
    for mode in ("strong", "weak"):
        if mode not in data:
            continue
        by_np = data[mode]
        if 1 not in by_np:
            raise SystemExit(f"perf_model.py: {mode}: no np 1 run (the model's input)")
        base = base_of(by_np[1])
        with open(os.path.join(a.dir, f"scaling_{mode}.dat"), "w") as dat:
            dat.write("# np images_per_s model_images_per_s ideal_images_per_s efficiency model_efficiency "
                      "step_ms model_step_ms\n")
            for n in sorted(by_np):
                m = by_np[n]
                p = predict(base, n, mode, alpha_s, beta_bps, sizes, a.overlap, a.cores, a.threads, wire)
                rel = (p["step_s"] - m["step_s"]) / m["step_s"]
                if n > 1:
                    errs["step"].append(abs(rel))
                    errs["images_per_s"].append(abs(p["images_per_s"] - m["images_per_s"]) / m["images_per_s"])
                    errs["efficiency"].append(abs(p["efficiency"] - m["scaling_efficiency"]) /
                                              m["scaling_efficiency"])
                rows.append({
                    "mode": mode, "np": n, "global_batch": m["global_batch"],
                    "images_per_s": f"{m['images_per_s']:.1f}",
                    "images_per_s_per_rank": f"{m['images_per_s_per_rank']:.1f}",
                    "step_ms": f"{m['step_s'] * 1e3:.3f}",
                    "compute_ms": f"{(m['step_s'] - m['exposed_comm_s']) * 1e3:.3f}",
                    "comm_ms": f"{m['comm_s'] * 1e3:.3f}", "exposed_comm_ms": f"{m['exposed_comm_s'] * 1e3:.3f}",
                    "efficiency": f"{m['scaling_efficiency']:.4f}", "efficiency_kind": m["efficiency_kind"],
                    "model_step_ms": f"{p['step_s'] * 1e3:.3f}", "model_compute_ms": f"{p['compute_s'] * 1e3:.3f}",
                    "model_comm_ms": f"{p['comm_s'] * 1e3:.3f}",
                    "model_exposed_comm_ms": f"{p['exposed_comm_s'] * 1e3:.3f}",
                    "model_images_per_s": f"{p['images_per_s']:.1f}", "model_efficiency": f"{p['efficiency']:.4f}",
                    "step_rel_err": f"{rel:+.4f}"})
                ideal = n * by_np[1]["images_per_s"]
                dat.write(f"{n} {m['images_per_s']:.3f} {p['images_per_s']:.3f} {ideal:.3f} "
                          f"{m['scaling_efficiency']:.5f} {p['efficiency']:.5f} {m['step_s'] * 1e3:.4f} "
                          f"{p['step_s'] * 1e3:.4f}\n")
    with open(os.path.join(a.dir, "scaling.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)

    print(f"model: ring alpha = {a.alpha_us:.3f} us, beta = {a.beta_gbps:.3f} GB/s; {len(sizes)} bucket(s) "
          f"{bucket_origin}, {sum(sizes)} bytes for {a.params} parameters; overlap {'on' if a.overlap else 'off'}; "
          f"cores shared by the ranks: {f'{a.cores:g}' if a.cores else 'none'}")
    if vars(wire) != vars(Wire()):
        print(f"wire: compress {a.compress} ({wire.ratio:.4g} of the fp32 bytes, {wire.rounds} all-reduce(s) per "
              f"bucket), hierarchy {a.hierarchy} ({wire.ranks_per_node} rank(s) per node), skew {a.skew_ms:g} ms at 2 ranks")
    print(f"{'mode':6} {'np':>3} {'G':>5} | {'img/s':>8} {'model':>8} | {'step ms':>8} {'model':>8} {'err':>7} | "
          f"{'exposed':>7} {'model':>7} | {'eff':>6} {'model':>6}")
    for r in rows:
        print(f"{r['mode']:6} {r['np']:>3} {r['global_batch']:>5} | {r['images_per_s']:>8} "
              f"{r['model_images_per_s']:>8} | {r['step_ms']:>8} {r['model_step_ms']:>8} "
              f"{float(r['step_rel_err']) * 100:>+6.1f}% | {r['exposed_comm_ms']:>7} {r['model_exposed_comm_ms']:>7} | "
              f"{r['efficiency']:>6} {r['model_efficiency']:>6}")
    if errs["step"]:
        mean = {k: 100 * sum(v) / len(v) for k, v in errs.items()}
        print(f"mean relative error of model vs measurement over {len(errs['step'])} run(s) with np > 1: "
              f"step time {mean['step']:.1f}%, images/s {mean['images_per_s']:.1f}%, "
              f"efficiency {mean['efficiency']:.1f}%")
    else:
        print("mean relative error: no run with np > 1")

    # Extrapolation, weak scaling (per-rank batch fixed), one rank per GPU or per host (no shared cores).
    ref = data.get("weak", data.get("strong"))
    base = base_of(ref[1])
    if a.gpu_baseline:
        gbase = base_of(last_metrics(a.gpu_baseline))
    else:
        c = a.gpu_compute_ms * 1e-3
        gbase = {"step_s": c, "exposed_comm_s": 0.0, "backward_s": c * a.gpu_backward_frac,
                 "optimizer_s": c * 0.05, "batch": base["batch"]}
    g_alpha, g_beta = a.gpu_alpha_us * 1e-6, a.gpu_beta_gbps * 1e9
    with open(os.path.join(a.dir, "scaling_model.dat"), "w") as dat:
        dat.write("# N  measured-alpha/beta: eff_overlap eff_no_overlap step_ms_overlap step_ms_no_overlap  "
                  "GPU-alpha/beta: eff_overlap eff_no_overlap step_ms_overlap step_ms_no_overlap\n")
        print(f"prediction, weak scaling, batch {base['batch']}/rank: measured alpha/beta with this run's np 1 "
              f"compute ({base['step_s'] * 1e3:.2f} ms/step); GPU alpha = {a.gpu_alpha_us:g} us, beta = "
              f"{a.gpu_beta_gbps:g} GB/s with {gbase['step_s'] * 1e3:.3f} ms/step compute")
        print(f"{'N':>5} | {'eff overlap':>11} {'no overlap':>10} | {'GPU overlap':>11} {'no overlap':>10}")
        n = 1
        while n <= a.model_max_n:
            pc = [predict(base, n, "weak", alpha_s, beta_bps, sizes, ov, wire=wire) for ov in (1, 0)]
            pg = [predict(gbase, n, "weak", g_alpha, g_beta, sizes, ov, wire=wire) for ov in (1, 0)]
            dat.write(f"{n} {pc[0]['efficiency']:.6f} {pc[1]['efficiency']:.6f} {pc[0]['step_s'] * 1e3:.5f} "
                      f"{pc[1]['step_s'] * 1e3:.5f} {pg[0]['efficiency']:.6f} {pg[1]['efficiency']:.6f} "
                      f"{pg[0]['step_s'] * 1e3:.5f} {pg[1]['step_s'] * 1e3:.5f}\n")
            if n == 1 or math.log2(n) % 2 == 1 or n == a.model_max_n:
                print(f"{n:>5} | {pc[0]['efficiency']:>11.3f} {pc[1]['efficiency']:>10.3f} | "
                      f"{pg[0]['efficiency']:>11.3f} {pg[1]['efficiency']:>10.3f}")
            n *= 2


def cmd_comm(a):
    sizes = buckets(a.params, 32 if a.bucket_kb == "auto" else a.bucket_kb)
    wire = wire_of(a)
    comm, exposed = step_comm(a.np, a.alpha_us * 1e-6, a.beta_gbps * 1e9, sizes, a.overlap, a.backward_ms * 1e-3,
                              wire)
    print(f"{comm * 1e3:.6g} {exposed * 1e3:.6g} {sum(sizes) * wire.ratio:.0f}")


# ---------------------------------------------------------------------------------------------------------
# The cluster box (launch/bench_comm.sh): 2 nodes, rpn ranks each, every node's link shaped to L Mbit/s.
#
#   step = k * compute + exposed + host
#   compute  the row's own one-node baseline step (rpn ranks on one node, measured by bench_comm.sh) less its
#            exposed communication and its host work (below); k = max(1, 2 rpn / cores) / max(1, rpn / cores):
#            the box's nodes share the machine's cores
#   wire(S)  the seconds one link direction needs for an all-reduce of S bytes (compressed): alpha per
#            all-reduce + d(S) / (L * link_eff), d(S) the bytes the busiest direction of a node's link carries:
#            flat ring of N = 2 rpn ranks: 2(N-1)/N * S (the ring crosses each link once each way); node: the
#            leaders' 2-rank all-reduce, S
#   exposed  plain and bf16/fp16: the buckets one after the other on the link, from the first one's launch; all
#            but the last hide behind backward: max(wire(S_last), sum wire(S_i) - backward). PowerSGD: each bucket
#            is P then Q (2 alphas); P and Q both launched during backward (comm=mpi, flat: Q on its own lane), the
#            same formula; under hierarchy=node the Q's wait for the end of backward: wire(P_last) + sum wire(Q_i)
#   host     the TCP and summation work of the all-reduces, on the machine's cores beside the compute:
#            host_ns_per_byte * (bytes all ranks send) / cores, plus PowerSGD's products (6 m n r FLOP per
#            compressed matrix and rank) at the baseline's GFLOP/s
#   PowerSGD splits its wire bytes P : Q as the tensors' m : n (shape[0] : the rest).
# The link efficiency, alpha and host cost are parameters (docs/benchmarks.md gives the values used and where
# each comes from); nothing is fitted per row.


def psgd_split(tensors, r):
    """(P share, Q share) of PowerSGD's compressed values (uncompressed tensors go with P)."""
    p = q = 0
    for sh in tensors:
        v = powersgd_values(sh, r)
        if len(sh) >= 2 and v != numel(sh):
            p += r * sh[0]
            q += r * numel(sh[1:])
        else:
            p += v
    return p / (p + q), q / (p + q)


def box_rows(directory):
    with open(os.path.join(directory, "rows.csv")) as f:
        return list(csv.DictReader(f))


def steady_of(steps_path, skip):
    """Mean step_s and exposed_comm_s over the steps after the first `skip` (bench_comm.sh's steady: each line's
    figures are the epoch's means so far)."""
    rows = {}
    with open(steps_path) as f:
        for ln in f:
            if ln.strip():
                r = json.loads(ln)
                rows[r["step"]] = r
    last = max(rows)
    k = skip if skip in rows and skip < last else min(rows)
    a, b = rows[k], rows[last]
    n = b["step"] - k
    return {key: (b[key] * b["step"] - a[key] * k) / n for key in ("step_s", "exposed_comm_s")}


def box_predict(row, base, run, tensors, a):
    """The model's step (s) and exposed (s) for one ddp-cnn row of rows.csv."""
    rpn, link = int(row["rpn"]), float(row["link_mbit"])
    n = 2 * rpn
    comp, hier = row["compress"], row["hierarchy"]
    r = int(row.get("powersgd_rank") or 1)
    bps = link * 1e6 / 8 * a.link_eff
    alpha = a.alpha_ms * 1e-3
    sizes = [int(s) for s in run["bucket_bytes"]]
    full = sum(numel(sh) for sh in tensors)
    if comp in ("bf16", "fp16"):
        ratio = 0.5
    elif comp == "powersgd":
        ratio = sum(powersgd_values(sh, r) for sh in tensors) / full
    else:
        ratio = 1.0
    per_dir = 1.0 if (hier == "node" or n == 2) else 2 * (n - 1) / n

    def wire(nbytes, rounds=1):
        return rounds * alpha + per_dir * nbytes / bps

    # Compute: the baseline's rpn ranks on one node, each with a core of its own on a machine of a.cores; the
    # box's 2 rpn ranks share the same cores, so each computes k times slower (as perf_model's study: k(N)).
    k = max(1.0, n / a.cores) / max(1.0, rpn / a.cores)
    backward = k * base["backward_s"]
    psgd_flop = 0.0
    if comp == "powersgd":
        ps, qs = psgd_split(tensors, r)
        pw = [wire(s * ratio * ps) for s in sizes]
        qw = [wire(s * ratio * qs) for s in sizes]
        if hier == "node":
            exposed = pw[-1] + sum(qw)
        else:
            exposed = max(pw[-1] + qw[-1], sum(pw) + sum(qw) - backward)
        # P = M Q, Q = M^T P, M = P Q^T: 6 m n r FLOP per compressed matrix
        psgd_flop = sum(6 * numel(sh) * r for sh in tensors if len(sh) >= 2 and powersgd_values(sh, r) != numel(sh))
    else:
        w = [wire(s * ratio) for s in sizes]
        exposed = max(w[-1], sum(w) - backward)
    # Host work: the TCP and summation of every rank's all-reduces runs on the machine's cores beside the compute
    # (the box's nodes share them): bytes sent per step by all ranks -- flat ring of N: 2(N-1) S; by node: per
    # node the non-leaders' S to the leader and back and the leader's S to the other node, 2 (2 rpn - 1) S; the
    # baseline's rpn ranks: their ring on one node, 2 (rpn - 1) S uncompressed -- times host_ns_per_byte, spread
    # over the cores.
    s_wire = sum(sizes) * ratio
    sent = 2 * (2 * rpn - 1) * s_wire if hier == "node" and rpn > 1 else 2 * (n - 1) * s_wire
    base_sent = 2 * (rpn - 1) * sum(sizes)
    h = a.host_ns_per_byte * 1e-9 / a.cores
    host = h * sent + psgd_flop * n / a.cores / (base["gflop_per_s"] * 1e9)
    compute = k * (base["step_s"] - base["exposed_comm_s"] - h * base_sent)
    return compute + exposed + host, exposed




def cmd_box(a):
    tensors = read_tensors(a.tensors)
    rows = box_rows(a.dir)
    skip = a.skip
    errs = []
    print(f"box model: link efficiency {a.link_eff:g}, alpha {a.alpha_ms:g} ms per all-reduce, host "
          f"{a.host_ns_per_byte:g} ns per byte sent, {a.cores:g} cores")
    print(f"{'link':>6} {'rpn':>3} {'compress':>9} {'hier':>5} {'r':>2} {'batch':>5} | {'step ms':>9} {'model':>9} "
          f"{'err':>7} | {'exposed':>8} {'model':>8} | {'eff':>6} {'model':>6}")
    for row in rows:
        if row["impl"] != "ddp-cnn":
            continue
        tag = f"ours-{row['link_mbit']}-{row['rpn']}-{row['compress']}-{row['hierarchy']}"
        run = last_metrics(os.path.join(a.dir, tag + ".jsonl"))
        bpath = os.path.join(a.dir, f"base-ours-{row['rpn']}")
        if not os.path.exists(bpath + ".steps.jsonl"):
            bpath = os.path.join(a.dir, "base-ours")  # bench_comm.sh before one-node baselines per rpn
        base = steady_of(bpath + ".steps.jsonl", 2)
        bm = last_metrics(bpath + ".jsonl")
        base["backward_s"], base["gflop_per_s"] = bm["backward_s"], bm["gflop_per_s"]
        step, exposed = box_predict(row, base, run, tensors, a)
        meas = float(row["step_ms"]) * 1e-3
        rel = (step - meas) / meas
        errs.append(abs(rel))
        print(f"{row['link_mbit']:>6} {row['rpn']:>3} {row['compress']:>9} {row['hierarchy']:>5} "
              f"{row.get('powersgd_rank') or '-':>2} {row.get('batch') or '-':>5} | {meas * 1e3:>9.1f} "
              f"{step * 1e3:>9.1f} {rel * 100:>+6.1f}% | {float(row['exposed_ms']):>8.1f} {exposed * 1e3:>8.1f} | "
              f"{float(row['eff']):>6.3f} {base['step_s'] / step:>6.3f}")
    if not errs:
        raise SystemExit(f"perf_model.py: no ddp-cnn rows in {a.dir}/rows.csv")
    print(f"step time: mean relative error {100 * sum(errs) / len(errs):.1f}%, largest {100 * max(errs):.1f}% "
          f"over {len(errs)} rows ({sum(e <= 0.15 for e in errs)} within 15%)")
    del skip
    # The same wire model at GPU-cluster scale (docs/clusters.md): 8 GPUs per node joined by NVLink, the node's
    # GPUs each with their own NIC (a) or sharing one (b); weak scaling at this run's per-rank batch, GPU compute
    # = the box's FLOP per step (its np 1 baseline's GFLOP/s x step, unless given) at F_gpu.
    if a.step_gflop <= 0:
        b1 = os.path.join(a.dir, "base-ours-1")
        if not os.path.exists(b1 + ".jsonl"):
            b1 = os.path.join(a.dir, "base-ours")
        m1 = last_metrics(b1 + ".jsonl")
        a.step_gflop = m1["gflop_per_s"] * m1["step_s"]
    flop = a.step_gflop * 1e9
    c = flop / (a.gpu_tflops * 1e12)
    print(f"extrapolation: {a.step_gflop:g} GFLOP per rank and step at {a.gpu_tflops:g} TFLOP/s = "
          f"{c * 1e3:.3f} ms compute, {a.gpu_backward_frac:g} of it backward; 8 GPUs per node (NVLink "
          f"{a.nvlink_gbps:g} GB/s, 5 us), hierarchy node, NCCL's ring between the nodes (alpha {a.gpu_alpha_us:g} us) at "
          f"(a) 8 x 400 Gbit/s or (b) 100 Gbit/s per node, 25 MiB buckets")
    full = 4 * sum(numel(sh) for sh in tensors)
    print(f"{'GPUs':>5} | " + " ".join(f"{l + ' ' + cp:>14}" for l in ("(a)", "(b)")
                                       for cp in ("none", "bf16", f"psgd r{a.powersgd_rank}")))
    for n in (64, 128, 256, 512, 1024):
        effs = []
        # the leaders' ring runs at the node's inter-node bandwidth: (a) its 8 NICs of 400 Gbit/s (NCCL drives
        # them all), (b) its one 100 Gbit/s Ethernet
        for link_gbps in (8 * 400.0, 100.0):
            for cp in ("none", "bf16", "powersgd"):
                wire = Wire(cp, a.powersgd_rank, tensors, "node", 8, 5e-6, a.nvlink_gbps * 1e9)
                sizes = buckets(full // 4, 25 * 1024)
                _, exposed = step_comm(n, a.gpu_alpha_us * 1e-6, link_gbps / 8 * 1e9, sizes, 1,
                                       c * a.gpu_backward_frac, wire)
                effs.append(c / (c + exposed))
        print(f"{n:>5} | " + " ".join(f"{e:>14.3f}" for e in effs))


def add_box_options(p):
    p.add_argument("--dir", required=True, help="bench_comm.sh's --out")
    p.add_argument("--tensors", required=True, help="the gradient tensors' shapes: a .safetensors checkpoint or text")
    p.add_argument("--link-eff", type=float, default=0.83,
                   help="all-reduce goodput / shaped rate (docs/benchmarks.md: from the box at 20 Mbit/s)")
    p.add_argument("--alpha-ms", type=float, default=0.05,
                   help="fixed cost of one all-reduce across the box (the bucket_kb=auto probe's at 20 Mbit/s)")
    p.add_argument("--host-ns-per-byte", type=float, default=5.4,
                   help="a rank's CPU time per byte it sends (TCP, summation), competing with its compute")
    p.add_argument("--cores", type=float, default=2, help="the machine's cores, which the box's nodes share")
    p.add_argument("--skip", type=int, default=2)
    p.add_argument("--step-gflop", type=float, default=0.0,
                   help="GFLOP per rank and step for the extrapolation (default: the np 1 baseline's)")
    p.add_argument("--gpu-tflops", type=float, default=400.0)
    p.add_argument("--gpu-backward-frac", type=float, default=0.67)
    p.add_argument("--gpu-alpha-us", type=float, default=10.0, help="per-hop latency between nodes (NCCL)")
    p.add_argument("--nvlink-gbps", type=float, default=450.0, help="NVLink bandwidth per GPU, GB/s")
    p.add_argument("--powersgd-rank", type=int, default=4, help="the extrapolation's PowerSGD rank")


def add_wire_options(p):
    p.add_argument("--compress", default="none", help="none | bf16 | fp16 | powersgd")
    p.add_argument("--powersgd-rank", type=int, default=1)
    p.add_argument("--tensors", help="the gradient tensors' shapes: a .safetensors checkpoint or a text file")
    p.add_argument("--hierarchy", default="flat", help="flat | node | auto")
    p.add_argument("--ranks-per-node", type=int, default=1)
    p.add_argument("--intra-alpha-us", type=float, default=0.0, help="latency within a node (hierarchy)")
    p.add_argument("--intra-beta-gbps", type=float, default=float("inf"), help="bandwidth within a node")
    p.add_argument("--skew-ms", type=float, default=0.0, help="the slowest peer's lag at 2 ranks")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("ring-fit", help="bench_allreduce fit -> ring alpha (us) and beta (GB/s)")
    r.add_argument("np", type=int, help="ranks bench_allreduce ran with")
    r.add_argument("bench_output", nargs="+")
    c = sub.add_parser("cores", help="effective cores from np 1 runs alone and together")
    c.add_argument("nproc", type=int)
    c.add_argument("alone")
    c.add_argument("together", nargs="+")
    s = sub.add_parser("study", help="model vs measured runs: scaling.csv, .dat files, error")
    s.add_argument("--dir", required=True)
    s.add_argument("--params", type=int, required=True, help="model parameters (the trainer prints them)")
    s.add_argument("--bucket-kb", type=bucket_kb_of, default=256)
    s.add_argument("--overlap", type=int, default=1, choices=(0, 1))
    s.add_argument("--alpha-us", type=float, required=True, help="ring per-hop latency")
    s.add_argument("--beta-gbps", type=float, required=True, help="ring link bandwidth")
    s.add_argument("--cores", type=float, default=0, help="cores the ranks share on one host (0: not shared)")
    s.add_argument("--threads", type=int, default=1, help="threads per rank (with --cores)")
    s.add_argument("--gpu-alpha-us", type=float, default=10.0)
    s.add_argument("--gpu-beta-gbps", type=float, default=150.0)
    s.add_argument("--gpu-compute-ms", type=float, default=0.5, help="GPU step compute time (assumed)")
    s.add_argument("--gpu-backward-frac", type=float, default=0.6, help="share of it in backward (assumed)")
    s.add_argument("--gpu-baseline", help="metrics of an np 1 GPU run: its compute replaces the two above")
    s.add_argument("--model-max-n", type=int, default=1024)
    add_wire_options(s)
    m = sub.add_parser("comm", help="one step's communication at N ranks under the wire options")
    m.add_argument("--params", type=int, required=True)
    m.add_argument("--np", type=int, required=True)
    m.add_argument("--bucket-kb", type=bucket_kb_of, default=32)
    m.add_argument("--alpha-us", type=float, required=True)
    m.add_argument("--beta-gbps", type=float, required=True)
    m.add_argument("--overlap", type=int, default=1, choices=(0, 1))
    m.add_argument("--backward-ms", type=float, default=0.0, help="backward's time (what overlap hides behind)")
    add_wire_options(m)
    b = sub.add_parser("box", help="the cluster box's rows (bench_comm.sh) against the model, and at GPU scale")
    add_box_options(b)
    a = ap.parse_args()
    if a.cmd == "ring-fit":
        cmd_ring_fit(a)
    elif a.cmd == "cores":
        cmd_cores(a)
    elif a.cmd == "comm":
        cmd_comm(a)
    elif a.cmd == "box":
        cmd_box(a)
    else:
        cmd_study(a)


if __name__ == "__main__":
    sys.exit(main())
