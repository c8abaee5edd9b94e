"""Wall time and peak memory of one optimiser step: exact GN vs Adam vs SGD vs gn_naive (issue 2 benchmark).

Side by side in one process, on the same data and the same initial model: for each configuration every optimiser
gets its own copy of the model and the rounds are interleaved (GN, Adam, SGD, GN, Adam, …), so a load spike on a
shared machine hits all of them alike; the table reports the median over rounds. gn_naive (full Jacobian + float64
lstsq) runs once per configuration where its Jacobian fits the memory budget, and on extra small sizes.
Times come from a first pass under the normal allocator; peak memory from a second pass in a child process (two
rounds each), because measuring it on CPU needs an allocator setting that slows allocation-heavy steps (GN's more
than Adam's).

Peak memory = the optimiser's footprint beyond the model and the batch: what it keeps between steps (.grad tensors
and Adam's moments; nothing for GN) plus the increase of the peak during the step — the process' RSS high-water
mark on CPU (Linux /proc/self/status VmHWM, reset through /proc/self/clear_refs), torch.cuda.max_memory_allocated
above the pre-step allocation on CUDA. Approximate on CPU (page granularity, allocator behaviour).

    python bench/gn_step.py --quick            # < 2 min on 2 CPU cores
    python bench/gn_step.py                    # the full grid n∈{256,1024} × d∈{64,784} × h∈{1024,2048} × L∈{2,6}
    python bench/gn_step.py --device cuda --paper   # + the paper's sizes (make gpu-check runs this)
    python bench/gn_step.py --quick --data mnist5k   # real images for the d=784 rows (n ≤ 4000)
    python bench/gn_step.py --smoke            # tiny sizes, seconds: every code path runs (make test runs it)

After the table, "solver paths" (issue 16): GN/Adam at the target shape for the default path, the exact all-ReLU
path (regularizer=none) and damping, each with optimizer.solver=auto and =eigh, and at L = 6, d = 64 — Adam and
every GN variant of a model interleaved in the same rounds.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from revgn_cli.models import RevMLP  # noqa: E402
from revgn_cli.optim import Regularizer, gn_naive, make_optimizer  # noqa: E402
from revgn_cli.optim.pinv import solver_path  # noqa: E402

GRID = list(itertools.product((256, 1024), (64, 784), (1024, 2048), (2, 6)))  # (n, d, h, L)
QUICK = [(1024, 784, 2048, 2), (256, 784, 1024, 2), (1024, 64, 1024, 6)]
NAIVE_EXTRA_FULL = [(16, 64, 256, 2), (32, 64, 256, 2), (64, 64, 256, 2)]
NAIVE_EXTRA_QUICK = [(16, 64, 256, 2)]
SMOKE = [(32, 16, 64, 2)]  # --smoke: also stands in for the target, so the floor parts run too
NAIVE_EXTRA_SMOKE = [(8, 16, 32, 2)]
TARGET = (1024, 784, 2048, 2)
GN_OPT = ({"name": "gn", "lr": 0.5, "combine": "sum"}, {"name": "truncation", "rtol": 1e-2, "atol": 1e-5})
ADAM_OPT = ({"name": "adam", "lr": 1e-4}, None)
# Solver-path rows (issue 16): (shape, model kwargs, label, regulariser, targets' GN/Adam bound); each GN variant
# runs with optimizer.solver=auto and =eigh.
PATH_ROWS = [
    (TARGET, {}, "default (linear 1st block)", GN_OPT[1], 3.0),
    (TARGET, {"first_block_linear": False}, "exact, all-ReLU", {"name": "none"}, 4.0),
    (TARGET, {}, "default (linear 1st block)", {"name": "damping", "damping": 1e-3}, None),
    ((1024, 64, 1024, 6), {}, "default (linear 1st block)", GN_OPT[1], 15.0),
]
SMOKE_PATH_SHAPES = {TARGET: SMOKE[0], (1024, 64, 1024, 6): (32, 16, 64, 6)}
SGD_OPT = ({"name": "sgd", "lr": 0.1}, None)
# Damped inexact GN (revgn_cli/optim/damped.py): a fixed 10 CG iterations (cg_tol 0) per GGN-CG step; K-FAC refreshing
# its factors every step (curvature_every 1, the worst case; the gn_family study's setting).
GGN_CG_OPT = ({"name": "ggn_cg", "lr": 1.0, "damping": 1e-3, "cg_iters": 10, "cg_tol": 0.0}, None)
KFAC_OPT = ({"name": "kfac", "lr": 1.0, "damping": 0.1, "curvature_every": 1}, None)
PAPER = [(1024, 784, 8000, 2), (1024, 3072, 8000, 6)]  # --paper: h = 8000, n = 1024 at the MNIST and CIFAR shapes


# ---------------------------------------------------------------------------------------------------------------
# peak memory


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def _return_freed_memory_to_os() -> bool:
    """glibc keeps freed blocks below a *dynamic* mmap threshold (up to 32 MiB) in its heap, so RSS would not show
    a step's transient buffers once an earlier step has grown the heap. Fixing the threshold at 128 KiB makes every
    large tensor its own mmap, returned to the OS on free: the RSS high-water mark then measures the step."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 128 * 1024)) and bool(libc.mallopt(m_trim_threshold, 128 * 1024))
    except OSError:
        return False


