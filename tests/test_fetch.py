"""`fetch` against a local HTTP server on 127.0.0.1 (ephemeral port, own thread, shut down after each test)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import tarfile
import threading

import numpy as np
import pytest

from revgn_cli.data import DataError, fetch, load_dataset
from revgn_cli.data import cifar
from revgn_cli.data import download as fetch_mod
from revgn_cli.data.idx import write_idx

MNIST_GZ = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    timeout = 5  # a stuck client cannot hold the server thread

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve tmp_path/'www' at http://127.0.0.1:<port>/; yields (base_url, folder)."""
    monkeypatch.setattr(fetch_mod, "TIMEOUT_S", 5.0)
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", www
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serve_mnist(www, n_train=5, n_test=3):
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    ]
    for name, a in zip(MNIST_GZ, arrays):
        write_idx(www / name, a)
    return {name: "sha256:" + _sha(www / name) for name in MNIST_GZ}


def test_fetch_mnist_then_load(server, tmp_path):
    url, www = server
    sums = serve_mnist(www)
    root = tmp_path / "root"
    folder = fetch("mnist", root, base_urls=[url], progress=False, checksums=sums)
    assert folder == root / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(MNIST_GZ)  # nothing partial or hidden
    for name in MNIST_GZ:
        assert (folder / name).read_bytes() == (www / name).read_bytes()
    ds = load_dataset("mnist", root)
    assert ds.x_train.shape == (5, 784) and ds.y_test.shape == (3,)
    # already present and intact: no download needed (server emptied)
    for p in www.iterdir():
        p.unlink()
    assert fetch("mnist", root, base_urls=[url], progress=False, checksums=sums) == folder


def test_fetch_md5_and_progress(server, tmp_path, capsys):
    url, www = server
    serve_mnist(www)
    sums = {name: "md5:" + hashlib.md5((www / name).read_bytes()).hexdigest() for name in MNIST_GZ}
    fetch("mnist", tmp_path / "r", base_urls=[url], progress=True, checksums=sums)
    assert (tmp_path / "r" / "mnist" / MNIST_GZ[0]).is_file()


def test_fetch_checksum_mismatch_leaves_nothing(server, tmp_path):
    url, www = server
    sums = serve_mnist(www)
    sums[MNIST_GZ[1]] = "sha256:" + "0" * 64
    root = tmp_path / "root"
    with pytest.raises(DataError, match=r"checksum mismatch for train-labels-idx1-ubyte.gz") as e:
        fetch("mnist", root, base_urls=[url], progress=False, checksums=sums)
    assert "\n" not in str(e.value)
    # the first file verified and stays; the bad one left neither a final nor a partial file
    assert [p.name for p in (root / "mnist").iterdir()] == [MNIST_GZ[0]]


def test_fetch_builtin_checksums_reject_fake_files(server, tmp_path):
    url, www = server
    serve_mnist(www)  # not the real archives, so the built-in SHA-256s must refuse them
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch("mnist", tmp_path, base_urls=[url], progress=False)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_fetch_404_is_clean(server, tmp_path):
    url, _ = server  # nothing served
    with pytest.raises(DataError, match=r"HTTP 404.*") as e:
        fetch("mnist", tmp_path, base_urls=[url], progress=False)
    assert "train-images-idx3-ubyte.gz" in str(e.value) and "\n" not in str(e.value)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_fetch_falls_back_to_next_mirror(server, tmp_path):
    url, www = server
    sums = serve_mnist(www)
    fetch("mnist", tmp_path, base_urls=[url + "missing/", url], progress=False, checksums=sums)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(MNIST_GZ)


def test_fetch_cifar10_unpacks(server, tmp_path):
    url, www = server
    src = tmp_path / "src" / cifar.BATCH_DIR
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in (*cifar.TRAIN_BATCHES, cifar.TEST_BATCH):
        cifar.write_batch(src / name, rng.integers(0, 256, (2, 3072), dtype=np.uint8), [1, 2])
    with tarfile.open(www / cifar.ARCHIVE, "w:gz") as tar:
        tar.add(src, arcname=cifar.BATCH_DIR)
    root = tmp_path / "root"
    folder = fetch("cifar10", root, base_urls=[url], progress=False, checksums={cifar.ARCHIVE: _sha(www / cifar.ARCHIVE)})
    assert sorted(p.name for p in folder.iterdir()) == [cifar.BATCH_DIR, cifar.ARCHIVE]
    ds = load_dataset("cifar10", root)
    assert ds.x_train.shape == (10, 3072) and ds.y_test.tolist() == [1, 2]


def test_fetch_bad_names_and_roots(tmp_path):
    with pytest.raises(DataError, match="fetchable datasets: mnist, cifar10"):
        fetch("imagenet", tmp_path, progress=False)
    with pytest.raises(DataError, match="bundled"):
        fetch("mnist5k", tmp_path, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot create data folder"):
        fetch("mnist", blocker, base_urls=["http://127.0.0.1:9/"], progress=False)
    with pytest.raises(DataError, match="unsupported checksum"):
        fetch("mnist", tmp_path, base_urls=["http://127.0.0.1:9/"], progress=False, checksums={MNIST_GZ[0]: "crc:1"})
