"""Datasets and splits.

Small datasets (Fashion-MNIST, CIFAR) live in memory as uint8 tensors and are augmented a batch at a time, which is
several times faster on a CPU than per-sample PIL transforms. ImageFolder trees stream through a DataLoader.

The search scores on a validation split carved deterministically from the training set (the first `val_size` images
of one fixed permutation, so a larger split holds every image of a smaller one); the test set is only for reporting
final accuracy. The supernet records the split it was trained beside, and every later command carves the same one.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from jcw.config import VAL_SPLIT as VAL_SIZE
from jcw.config import SupernetConfig
from jcw.errors import JcwError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
DATASETS = ("fashion-mnist", "fashion-mnist-rgb", "cifar10", "cifar100", "imagefolder")
SPLIT_SEED = 0
RESIZED_CACHE_BYTES = 256 * 2**20  # per dataset: Fashion-MNIST's validation and test splits at 56 px take 47 MB


def _share(n: int, shard: tuple[int, int]) -> slice:
    """The rows of a batch of `n` that shard (k, parts) takes: the k-th of `parts` consecutive equal parts."""
    k, parts = shard
    return slice(k * n // parts, (k + 1) * n // parts)


def loader_workers() -> int:
    """DataLoader worker processes by default: one per core this process may use, at most 8 (JPEG decoding scales
    with cores; beyond 8 the main process, not decoding, limits a single GPU's feed)."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


class _Order(torch.utils.data.Sampler):
    """The indices a persistent DataLoader serves next: set before each pass, so worker processes survive epochs."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def val_cap(train_images: int, val_size: int) -> int:
    """The most images a small training set gives the validation split: a fifth for the default split (as every
    supernet trained before `--val-split` holds out), a quarter for a split asked for by size."""
    return train_images // (5 if val_size == VAL_SIZE else 4)


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor


class InMemoryData:
    """A dataset held as uint8 NCHW tensors, with a deterministic train/val split.

    `channels` serves one stored channel as that many copies (grey images in the 3-channel form a network's stem
    needs): the copies are made per batch, after augmentation and resizing, which then cost a third, and so does
    the memory the images and the resized scoring images take."""

    def __init__(self, name: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, num_classes: int, val_size: int = VAL_SIZE, flip: bool = True,
                 channels: int | None = None):
        self.name = name
        self.num_classes = num_classes
        self.flip = flip
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(SPLIT_SEED))
        val_size = min(val_size, val_cap(len(train_x), val_size))
        val_idx, train_idx = order[:val_size], order[val_size:]
        self.splits = {
            "train": (train_x[train_idx], train_y[train_idx]),
            "val": (train_x[val_idx], train_y[val_idx]),
            "test": (test_x, test_y),
        }
        self.in_channels = channels or train_x.shape[1]
        mean, std = channel_stats(train_x[train_idx])
        self.mean, self.std = (t.expand(self.in_channels).contiguous() for t in (mean, std))
        self.input_size = train_x.shape[2]
        self._resized: dict[tuple, torch.Tensor] = {}  # unaugmented passes, resized once (see `_unaugmented`)

    def size(self, split: str) -> int:
        return len(self.splits[split][1])

    def resize(self, side: int) -> None:
        """Serve every batch at `side` px. Batches are resized as they are drawn (after augmentation, at the stored
        size), which keeps start-up and memory as they are at the stored size; the normalisation statistics stay the
        stored images' (bilinear resizing barely moves them)."""
        self.input_size = side

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]

    def augment(self, images: torch.Tensor, generator: torch.Generator, rows: slice = slice(None)) -> torch.Tensor:
        """Random 4-px-padded crop and horizontal flip, per sample, on a whole batch; with `rows`, only those
        samples come back, augmented exactly as in the whole batch (every draw is made for the whole batch)."""
        n, _, h, w = images.shape
        pad = 2
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)[rows]
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)[rows]
        flip = (torch.rand(n, generator=generator) < 0.5)[rows] if self.flip else None
        images = images[rows]
        padded = F.pad(images, (pad, pad, pad, pad))
        rows_at = (oy[:, None] + torch.arange(h))[:, None, :, None]
        cols_at = (ox[:, None] + torch.arange(w))[:, None, None, :]
        out = padded[torch.arange(len(images))[:, None, None, None], torch.arange(images.shape[1])[None, :, None, None],
                     rows_at, cols_at]
        if flip is not None:
            out[flip] = out[flip].flip(-1)
        return out

    def batches(self, split: str, batch_size: int, shuffle: bool = False, augment: bool = False,
                seed: int = 0, limit: int | None = None, shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
        """Yield normalised batches; `limit` caps the number of images (for BN calibration). With `shard` (k, n),
        only the k-th of n equal parts of every batch: a data-parallel worker reads and augments its own share."""
        x, y = self.splits[split]
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(y), generator=gen) if shuffle else torch.arange(len(y))
        if limit is not None:
            order = order[:limit]
        # a share (a scoring process's part of the test split, scored once per pick) resizes only its own images
        kept = (None if augment or shard != (0, 1) else
                self._unaugmented(x, order, (split, shuffle, seed, limit, self.input_size)))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            rows = _share(len(idx), shard)
            if kept is not None:
                images = kept[start:start + batch_size][rows]
            elif augment:  # drawn for the whole batch, so a share is augmented as it would be in it
                images = resized(self.augment(x[idx], gen, rows), self.input_size)
            else:
                images = resized(x[idx[rows]], self.input_size)
            images = images.expand(-1, self.in_channels, -1, -1)  # the stored channel's copies, if any
            yield Batch(self.normalize(images), y[idx[rows]].long())

    def _unaugmented(self, x: torch.Tensor, order: torch.Tensor, key: tuple) -> torch.Tensor | None:
        """The pass's images already resized: scoring reads the same calibration and validation images for every
        subnet, and resizing them (28 to 56 px) took a fifth of a small subnet's scoring. Kept while they fit
        RESIZED_CACHE_BYTES in all; None where no resizing is needed or they would not fit."""
        if x.shape[-1] == self.input_size:
            return None
        if key not in self._resized:
            size = len(order) * x[0].numel() * (self.input_size / x.shape[-1]) ** 2
            if size + sum(t.numel() for t in self._resized.values()) > RESIZED_CACHE_BYTES:
                return None
            self._resized[key] = resized(x[order], self.input_size)
        return self._resized[key]