def plain_timer(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(seconds, nan): wall time under the normal allocator, for the timing pass."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, float("nan")


class PeakMemory:
    """Peak memory increase (bytes) during a call, on CPU (RSS high-water mark) or CUDA (allocator peak)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_ok = device.type == "cpu" and os.path.exists("/proc/self/clear_refs") and _return_freed_memory_to_os()

    def measure(self, fn: Callable[[], object]) -> tuple[float, float]:
        """(seconds, peak extra bytes or nan)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            return dt, float(torch.cuda.max_memory_allocated() - base)
        if self.cpu_ok:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS
            base = _status_kib("VmRSS")
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            return dt, 1024.0 * (_status_kib("VmHWM") - base)
        return plain_timer(fn, self.device)


# ---------------------------------------------------------------------------------------------------------------


def persistent_bytes(opt) -> int:
    """Memory an optimiser keeps between steps besides the model: .grad tensors and torch.optim state (Adam's two
    moments); 0 for GN, which is stateless. Added to the in-step increase, which cannot see it."""
    if hasattr(opt, "held_bytes"):  # K-FAC: its Kronecker factors and their cached eigendecompositions
        return opt.held_bytes()
    inner = getattr(opt, "optimizer", None)
    if inner is None:
        return 0
    total = 0
    for group in inner.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                total += p.grad.numel() * p.grad.element_size()
            for v in inner.state.get(p, {}).values():
                if torch.is_tensor(v):
                    total += v.numel() * v.element_size()
    return total


def naive_bytes(n: int, d: int, h: int, L: int) -> int:
    """Rough peak of gn_naive: the Jacobian in float32 (jacrev) + float64 copy + lstsq (gelsd) workspace copy."""
    entries = n * d * L * d * (h + 1)
    return entries * (4 + 8 + 8)


def inputs_and_model(cfg, args, device, dtype) -> tuple[torch.Tensor, torch.Tensor, RevMLP]:
    """The batch (x [n, d], one-hot t [n, 10]) and the initial model every optimiser of a configuration starts from."""
    n, d, h, L = cfg
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen)
    t = torch.nn.functional.one_hot(torch.randint(0, 10, (n,), generator=gen), 10)
    if args.data == "mnist5k" and d == 784:  # real images: their Grams are far from full rank (most of Σ is cut)
        from revgn_cli.data import load_dataset

        ds = load_dataset("mnist5k")
        x, t = ds.x_train[:n], torch.nn.functional.one_hot(ds.y_train[:n], 10)
    model = RevMLP(d, L, h, seed=0).to(device=device, dtype=dtype)
    return x.to(device=device, dtype=dtype), t.to(device=device, dtype=dtype), model


def run_config(cfg, args, device, dtype, measure: Callable[[Callable[[], object]], tuple[float, float]],
               repeats: int) -> dict:
    """One configuration: median seconds and peak extra bytes per optimiser over ``repeats`` interleaved rounds."""
    n, d, h, L = cfg
    x, t, base = inputs_and_model(cfg, args, device, dtype)
    row: dict = {"n": n, "d": d, "h": h, "L": L, "params": base.n_trainable()}
    opts = {}
    for name, (o, r) in (("gn", GN_OPT), ("adam", ADAM_OPT), ("sgd", SGD_OPT), ("ggn_cg", GGN_CG_OPT),
                         ("kfac", KFAC_OPT)):
        model = copy.deepcopy(base)
        opts[name] = make_optimizer(model, o, r)
    times: dict[str, list[float]] = {k: [] for k in opts}
    peaks: dict[str, float] = {k: 0.0 for k in opts}
    for name, opt in opts.items():  # warm-up (allocator, lazy init, QR cache)
        opt.step(x, t)
    for _ in range(repeats):
        for name, opt in opts.items():
            held = persistent_bytes(opt)
            dt, pk = measure(lambda: opt.step(x, t))
            times[name].append(dt)
            peaks[name] = max(peaks[name], pk + held)
    for name in opts:
        row[f"{name}_s"] = statistics.median(times[name])
        row[f"{name}_mem"] = peaks[name]
    need = naive_bytes(n, d, h, L)
    row["naive_s"], row["naive_mem"], row["naive_note"] = float("nan"), float("nan"), ""
    if need > args.naive_mem_gb * 2**30:
        row["naive_note"] = f"skip: J needs ~{need / 2**30:.0f} GiB"
    else:
        model = copy.deepcopy(base)
        row["naive_s"], row["naive_mem"] = measure(lambda: gn_naive(model, x, t))
    return row


