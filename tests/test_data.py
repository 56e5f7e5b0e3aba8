"""Datasets: filled from the offline mirror; a clear message when nowhere to be found."""
import gzip
import os

import numpy as np
import pytest

from data import datasets


def test_mnist_from_a_mirror(tmp_path):
    mirror = tmp_path / "mirror" / "mnist"
    mirror.mkdir(parents=True)
    images = np.zeros(16 + 2 * 28 * 28, dtype=np.uint8)
    images[:16] = np.frombuffer(np.array([0x803, 2, 28, 28], dtype=">i4").tobytes(), dtype=np.uint8)
    images[16 + 5] = 200
    labels = np.concatenate([np.frombuffer(np.array([0x801, 2], dtype=">i4").tobytes(), dtype=np.uint8), [3, 7]])
    for name in datasets.MNIST_FILES:
        data = images if "images" in name else labels
        with gzip.open(mirror / (name + ".gz"), "wb") as f:
            f.write(data.astype(np.uint8).tobytes())
    x, y = datasets.load("mnist", "test", str(tmp_path / "data"), str(tmp_path / "mirror"))
    assert x.shape == (2, 1, 28, 28) and x[0, 0, 0, 5] == 200 and y.tolist() == [3, 7]
    assert os.path.isfile(tmp_path / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte")


def test_cifar_from_a_mirror_and_bad_length(tmp_path):
    mirror = tmp_path / "mirror" / "cifar-10-batches-bin"
    mirror.mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = rng.integers(0, 256, size=(3, datasets.CIFAR_RECORD), dtype=np.uint8)
    records[:, 0] = [1, 2, 9]
    for name in datasets.CIFAR_TRAIN + (datasets.CIFAR_TEST,):
        with gzip.open(mirror / (name + ".gz"), "wb") as f:
            f.write(records.tobytes())
    x, y = datasets.load("cifar10", "test", str(tmp_path / "data"), str(tmp_path / "mirror"))
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [1, 2, 9]
    assert (x[1].reshape(-1).numpy() == records[1, 1:]).all()      # CHW order kept
    with open(tmp_path / "data" / "cifar-10-batches-bin" / "test_batch.bin", "ab") as f:
        f.write(b"\0")
    with pytest.raises(datasets.DatasetError, match="not a whole number of 3073-byte records"):
        datasets.load("cifar10", "test", str(tmp_path / "data"), str(tmp_path / "mirror"))


def test_nowhere_to_be_found_says_where_it_looked(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(datasets.DatasetError) as err:
        datasets.prepare_mnist(str(tmp_path / "data"), str(tmp_path / "nomirror"))
    message = str(err.value)
    assert str(tmp_path / "data") in message and str(tmp_path / "nomirror") in message and "download" in message


def test_cifar_online_pickle_layout_becomes_the_binary_layout(tmp_path, monkeypatch):
    """Online, torchvision's CIFAR10 (python-pickle layout, HWC) is rewritten as the binary batches."""
    import torchvision.datasets
    rng = np.random.default_rng(1)

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            n = 10 if train else 4
            self.data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
            self.targets = list(rng.integers(0, 10, size=n))
            FakeCIFAR10.last[train] = self

    FakeCIFAR10.last = {}
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    x, y = datasets.load("cifar10", "test", str(tmp_path / "data"), str(tmp_path / "nomirror"))
    source = FakeCIFAR10.last[False]
    assert y.tolist() == source.targets
    assert (x.numpy() == source.data.transpose(0, 3, 1, 2)).all()
    train_x, _ = datasets.load("cifar10", "train", str(tmp_path / "data"), str(tmp_path / "nomirror"))
    assert (train_x.numpy() == FakeCIFAR10.last[True].data.transpose(0, 3, 1, 2)).all()