class ImageFolderData:
    """An ImageNet-layout tree (train/ and val/ of class folders), streamed through a DataLoader.

    The tree's val/ is the reported test set; the search's validation split is carved from train/.
    """

    def __init__(self, root: Path, input_size: int = 224, val_size: int = VAL_SIZE, workers: int | None = None):
        from torchvision import datasets, transforms

        self.name = "imagefolder"
        self.input_size = input_size
        self.in_channels = 3
        self.workers = loader_workers() if workers is None else workers
        self.loaders: dict[tuple, tuple] = {}  # (split, augment, batch size) -> (DataLoader, its _Order)
        self.flip = True
        norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        resize = int(input_size * 256 / 224)
        self.train_tf = transforms.Compose([transforms.RandomResizedCrop(input_size), transforms.RandomHorizontalFlip(),
                                            transforms.ToTensor(), norm])
        self.eval_tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(input_size),
                                           transforms.ToTensor(), norm])
        try:
            train, test = (datasets.ImageFolder(root / split, loader=_rgb_image) for split in ("train", "val"))
        except FileNotFoundError as exc:  # a split without class folders, or without images in them
            raise JcwError(f"--data-dir {root}: {str(exc).rstrip('.')}; give train/ and val/ one folder of images per "
                           "class") from None
        if len(train.classes) < 2 or test.classes != train.classes:
            raise JcwError(f"--data-dir {root}: train/ and val/ must hold the same class folders, two or more (train/: "
                           f"{', '.join(train.classes)}; val/: {', '.join(test.classes)})")
        self.num_classes = len(train.classes)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
        val_size = min(val_size, val_cap(len(train), val_size))
        self.indices = {"train": order[val_size:], "val": order[:val_size], "test": list(range(len(test)))}
        self.sources = {"train": train, "val": train, "test": test}

    def size(self, split: str) -> int:
        return len(self.indices[split])

    def batches(self, split: str, batch_size: int, shuffle: bool = False, augment: bool = False,
                seed: int = 0, limit: int | None = None, shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
        """As `InMemoryData.batches`; a shard's worker processes decode only its own share of every batch."""
        idx = list(self.indices[split])
        if shuffle:
            perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed)).tolist()
            idx = [idx[i] for i in perm]
        if limit is not None:
            idx = idx[:limit]
        mine = [i for start in range(0, len(idx), batch_size)
                for i in idx[start:start + batch_size][_share(len(idx[start:start + batch_size]), shard)]]
        size = batch_size // shard[1]
        if len(mine) <= size or not self.workers:  # one batch: starting worker processes costs more than decoding
            yield from self._decode(split, augment, mine, size)
            return
        key = (split, augment, size)
        if key not in self.loaders:
            from torch.utils.data import DataLoader

            order = _Order()
            # workers persist across epochs and prefetch; pinned pages make CUDA copies asynchronous
            self.loaders[key] = DataLoader(self._view(split, augment), batch_size=size, sampler=order,
                                           num_workers=self.workers, persistent_workers=True, prefetch_factor=4,
                                           pin_memory=torch.cuda.is_available()), order
        loader, order = self.loaders[key]
        order.indices = mine
        try:
            for images, labels in loader:
                yield Batch(images, labels)
            return
        except JcwError as exc:  # from a loader process, whose traceback the message carries: keep its last line
            message = str(exc).strip().splitlines()[-1].split("JcwError: ", 1)[-1]
        # raised out here, with the loader let go, so that the error holds no reference to the loader's processes,
        # which would otherwise outlive it
        del self.loaders[key], loader
        raise JcwError(message)

    def _view(self, split: str, augment: bool):
        from torchvision import datasets

        return datasets.ImageFolder(self.sources[split].root, transform=self.train_tf if augment else self.eval_tf,
                                    loader=_rgb_image)

    def _decode(self, split: str, augment: bool, indices: list[int], size: int) -> Iterator[Batch]:
        view = self._view(split, augment)
        for start in range(0, len(indices), size):
            samples = [view[i] for i in indices[start:start + size]]
            yield Batch(torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples]))