def floor_parts(cfg, args, device, dtype) -> dict[str, float]:
    """Seconds of the parts every exact GN step at this size must do, timed alone (median of ``args.repeats``):
    the forward plus the one inverse-network JVP (targets and activations), the n×n Grams of the ReLU half-layers,
    and their float64 eigh — what GN/Adam cannot go below without giving up exactness or the no-stored-activations
    design."""
    from revgn_cli.optim import gn as gn_mod
    from revgn_cli.optim.pinv import _gram

    x, _, model = inputs_and_model(cfg, args, device, dtype)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)

    def passes():
        # A real step meets new weights: drop the half-layers' C Wᵀ memo (HalfLayer.linear_map) so each timed
        # pass forms it, as a step does.
        for m in model.modules():
            if hasattr(m, "_map_memo"):
                m._map_memo = None
        with torch.no_grad():
            return gn_mod._targets_and_activations(model, gn_mod._features(model, x), eps)

    feats = [f for _, acts in passes() for f in (acts[1], acts[3]) if f is not None and f.shape[0] <= f.shape[1] + 1]
    grams = [_gram(f, True).to(torch.float64) for f in feats]
    parts = {
        "passes": lambda: passes(),
        "grams": lambda: [_gram(f, True) for f in feats],
        "eigh": lambda: [torch.linalg.eigh(g) for g in grams],
    }
    out = {}
    for name, fn in parts.items():
        fn()
        out[name] = statistics.median(plain_timer(fn, device)[0] for _ in range(args.repeats))
    out["n_grams"] = len(grams)
    return out


def run_paths(args, device, dtype) -> list[dict]:
    """PATH_ROWS: per (shape, model), Adam and each GN variant (solver auto / eigh) in interleaved rounds."""
    groups: dict[tuple, list] = {}
    for shape, kw, label, reg, bound in PATH_ROWS:
        shape = SMOKE_PATH_SHAPES[shape] if args.smoke else shape
        groups.setdefault((shape, tuple(sorted(kw.items())), label), []).append((reg, None if args.smoke else bound))
    rows = []
    for (shape, kw, label), regs in groups.items():
        n, d, h, L = shape
        x, t, _ = inputs_and_model(shape, args, device, dtype)
        base = RevMLP(d, L, h, seed=0, **dict(kw)).to(device=device, dtype=dtype)
        opts = {("adam", "", ""): make_optimizer(copy.deepcopy(base), *ADAM_OPT)}
        for reg, bound in regs:
            for solver in ("auto", "eigh"):
                if solver == "eigh" and solver_path(Regularizer.from_mapping(reg)) is None:
                    continue  # auto is eigh for this filter
                opts[("gn", reg["name"], solver)] = make_optimizer(copy.deepcopy(base), {**GN_OPT[0], "solver": solver},
                                                                   reg)
        times = {k: [] for k in opts}
        for opt in opts.values():  # warm-up
            opt.step(x, t)
        for _ in range(args.repeats):
            for k, opt in opts.items():
                times[k].append(plain_timer(lambda: opt.step(x, t), device)[0])
        adam = statistics.median(times[("adam", "", "")])
        bounds = {reg["name"]: bound for reg, bound in regs}
        for k in opts:
            if k[0] == "gn":
                gn_s = statistics.median(times[k])
                rows.append({"shape": shape, "model": label, "reg": k[1], "solver": k[2], "gn_s": gn_s, "adam_s": adam,
                             "bound": bounds.get(k[1]) if k[2] == "auto" else None})
    return rows


def print_head(head: str) -> None:
    print(head)
    print("─" * len(head))


