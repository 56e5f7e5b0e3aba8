"""Datasets under data/ in torchvision's layout, filled from the offline mirror
(../shared/datasets, or $FPGAI_MIRROR) or, online, by torchvision's download.

Every loader returns raw uint8 pixels (N, C, H, W) and int64 labels: the
integer engines consume the pixels as they are, the float model sees pixel/255.
"""
import gzip
import os
import shutil
import sys

import numpy as np
import torch

from model.fileio import atomic_open, error_line

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_RECORD = 1 + 3 * 32 * 32

DATASETS = {"mnist": {"shape": (1, 28, 28), "classes": 10},
            "cifar10": {"shape": (3, 32, 32), "classes": 10}}


class DatasetError(RuntimeError):
    pass


def _atomic_gunzip(src, dst):
    with gzip.open(src, "rb") as fin, atomic_open(dst) as fout:
        shutil.copyfileobj(fin, fout)


def _fill_from_mirror(mirror_subdir, names, target):
    """Decompress mirror_subdir/NAME.gz into target/NAME for every name; False if any is missing."""
    sources = [os.path.join(mirror_subdir, n + ".gz") for n in names]
    if not all(os.path.isfile(s) for s in sources):
        return False
    os.makedirs(target, exist_ok=True)
    for src, name in zip(sources, names):
        dst = os.path.join(target, name)
        if not os.path.isfile(dst):
            print(f"data: {src} -> {dst}", file=sys.stderr)
            _atomic_gunzip(src, dst)
    return True


def mnist_dir(data_dir):
    return os.path.join(data_dir, "MNIST", "raw")


def cifar10_dir(data_dir):
    return os.path.join(data_dir, "cifar-10-batches-bin")


def prepare_mnist(data_dir, mirror_dir):
    raw = mnist_dir(data_dir)
    if all(os.path.isfile(os.path.join(raw, n)) for n in MNIST_FILES):
        return raw
    if _fill_from_mirror(os.path.join(mirror_dir, "mnist"), MNIST_FILES, raw):
        return raw
    try:
        from torchvision.datasets import MNIST
        for train in (True, False):
            MNIST(data_dir, train=train, download=True)
        return raw
    except Exception as err:   # no network: say everywhere we looked
        raise DatasetError(
            f"MNIST not found: looked in {raw} (decompressed idx files), in the offline "
            f"mirror {os.path.join(mirror_dir, 'mnist')} (*.gz; set FPGAI_MIRROR to move it) "
            f"and tried torchvision's download ({err.__class__.__name__}: {err})") from None


def _cifar_pickle_to_bin(data_dir, target):
    """Online path: torchvision downloads the python-pickle layout; write the binary one from it."""
    from torchvision.datasets import CIFAR10
    os.makedirs(target, exist_ok=True)
    for train, names in ((True, CIFAR_TRAIN), (False, (CIFAR_TEST,))):
        ds = CIFAR10(data_dir, train=train, download=True)
        images = ds.data.transpose(0, 3, 1, 2).reshape(len(ds.data), -1)   # HWC -> CHW
        labels = np.asarray(ds.targets, dtype=np.uint8)[:, None]
        records = np.concatenate([labels, images], axis=1)
        for part, name in zip(np.array_split(records, len(names)), names):
            with atomic_open(os.path.join(target, name)) as f:
                f.write(part.tobytes())


def prepare_cifar10(data_dir, mirror_dir):
    target = cifar10_dir(data_dir)
    names = CIFAR_TRAIN + (CIFAR_TEST,)
    if all(os.path.isfile(os.path.join(target, n)) for n in names):
        return target
    if _fill_from_mirror(os.path.join(mirror_dir, "cifar-10-batches-bin"), names, target):
        return target
    try:
        _cifar_pickle_to_bin(data_dir, target)
        return target
    except Exception as err:
        raise DatasetError(
            f"CIFAR-10 not found: looked in {target} (binary batches), in the offline mirror "
            f"{os.path.join(mirror_dir, 'cifar-10-batches-bin')} (*.bin.gz; set FPGAI_MIRROR "
            f"to move it) and tried torchvision's download ({err.__class__.__name__}: {err})") from None