def _rgb_image(path: str):
    """torchvision's own loading, but a file that is no image stops the run with one line that names it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except OSError as exc:  # not an image, or a truncated one
        why = "not an image PIL can read" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise JcwError(f"cannot read image {path} ({why}); remove or replace it") from None


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first folder holding the four Fashion-MNIST .gz files: --data-dir alone when given (a user who names a
    folder means that one), else $JCW_DATA, then Debian's location."""
    candidates = [data_dir] if data_dir else [os.environ.get("JCW_DATA"), DEBIAN_FASHION_MNIST]
    for cand in candidates:
        if not cand:
            continue
        for folder in (Path(cand), Path(cand) / "fashion-mnist", Path(cand) / "FashionMNIST" / "raw"):
            if all((folder / f).exists() for f in FASHION_FILES.values()):
                return folder
    return None


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = True,
                       rgb: bool = False, val_size: int = VAL_SIZE) -> InMemoryData:
    """`rgb` repeats the gray channel three times: the same images, in the 3-channel form that TFLite's XNNPACK needs
    at a network's stem before it runs any weight sparse."""
    folder, why = find_fashion_mnist(data_dir), ""
    if folder is None and download:
        folder, why = _torchvision_download(data_dir)
    if folder is None:
        where = data_dir or "$JCW_DATA or /usr/share/datasets/fashion-mnist"
        raise JcwError(f"Fashion-MNIST not found in {where}"
                       f"{why}; install it with `sudo apt-get install dataset-fashion-mnist` or pass --data-dir DIR")
    arrays = {k: torch.from_numpy(_read_idx(folder / f).copy()) for k, f in FASHION_FILES.items()}
    return InMemoryData("fashion-mnist-rgb" if rgb else "fashion-mnist", arrays["train_x"][:, None],
                        arrays["train_y"], arrays["test_x"][:, None], arrays["test_y"], num_classes=10,
                        val_size=val_size, channels=3 if rgb else None)


def _torchvision_download(data_dir: str | os.PathLike | None) -> tuple[Path | None, str]:
    """The folder torchvision downloaded into, or None and why the download failed (for the caller's error)."""
    from torchvision.datasets import FashionMNIST

    root = Path(data_dir or os.environ.get("JCW_DATA") or Path.home() / ".cache" / "jcw")
    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except (OSError, RuntimeError) as exc:  # no network, a proxy, a full disk: each is named in the error
        reason = " ".join(str(exc).split())[:200] or exc.__class__.__name__
        return None, f", and downloading it into {root} failed ({reason})"
    return find_fashion_mnist(root), ""


