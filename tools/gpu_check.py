"""`make gpu-check`: the GPU suite and the step bench on a machine with a CUDA build of torch, in one command.

Such a machine may be offline and may already hold torch (any CUDA build ≥ 2.11) with some of revgn's other
dependencies. So, standard library only:
 1. find a python whose torch sees a CUDA device (--python, $GPU_PYTHON, python3, python); none: one line, exit 3
    (`make gpu-check` then fails: a check that ran nothing must never read as a pass);
 2. make `.gpu-env`, a venv that sees that python's packages (torch is never reinstalled or upgraded) and install
    into it only the requirements that are missing — from --wheels DIR (no index) when given, else from the index;
 3. install the project itself there without dependencies (editable; a .pth to the source tree if pip cannot);
 4. run tests/test_cuda.py and `bench/gn_step.py --device cuda --paper`, then print one summary.
The whole check is meant to finish in under 5 minutes on one GPU; --budget-s stops it beyond that.

`make gpu-wheels` (--download DIR) fetches those requirements for another Python/platform on a connected machine:
wheels where PyPI has them, pure-Python sdists (antlr4-python3-runtime) built into wheels here.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = 3  # exit status when no python here has a CUDA torch
PROBE = ("import json, sys\n"
         "try:\n import torch\nexcept Exception as e:\n print(json.dumps({'torch': None, 'exe': sys.executable})); sys.exit()\n"
         "c = torch.cuda.is_available()\n"
         "print(json.dumps({'torch': torch.__version__, 'cuda': c, 'cuda_version': torch.version.cuda,\n"
         "  'gpu': torch.cuda.get_device_name(0) if c else None, 'python': sys.version.split()[0],\n"
         "  'exe': sys.executable}))\n")


def say(msg: str) -> None:
    print(f"gpu-check: {msg}", flush=True)


def requirements() -> list[str]:
    """pyproject's dependencies and dev extras, torch left out (the machine's own build is used)."""
    text = (ROOT / "pyproject.toml").read_text()
    reqs = []
    for block in re.findall(r'(?:^dependencies|^dev)\s*=\s*\[(.*?)\]', text, flags=re.S | re.M):
        reqs += re.findall(r'"([^"]+)"', block)
    return [r for r in reqs if _name(r) != "torch"]


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def probe(python: str) -> dict | None:
    try:
        out = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def find_python(args: argparse.Namespace) -> tuple[str, dict]:
    cands = [args.python, os.environ.get("GPU_PYTHON"), shutil.which("python3"), shutil.which("python")]
    seen: list[str] = []
    for c in cands:
        if c and c not in seen:
            seen.append(c)
    found: dict[str, str] = {}  # interpreter → why not (python3 and python are often the same one)
    for c in seen:
        info = probe(c)
        if info and info.get("torch") and (info["cuda"] or args.allow_cpu):
            return c, info
        exe = os.path.realpath((info or {}).get("exe") or c)
        found[exe] = "no torch" if not info or not info.get("torch") else f"torch {info['torch']}, no CUDA device"
    say("no CUDA device here (" + "; ".join(f"{k}: {v}" for k, v in found.items()) + ") — nothing was run")
    sys.exit(NO_CUDA)


def make_env(python: str, env: Path) -> str:
    """A venv without pip whose interpreter also sees everything ``python`` sees (a .pth that adds its sys.path
    directories as site dirs, so their own .pth files — editable installs — count too), after the venv's own
    site-packages: its torch and packages are used as they are, and installs land in the venv only."""
    py = env / "bin" / "python"
    if not py.exists():
        subprocess.run([python, "-m", "venv", "--without-pip", str(env)], check=True)
    dirs = subprocess.run([python, "-c", "import json, os, sys; print(json.dumps([p for p in sys.path "
                           "if p and os.path.isdir(p)]))"], capture_output=True, text=True, check=True).stdout
    site_dir = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    (Path(site_dir) / "zz_gpu_check_base.pth").write_text(
        f"import site; list(map(site.addsitedir, {json.loads(dirs)!r}))\n")
    return str(py)


def missing(py: str, reqs: list[str]) -> list[str]:
    code = ("import json, sys, importlib.metadata as md\nout = []\nfor r in json.loads(sys.argv[1]):\n"
            " n = r.split('[')[0]\n for c in '<>=!~; ':\n  n = n.split(c)[0]\n"
            " try: md.version(n)\n except md.PackageNotFoundError: out.append(r)\nprint(json.dumps(out))")
    return json.loads(subprocess.run([py, "-c", code, json.dumps(reqs)], capture_output=True, text=True,
                                     check=True).stdout)


def pip_install(py: str, pkgs: list[str], wheels: str | None, torch_version: str) -> None:
    """Install ``pkgs`` (and whatever of their own dependencies is missing); torch pinned to the one present."""
    pins = ROOT / ".gpu-env" / "constraints.txt"
    pins.write_text(f"torch=={torch_version}\n")
    cmd = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-c", str(pins)]
    cmd += ["--no-index", "--find-links", wheels] if wheels else []
    subprocess.run(cmd + pkgs, check=True)


def install_project(py: str) -> str:
    r = subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
                        "--no-build-isolation", "--no-index", "-e", str(ROOT)], capture_output=True, text=True)
    if r.returncode == 0:
        return "pip install --no-deps -e ."
    site_dir = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    (Path(site_dir) / "revgn_source.pth").write_text(str(ROOT) + "\n")
    return "source tree on sys.path (.pth; pip could not install it: " + (r.stderr.strip().splitlines() or ["?"])[-1][:80] + ")"


def run(cmd: list[str], timeout: float, env: dict) -> tuple[int, str, float]:
    """Run ``cmd`` streaming its output; (exit code, output, seconds); 124 when killed at ``timeout``."""
    import threading

    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    timer = threading.Timer(timeout, proc.kill)  # also when the command hangs without printing
    timer.start()
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print("  " + line, end="", flush=True)
        lines.append(line)
    rc = proc.wait()
    timer.cancel()
    return (124 if rc < 0 and time.time() - t0 >= timeout else rc), "".join(lines), time.time() - t0


def download(args: argparse.Namespace) -> int:
    """`make gpu-wheels`: every requirement (torch left out) for --python-version/--platform into DIR."""
    dest = Path(args.download).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    pkgs = args.packages.split() if args.packages else requirements()
    base = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-d", str(dest),
            "--find-links", str(dest), "--only-binary=:all:", "--python-version", args.python_version]
    base += [x for p in args.platform.split(",") for x in ("--platform", p)]
    for _ in range(6):
        r = subprocess.run(base + pkgs, capture_output=True, text=True)
        if r.returncode == 0:
            say(f"{len(list(dest.glob('*.whl')))} wheels for Python {args.python_version} ({args.platform}) in {dest}; "
                f"on the GPU machine: make gpu-check WHEELS={dest}")
            return 0
        # A requirement PyPI has as an sdist only (antlr4-python3-runtime): build its wheel here (pure Python).
        out = r.stdout + r.stderr
        m = (re.search(r"No matching distribution found for (\S+)", out)
             or re.search(r"The conflict is caused by:\s+\S+ \S+ depends on (\S+)", out))
        if not m:
            break
        say(f"building a wheel for {m.group(1)} (no wheel on the index)")
        b = subprocess.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "--no-deps",
                            "-w", str(dest), m.group(1)], capture_output=True, text=True)
        if b.returncode != 0:
            break
    say("download failed: " + (r.stderr.strip().splitlines() or ["?"])[-1])
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", help="the interpreter with a CUDA torch (default: $GPU_PYTHON, python3, python)")
    ap.add_argument("--wheels", help="install missing requirements from this folder only (see --download)")
    ap.add_argument("--budget-s", type=float, default=290.0, help="stop the suite/bench beyond this (default 290)")
    ap.add_argument("--allow-cpu", action="store_true", help="dry run of this script on a CPU torch (tests it)")
    ap.add_argument("--setup-only", action="store_true", help="stop after preparing .gpu-env")
    ap.add_argument("--download", metavar="DIR", help="make gpu-wheels: fetch the requirements into DIR and stop")
    ap.add_argument("--python-version", default="3.11", help="--download: target Python (default 3.11)")
    ap.add_argument("--platform", default="manylinux2014_x86_64,manylinux_2_17_x86_64,manylinux_2_28_x86_64",
                    help="--download: target platform tags, comma-separated")
    ap.add_argument("--packages", help=argparse.SUPPRESS)  # --download: a subset (tests)
    args = ap.parse_args(argv)
    if args.download:
        return download(args)
    t0 = time.time()
    python, info = find_python(args)
    device = "cuda" if info["cuda"] else "cpu"
    say(f"{info['exe']}: Python {info['python']}, torch {info['torch']} (CUDA {info['cuda_version']}), "
        f"{info['gpu'] or 'CPU dry run'}")
    py = make_env(python, ROOT / ".gpu-env")
    need = missing(py, requirements())
    if need:
        say(f"installing missing: {' '.join(need)}" + (f" (from {args.wheels})" if args.wheels else ""))
        try:
            pip_install(py, need, args.wheels, info["torch"])
        except subprocess.CalledProcessError:
            say("installing the missing requirements failed (see pip's message above); offline? make gpu-wheels "
                "on a connected machine, then make gpu-check WHEELS=<dir>")
            return 2
    how = install_project(py)
    say(f"project: {how}")
    if args.setup_only:
        return 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if device == "cpu":
        env["REVGN_CUDA_SUITE_DEVICE"] = "cpu"
    left = args.budget_s - (time.time() - t0)
    suite_rc, suite_out, suite_s = run([py, "-m", "pytest", "-m", "cuda", "-q", "-rfE", "-p", "no:cacheprovider",
                                        "tests/test_cuda.py"], 0.7 * left, env)
    left = args.budget_s - (time.time() - t0)
    bench_cmd = [py, "bench/gn_step.py", "--device", device] + (["--paper"] if device == "cuda" else ["--smoke"])
    bench_rc, bench_out, bench_s = run(bench_cmd, max(left, 10.0), env)
    tally = (re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|error).*?)\s*=*$", suite_out, flags=re.M) or ["?"])[-1]
    print()
    say("summary")
    print(f"  device        {info['gpu'] or 'CPU (dry run: proves nothing about CUDA)'}; torch {info['torch']}")
    print(f"  GPU suite     {'OK' if suite_rc == 0 else 'FAILED' if suite_rc != 124 else 'TIMED OUT'} — {tally} "
          f"({suite_s:.0f} s)")
    for line in suite_out.splitlines():
        if line.startswith("GPU-SUITE") or line.startswith("FAILED") or line.startswith("ERROR"):
            print("    " + line.removeprefix("GPU-SUITE "))
    print(f"  step bench    {'OK' if bench_rc == 0 else 'FAILED' if bench_rc != 124 else 'TIMED OUT'} "
          f"({bench_s:.0f} s): {' '.join(bench_cmd[1:])}")
    table = [ln for ln in bench_out.splitlines() if re.match(r"^\s*\d+\s+\d+\s+\d+\s+\d+\s", ln) or "GN/Adam" in ln
             or ln.startswith("# target")]
    for line in table:
        print("    " + line)
    print(f"  total         {time.time() - t0:.0f} s")
    return 0 if suite_rc == 0 and bench_rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
