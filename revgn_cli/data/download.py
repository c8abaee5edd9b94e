"""Download the standard MNIST / CIFAR-10 archives with checksum verification (stdlib urllib only).

Each file streams into a temp file in its destination folder and is renamed into place only after its
checksum matches; on any failure the temp file is removed, so nothing partial is ever left behind.
Files already present with the right checksum are not downloaded again.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from contextlib import nullcontext
from pathlib import Path

from .base import DataError, resolve_root
from . import cifar

# SHA-256 of the published archives, as listed by Keras/TFDS and torchvision's mirrors (cross-checked
# against several independent sources). torchvision's MD5s for the same files, for reference:
# MNIST f68b3c2d…/d53e105e…/9fb629c4…/ec29112d…, CIFAR-10 c58f3010….
CHECKSUMS = {
    "train-images-idx3-ubyte.gz": "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "cifar-10-python.tar.gz": "sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
}
SOURCES = {  # name -> (folder under the root, mirrors tried in order, files)
    "mnist": (
        "mnist",
        ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"],
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"],
    ),
    "cifar10": ("cifar10", ["https://www.cs.toronto.edu/~kriz/"], [cifar.ARCHIVE]),
}
TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def _parse_checksum(spec: str) -> tuple[str, str]:
    """'sha256:HEX' / 'md5:HEX' / bare HEX (64 chars: sha256, 32: md5) -> (algorithm, hex)."""
    algo, _, hexd = spec.rpartition(":")
    hexd = hexd.strip().lower()
    algo = algo.lower() or {64: "sha256", 32: "md5"}.get(len(hexd), "")
    if algo not in ("sha256", "md5"):
        raise DataError(f"unsupported checksum {spec!r}: use sha256:HEX or md5:HEX")
    return algo, hexd


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _progress_bar():
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())


def _download(url: str, dest: Path, algo: str, want: str, bar) -> None:
    """Stream `url` into a temp file beside `dest`, verify, rename. Raises DataError; leaves no temp file."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise DataError(f"cannot write into {dest.parent}: {e}") from None
    tmp = Path(tmp_name)
    try:
        h = hashlib.new(algo)
        req = urllib.request.Request(url, headers={"User-Agent": "revgn"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            size = resp.headers.get("Content-Length")
            task = bar.add_task(dest.name, total=int(size) if size else None) if bar else None
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                out.write(chunk)
                h.update(chunk)
                if bar:
                    bar.update(task, advance=len(chunk))
        got = h.hexdigest()
        if got != want:
            raise DataError(f"checksum mismatch for {dest.name} from {url}: {algo} {got}, expected {want}")
        os.replace(tmp, dest)
    except urllib.error.HTTPError as e:
        raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:  # ValueError: bad URL
        reason = getattr(e, "reason", e)
        raise DataError(f"download of {url} failed: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    base_urls: list[str] | None = None,
    progress: bool = True,
    checksums: dict[str, str] | None = None,
) -> Path:
    """Download dataset `name` ("mnist" or "cifar10") into `<root>/<name>/`, verify, unpack; return that folder.

    `base_urls` replaces the mirrors (each file is tried at every mirror in order); `checksums` overrides
    entries of `CHECKSUMS` (values 'sha256:HEX', 'md5:HEX' or bare hex).
    """
    if name not in SOURCES:
        from .registry import DATASETS

        bundled = [n for n in DATASETS if n not in SOURCES]
        extra = f" ({name} is bundled and needs no fetch)" if name in bundled else ""
        raise DataError(f"cannot fetch {name!r}{extra}; fetchable datasets: {', '.join(SOURCES)}")
    root = resolve_root(root)
    folder_name, mirrors, files = SOURCES[name]
    folder = root / folder_name
    sums = {**CHECKSUMS, **(checksums or {})}
    mirrors = list(base_urls) if base_urls else mirrors
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create data folder {folder}: {e.strerror or e}") from None
    if not os.access(folder, os.W_OK):
        raise DataError(f"data folder {folder} is not writable; pass a writable --root")

    fetched = False
    with _progress_bar() if progress else nullcontext() as bar:
        for fname in files:
            algo, want = _parse_checksum(sums[fname])
            dest = folder / fname
            if dest.is_file() and _digest(dest, algo) == want:
                continue  # already fetched and intact
            errors = []
            for base in mirrors:
                try:
                    _download(base.rstrip("/") + "/" + fname, dest, algo, want, bar)
                    fetched = True
                    break
                except DataError as e:
                    errors.append(str(e))
            else:
                raise DataError("; ".join(errors) if errors else f"no mirror given for {fname}")
    if name == "cifar10" and (fetched or not (folder / cifar.BATCH_DIR).is_dir()):
        cifar.unpack(folder / cifar.ARCHIVE, folder)
    return folder