def load_cifar(name: str, data_dir: str | os.PathLike | None, val_size: int = VAL_SIZE) -> InMemoryData:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, classes = (CIFAR10, 10) if name == "cifar10" else (CIFAR100, 100)
    root = data_dir or os.environ.get("JCW_DATA") or str(Path.home() / ".cache" / "jcw")
    try:
        train, test = cls(root, train=True, download=False), cls(root, train=False, download=False)
    except RuntimeError:
        raise JcwError(f"{name} not found under {root}; download it with torchvision "
                       f"(`torchvision.datasets.{cls.__name__}(ROOT, download=True)`) and pass --data-dir ROOT")
    as_tensor = lambda d: torch.from_numpy(np.ascontiguousarray(d.data)).permute(0, 3, 1, 2).contiguous()
    return InMemoryData(name, as_tensor(train), torch.tensor(train.targets), as_tensor(test),
                        torch.tensor(test.targets), num_classes=classes, val_size=val_size)


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and sd of uint8 NCHW images on the 0-1 scale, from each channel's histogram of its 256
    values: exact, and a second where a float copy of 55,000 RGB images took over one (every process that loads the
    data pays it: the CLI, each scoring worker)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    counts = torch.stack([torch.bincount(images[:, c].reshape(-1), minlength=256) for c in range(images.shape[1])])
    counts = counts.double()
    n = counts.sum(1)
    mean = (counts * values).sum(1) / n
    var = (counts * (values - mean[:, None]) ** 2).sum(1) / (n - 1)
    return mean.float(), var.sqrt().float()


def resized(images: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 NCHW images resized bilinearly (antialiased when shrinking), rounded back to uint8 so that a resized
    image is the same at training and at scoring."""
    if images.shape[-1] == side:
        return images
    out = F.interpolate(images.float(), size=(side, side), mode="bilinear", align_corners=False,
                        antialias=side < images.shape[-1])
    return out.round().clamp(0, 255).to(torch.uint8)


def load_dataset(name: str = "fashion-mnist", data_dir: str | os.PathLike | None = None,
                 input_size: int | None = None, val_size: int = VAL_SIZE,
                 loader_workers: int | None = None) -> InMemoryData | ImageFolderData:
    """Load a dataset by name; every failure is a `JcwError` that says how to get the data.

    `input_size` is the side images are cropped (ImageFolder, default 224) or resized to (the in-memory datasets,
    default their own: 28 px Fashion-MNIST at 56 px lets a stride-2 stem start XNNPACK's sparse subgraph while the
    blocks see the 28 px network's resolutions). `val_size` images of the training set form the validation split.
    """
    if name in ("fashion-mnist", "fashion-mnist-rgb", "cifar10", "cifar100"):
        data = load_fashion_mnist(data_dir, rgb=name.endswith("rgb"), val_size=val_size) \
            if name.startswith("fashion") else load_cifar(name, data_dir, val_size)
        if input_size not in (None, data.input_size):
            if not 8 <= input_size <= 512:
                raise JcwError(f"--input {input_size}: give an image side from 8 to 512 px")
            data.resize(input_size)
        return data
    if name == "imagefolder":
        if not data_dir or not (Path(data_dir) / "train").is_dir() or not (Path(data_dir) / "val").is_dir():
            raise JcwError(f"--data-dir {data_dir!r} must hold train/ and val/ folders of class folders "
                           "(the ImageNet layout)")
        if loader_workers is not None and loader_workers < 0:
            raise JcwError(f"--loader-workers {loader_workers}: give 0 (decode in this process) or more")
        return ImageFolderData(Path(data_dir), input_size=input_size or 224, val_size=val_size,
                               workers=loader_workers)
    raise JcwError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def supernet_data(config: SupernetConfig, data_dir: str | os.PathLike | None = None,
                  loader_workers: int | None = None) -> InMemoryData | ImageFolderData:
    """The data a supernet was trained beside: its dataset at its input size, with the validation split it held out."""
    return load_dataset(config.dataset, data_dir, config.input_size, config.val_split, loader_workers)