def _read_cifar_bin(path):
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % CIFAR_RECORD:
        raise DatasetError(f"{path}: {raw.size} bytes is not a whole number of {CIFAR_RECORD}-byte records")
    records = raw.reshape(-1, CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def load(dataset, split, data_dir, mirror_dir):
    """(uint8 images N×C×H×W, int64 labels) of `split` ('train' or 'test')."""
    if dataset == "mnist":
        from torchvision.datasets import MNIST
        prepare_mnist(data_dir, mirror_dir)
        ds = MNIST(data_dir, train=(split == "train"), download=False)
        return ds.data.unsqueeze(1).contiguous(), ds.targets.long()
    if dataset == "cifar10":
        folder = prepare_cifar10(data_dir, mirror_dir)
        names = CIFAR_TRAIN if split == "train" else (CIFAR_TEST,)
        parts = [_read_cifar_bin(os.path.join(folder, n)) for n in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(images), torch.from_numpy(labels)
    raise DatasetError(f"unknown dataset '{dataset}'; valid: {', '.join(DATASETS)}")


def check_labels(path, labels, classes=None):
    """Raise DatasetError (one line naming `path`) unless every label is an integer in 0..classes-1
    (the model's outputs; classes None: 0..2^63-1). Values are compared exactly, uint64 included."""
    y = np.asarray(labels)
    if y.dtype.kind not in "iu":
        raise DatasetError(f"{path}: labels are {y.dtype}; expected integers")
    if not y.size:
        return
    high = (classes - 1) if classes is not None else 2 ** 63 - 1
    for index in (int(np.argmin(y)), int(np.argmax(y))):
        value = int(y[index])                    # a Python int: exact for every integer dtype
        if not 0 <= value <= high:
            outputs = f" (the model has {classes} outputs)" if classes is not None else ""
            raise DatasetError(f"{path}: label {value} of image {index} outside 0..{high}{outputs}")


def load_images(path, shape=None, need_labels=True, classes=None):
    """Your own data (--calib_data / --test_data): (uint8 images N×C×H×W, int64 labels or None).

    path: a .npz holding `x` (uint8, N×C×H×W) and `y` (integer labels, N), or an ImageFolder
    directory (torchvision.datasets.ImageFolder: one sub-folder per class), every image resized
    to `shape` [C, H, W] (C 1: grayscale, 3: RGB) and converted to uint8 CHW. `shape`, when given,
    must equal the .npz's. Labels are None when a .npz has no `y` and need_labels is false; each is
    in 0..classes-1 when `classes` (the model's outputs) is given (check_labels)."""
    if os.path.isdir(path):
        images, labels = _load_image_folder(path, shape)
        check_labels(path, labels.numpy(), classes)
        return images, labels
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such file or directory (expected a .npz or an ImageFolder directory)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as err:
        raise DatasetError(f"{path}: not a readable .npz ({error_line(err)})") from None
    if "x" not in arrays:
        raise DatasetError(f"{path}: no array 'x' (it holds {', '.join(arrays) or 'nothing'}); expected x "
                           f"(uint8 N×C×H×W) and y (labels)")
    x = arrays["x"]
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) == 0:
        raise DatasetError(f"{path}: x is {x.dtype} of shape {list(x.shape)}; expected uint8 N×C×H×W, N >= 1")
    if shape is not None and list(x.shape[1:]) != list(shape):
        raise DatasetError(f"{path}: images are {'x'.join(map(str, x.shape[1:]))}, the model takes "
                           f"{'x'.join(map(str, shape))} (--input_shape)")
    y = arrays.get("y")
    if y is None:
        if need_labels:
            raise DatasetError(f"{path}: no array 'y' (integer labels, one per image)")
        return torch.from_numpy(np.ascontiguousarray(x)), None
    if y.dtype.kind not in "iu" or y.shape != (len(x),):
        raise DatasetError(f"{path}: y is {y.dtype} of shape {list(y.shape)}; expected {len(x)} integer labels")
    check_labels(path, y, classes)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))


def _load_image_folder(path, shape):
    if shape is None:
        raise DatasetError(f"{path}: an ImageFolder directory needs --input_shape=CxHxW (images are resized to it)")
    c, h, w = shape
    if c not in (1, 3):
        raise DatasetError(f"{path}: ImageFolder images convert to 1 (grayscale) or 3 (RGB) channels, "
                           f"not {c}")
    from torchvision.datasets import ImageFolder
    try:
        ds = ImageFolder(path)
    except Exception as err:
        raise DatasetError(f"{path}: not an ImageFolder directory ({error_line(err)})") from None
    images = np.empty((len(ds), c, h, w), dtype=np.uint8)
    labels = np.empty(len(ds), dtype=np.int64)
    for i, (file, label) in enumerate(ds.samples):
        with ds.loader(file) as img:    # PIL: resize to W×H, bilinear
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), resample=2)
            pixels = np.asarray(img, dtype=np.uint8)
        images[i] = pixels[None] if c == 1 else pixels.transpose(2, 0, 1)
        labels[i] = label
    return torch.from_numpy(images), torch.from_numpy(labels)


def test_files(dataset, data_dir, mirror_dir):
    """Paths the C engine reads: (images, labels) for MNIST idx, (records, None) for CIFAR-10."""
    if dataset == "mnist":
        raw = prepare_mnist(data_dir, mirror_dir)
        return os.path.join(raw, "t10k-images-idx3-ubyte"), os.path.join(raw, "t10k-labels-idx1-ubyte")
    return os.path.join(prepare_cifar10(data_dir, mirror_dir), CIFAR_TEST), None


if __name__ == "__main__":
    import config
    names = [a for a in sys.argv[1:] if not a.startswith("--")] or list(DATASETS)
    cfg = config.load_or_exit([a for a in sys.argv[1:] if a.startswith("--")])
    for name in names:
        try:
            folder = (prepare_mnist if name == "mnist" else prepare_cifar10)(cfg.data_dir, cfg.mirror_dir)
        except DatasetError as err:
            sys.exit(f"error: {err}")
        print(f"{name}: {folder}")