def print_paths(rows: list[dict]) -> None:
    head = (f"{'n':>5} {'d':>4} {'h':>5} {'L':>2}  {'model':<27} {'regularizer':<11} {'solver':<6} │ {'GN s':>7}"
            f" {'Adam s':>7} │ {'GN/Adam':>7}  target")
    print_head(head)
    for r in rows:
        n, d, h, L = r["shape"]
        ratio = r["gn_s"] / r["adam_s"]
        tgt = "" if r["bound"] is None else f"≤ {r['bound']:g}: {'met' if ratio <= r['bound'] else 'MISSED'}"
        print(f"{n:5d} {d:4d} {h:5d} {L:2d}  {r['model']:<27} {r['reg']:<11} {r['solver']:<6} │ {r['gn_s']:7.3f}"
              f" {r['adam_s']:7.3f} │ {ratio:7.2f}  {tgt}")


def fmt_mem(b: float) -> str:
    return "   n/a" if b != b else f"{b / 2**20:6.0f}"


def print_table(rows: list[dict]) -> None:
    head = (f"{'n':>5} {'d':>4} {'h':>5} {'L':>2} {'|θ|':>9} │ {'GN s':>7} {'Adam s':>7} {'SGD s':>7} {'naive s':>8} │"
            f" {'GN/Adam':>7} {'naive/GN':>8} │ {'GN MiB':>6} {'Adam':>6} {'SGD':>6} {'naive':>6}  note")
    print_head(head)
    for r in rows:
        naive = "      -" if r["naive_s"] != r["naive_s"] else f"{r['naive_s']:8.3f}"
        ratio = "       -" if r["naive_s"] != r["naive_s"] else f"{r['naive_s'] / r['gn_s']:8.0f}"
        print(f"{r['n']:5d} {r['d']:4d} {r['h']:5d} {r['L']:2d} {r['params']:9d} │ {r['gn_s']:7.3f} {r['adam_s']:7.3f}"
              f" {r['sgd_s']:7.3f} {naive:>8} │ {r['gn_s'] / r['adam_s']:7.2f} {ratio} │ {fmt_mem(r['gn_mem'])}"
              f" {fmt_mem(r['adam_mem'])} {fmt_mem(r['sgd_mem'])} {fmt_mem(r['naive_mem'])}  {r['naive_note']}")


def print_damped_table(rows: list[dict]) -> None:
    """GGN-CG and K-FAC beside GN and Adam (same rounds, same data)."""
    head = (f"{'n':>5} {'d':>4} {'h':>5} {'L':>2} │ {'GGN-CG s':>8} {'K-FAC s':>8} │ {'GGN-CG/Adam':>11} {'K-FAC/Adam':>10}"
            f" {'GGN-CG/GN':>9} {'K-FAC/GN':>8} │ {'GGN-CG MiB':>10} {'K-FAC MiB':>9}")
    print_head(head)
    for r in rows:
        print(f"{r['n']:5d} {r['d']:4d} {r['h']:5d} {r['L']:2d} │ {r['ggn_cg_s']:8.3f} {r['kfac_s']:8.3f} │"
              f" {r['ggn_cg_s'] / r['adam_s']:11.1f} {r['kfac_s'] / r['adam_s']:10.1f} {r['ggn_cg_s'] / r['gn_s']:9.1f}"
              f" {r['kfac_s'] / r['gn_s']:8.1f} │ {fmt_mem(r['ggn_cg_mem']):>10} {fmt_mem(r['kfac_mem']):>9}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 configurations (incl. the target) + 1 naive size")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round: checks that every path runs")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per config (default 3 quick, 5 full)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--data", default="randn", choices=("randn", "mnist5k"),
                    help="inputs: Gaussian (default), or the first n mnist5k training images for the d=784 rows")
    ap.add_argument("--memory-pass", action="store_true", help=argparse.SUPPRESS)  # internal: the child process
    ap.add_argument("--naive-mem-gb", type=float, default=3.0, help="skip gn_naive above this estimated peak")
    ap.add_argument("--paths-only", action="store_true", help="only the solver-path rows (issue 16), not the grid")
    ap.add_argument("--paper", action="store_true", help="add the paper's sizes (h=8000, n=1024; for a GPU)")
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 3 if args.quick else 5
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda" if use_cuda else "cpu")
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"# device: {name}; dtype {args.dtype}; data {args.data}; torch {torch.__version__}; "
          f"repeats {args.repeats} (median); "
          f"load avg at start {load[0]:.2f}")
    print("# GN = GaussNewton(lr 0.5, sum, truncation rtol 1e-2 atol 1e-5) — the paper preset; Adam/SGD = torch.optim"
          " with backprop; naive = gn_naive (jacrev + float64 lstsq).")
    if dev.type == "cpu" and torch.get_num_threads() > 1 and load[0] > 0.5 * (os.cpu_count() or 1):
        print(f"# WARNING: load {load[0]:.1f} on {os.cpu_count()} cores. Multi-threaded LAPACK eigh (GN's n×n solves)"
              " slows down far more than BLAS under contention (5-20× measured): prefer --threads 1 here, or"
              " OMP_WAIT_POLICY=PASSIVE.")
    configs = SMOKE if args.smoke else QUICK if args.quick else GRID
    extra = NAIVE_EXTRA_SMOKE if args.smoke else NAIVE_EXTRA_QUICK if args.quick else NAIVE_EXTRA_FULL
    target = SMOKE[0] if args.smoke else TARGET
    rows = []
    t0 = time.perf_counter()
    # Two passes: times under the normal allocator here; peak memory in a fresh child process, which needs an
    # allocator setting from its start (one mmap per large tensor, see PeakMemory) that slows allocation-heavy
    # steps and cannot be undone.
    cfgs = [*extra, *configs, *(PAPER if args.paper else [])]
    if args.paths_only:
        print()
        print_paths(run_paths(args, dev, dtype))
        print(f"# total {time.perf_counter() - t0:.0f}s; load avg at end {os.getloadavg()[0]:.2f}")
        return 0
    if args.memory_pass:
        mem = PeakMemory(dev)
        peaks = [{k: v for k, v in run_config(c, args, dev, dtype, mem.measure, 2).items() if k.endswith("_mem")}
                 for c in cfgs]
        print("MEMORY " + json.dumps(peaks))
        return 0
    for cfg in cfgs:
        rows.append(run_config(cfg, args, dev, dtype, lambda fn: plain_timer(fn, dev), args.repeats))
        print(f"#   timed n={cfg[0]} d={cfg[1]} h={cfg[2]} L={cfg[3]} ({time.perf_counter() - t0:.0f}s)", flush=True)
    child = subprocess.run([sys.executable, __file__, "--memory-pass", *(argv if argv is not None else sys.argv[1:])],
                           capture_output=True, text=True)
    lines = [ln for ln in child.stdout.splitlines() if ln.startswith("MEMORY ")]
    if child.returncode != 0 or not lines:
        print(f"# memory pass failed (rc {child.returncode}): {child.stderr.strip()[-500:]}")
        if args.smoke:  # the smoke run exists to notice a path that no longer runs
            return 1
    else:
        for row, peak in zip(rows, json.loads(lines[-1][len("MEMORY "):])):
            row.update(peak)
    print(f"#   memory pass done ({time.perf_counter() - t0:.0f}s)", flush=True)
    print()
    print_table(rows)
    print("\n# damped GN: GGN-CG (10 CG iterations on curvlinops GGN mat-vecs) and K-FAC (factors every step)")
    print_damped_table(rows)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\n# total {time.perf_counter() - t0:.0f}s; load avg at end {load[0]:.2f}")
    tgt = [r for r in rows if (r["n"], r["d"], r["h"], r["L"]) == target]
    if tgt:
        r = tgt[0]
        print(f"# target GN/Adam ≤ 3 at n={target[0]} d={target[1]} h={target[2]} L={target[3]}: "
              f"{r['gn_s'] / r['adam_s']:.2f}")
        fl = floor_parts(target, args, dev, dtype)
        a = r["adam_s"]
        print(f"#   parts of every exact GN step there, in Adam steps: forward + inverse JVP {fl['passes'] / a:.2f}, "
              f"{fl['n_grams']} n×n Grams {fl['grams'] / a:.2f}, their float64 eigh {fl['eigh'] / a:.2f} → "
              f"{(fl['passes'] + fl['grams'] + fl['eigh']) / a:.2f} before any solve product")
    nv = [r for r in rows if r["naive_s"] == r["naive_s"]]
    if nv:
        big = max(nv, key=lambda r: r["params"] * r["n"] * r["d"])
        print(f"# target naive/GN ≥ 100 at the largest naive size (n={big['n']} d={big['d']} h={big['h']} "
              f"L={big['L']}): {big['naive_s'] / big['gn_s']:.0f}")
    print("\n# solver paths (issue 16): Adam and every GN variant of a model interleaved, median of rounds")
    print_paths(run_paths(args, dev, dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
