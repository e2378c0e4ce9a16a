"""Every command's options and their defaults, in one torch-free place.

The library's functions take these dataclasses and the CLI reads its defaults from them, so `jcw --help` stays
fast and the CLI and the Python API can never train or search different things.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, fields

from jcw.errors import JcwError
from jcw.space import DEFAULT_DENSITIES

VAL_SPLIT = 5000  # training images held out as the validation split, unless a supernet records another
CALIBRATION_IMAGES = 2000  # batch-norm recalibration images per scored subnet
DEFAULT_SAMPLES = 1000  # subnets a predictor fit scores


GENE_MODES = ("joint", "channels", "density")
# every option with a fixed set of values, by its field name: the CLI offers these and the library checks them
CHOICES = {
    "accelerator": ("auto", "cpu", "cuda"),  # jcw/accelerator.py
    "genes": GENE_MODES,
    "evaluator": ("predictor", "supernet"),
    "survival": ("nsga2", "jcw"),  # jcw/search/survival.py
    "random_densities": ("independent", "xnnpack"),  # jcw/xnnpack.py
    "block": (1, 4),
}

# the least value of every number option, by field name, and the most where there is one: each config checks its own
# as it is made, so the CLI and the Python API refuse the same values, in one line (a negative count would slice from
# the end, a zero one divide by zero); None, where a field allows it, means unset
LEAST = {"population": 4, "generations": 1, "targets": 1, "rescore": 0, "refine": 0, "refine_every": 1,
         "calibration_images": 1, "val_images": 1, "test_images": 1, "workers": 0, "samples": 0, "epochs": 1,
         "batch_size": 1, "n_random": 0, "threads": 0, "limit_train": 0, "accumulate": 1, "loader_workers": 0,
         "val_split": 0, "seed": 0, "lr": 0, "momentum": 0, "weight_decay": 0, "label_smoothing": 0,
         "warmup_epochs": 0, "min_ratio": 0}
MOST = {"label_smoothing": 1, "momentum": 1, "min_ratio": 1}


def check_value(name: str, value, least=None) -> None:
    """One option against its range (LEAST/MOST by field name, or `least` where a command asks more of it)."""
    low, high = LEAST.get(name) if least is None else least, MOST.get(name)
    if value is None or low is None:
        return
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise JcwError(f"--{name.replace('_', '-')} must be {bound}, not {value:g}")


def check_ranges(cfg) -> None:
    for f in fields(cfg):
        check_value(f.name, getattr(cfg, f.name))


@dataclass
class SearchConfig:
    device: str
    budgets_ms: list[float]
    supernet: str | None = None  # None: the shipped default
    predictor: str | None = None  # None: the shipped default for the default supernet
    population: int = 64
    generations: int = 100
    seed: int = 0
    out: str | None = None
    workers: int | None = None  # None: forked processes on 2 CPUs or fewer, else one Ray actor per CPU; 0: in-process
    ray_address: str | None = None
    evaluator: str = "predictor"  # predictor | supernet
    survival: str = "nsga2"  # nsga2 (rank and crowding) | jcw (multi-target); benchmarks/selection.py
    targets: int = 4
    genes: str = "joint"  # joint | channels (density fixed at 1) | density (widths fixed at full)
    # front members re-scored on the supernet at the end: 8 picked the same subnet as 10 and 16 on the README
    # search's 3 seeds, on both shipped supernets, with hypervolume within a standard deviation (RESULTS.md section 6)
    rescore: int = 8
    refine: int = 8  # front members scored on the supernet in each refinement round (0: never refine)
    refine_every: int = 25  # generations between refinement rounds
    calibration_images: int = 1000  # BN recalibration images per scored subnet (benchmarks/scoring_fidelity.py)
    # validation images per scored subnet (None: the whole split): on mbv2_small_56_fmnist_rgb's 15,000-image split
    # the first 7,500 rank 30 subnets spread over the range at Kendall tau 0.954 against the whole (RESULTS.md
    # section 13); the default holds out 5,000, which the cap leaves whole
    val_images: int | None = 7500
    export: bool = True
    resume: bool = False
    force: bool = False
    data_dir: str | None = None
    runs_dir: str = "runs"
    accelerator: str = "auto"  # auto (CUDA when torch sees a GPU) | cpu | cuda; jcw/accelerator.py

    def __post_init__(self):
        check_ranges(self)
        if not self.budgets_ms or not all(0 < b < float("inf") for b in self.budgets_ms):
            raise JcwError(f"latency budgets {self.budgets_ms}: give one or more, each positive and finite (ms)")

    @property
    def largest_budget_ms(self) -> float:
        """The budget that bounds the search: the front, the constraint and the hypervolume stop there."""
        return max(self.budgets_ms)


@dataclass
class SupernetConfig:
    """Everything needed to rebuild the network and its space; saved beside the weights."""

    # the defaults build the first default, mbv2_small on grey 28 px images (supernets/mbv2_small_fmnist), whose
    # stem XNNPACK cannot start a sparse subgraph at; the shipped default is trained with the options in
    # supernets/mbv2_small_56_fmnist_rgb_indep/COMMAND
    model: str = "mbv2_small"
    dataset: str = "fashion-mnist"
    input_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    min_ratio: float = 0.25
    width_step: float = 0.125
    divisor: int = 8
    densities: tuple[float, ...] = DEFAULT_DENSITIES
    block: int = 1  # 1: unstructured masks; 4: JCW's blocks of 4 output channels
    # training images held out as the validation split that scoring (search, predictor) reads: the supernet never
    # trained on them, so every later command must carve the same ones
    val_split: int = VAL_SPLIT
    pretrained: bool = False  # start from torchvision's ImageNet weights, with a fresh head for the dataset's classes
    weights: str | None = None  # or from this local state_dict file, likewise

    def __post_init__(self):
        check_ranges(self)
        d = self.densities
        if not d or d[0] != 1.0 or any(b >= a for a, b in zip(d, d[1:])) or d[-1] <= 0:
            raise JcwError(f"densities {', '.join(f'{x:g}' for x in d)}: give choices from 1 (dense, the first) "
                           "down, each below the one before and above 0")

    @classmethod
    def from_dict(cls, d: dict) -> "SupernetConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "densities" in known:
            known["densities"] = tuple(float(x) for x in known["densities"])
        return cls(**known)


@dataclass
class TrainConfig:
    """The shipped supernets' recipe (see supernets/*/COMMAND for the options each one changed)."""

    epochs: int = 16
    batch_size: int = 256
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 2e-4  # on weights, not on biases or batch norm
    label_smoothing: float = 0.1  # on the largest subnet's labels
    n_random: int = 1  # random subnets per step besides the largest and the smallest
    # how the random subnets draw densities: "independent" per layer, or "xnnpack": as TFLite's XNNPACK runs them,
    # one density shared by its sparse subgraph's 1x1 convs and every other layer dense (jcw/xnnpack.py)
    random_densities: str = "independent"
    warmup_epochs: float = 0.5
    seed: int = 0
    threads: int = 0  # 0: torch's default
    # cap on training images per epoch (0: all), and on the images each epoch's validation recalibrates on; for quick
    # runs and tests
    limit_train: int = 0
    val_images: int | None = None  # cap on the validation images scored after each epoch (None: all)
    accumulate: int = 1  # micro-batches per step (per worker): a large batch in less memory
    # DataLoader processes decoding ImageFolder JPEGs (None: one per core available, at most 8; on Ray Train workers,
    # each worker's --threads); in-memory datasets use none
    loader_workers: int | None = None
    accelerator: str = "auto"  # auto (CUDA when torch sees a GPU) | cpu | cuda; jcw/accelerator.py

    def __post_init__(self):
        check_ranges(self)


@dataclass
class PredictorFitConfig:
    supernet: str | None = None  # None: the shipped default
    samples: int | None = None  # subnets to sample and score; None: 1000, or 0 on top of `scored`
    out: str = "predictors/mine"
    seed: int = 0
    scored: str | None = None  # an earlier fit's dataset.csv on this supernet, reused without rescoring
    calibration_images: int = CALIBRATION_IMAGES
    val_images: int | None = None  # cap on validation images per scored subnet (None: the whole split)
    workers: int | None = None  # Ray scoring actors (None: forked processes on <= 2 CPUs, else one per CPU; 0: serial)
    ray_address: str | None = None
    data_dir: str | None = None
    force: bool = False
    accelerator: str = "auto"  # auto (CUDA when torch sees a GPU) | cpu | cuda; jcw/accelerator.py

    def __post_init__(self):
        check_ranges(self)


@dataclass
class FinetuneConfig:
    epochs: int = 5
    lr: float = 0.02
    batch_size: int = 256
    weight_decay: float = 4e-5
    distill_from: str | None = None  # a supernet file; its largest subnet is the teacher
    seed: int = 0
    limit_train: int = 0  # cap on training images per epoch (0: all)
    val_images: int | None = None  # cap on the validation images scored after each epoch (None: all)
    test_images: int | None = None  # cap on the test images scored before and after (None: the whole split)
    accelerator: str = "auto"  # auto (CUDA when torch sees a GPU) | cpu | cuda; jcw/accelerator.py

    def __post_init__(self):
        check_ranges(self)


def apply_defaults(parser: argparse.ArgumentParser, *configs: type) -> None:
    """Every option of `parser` named like a field of these dataclasses takes that field's default, and its help
    says so: the defaults live here, where `--help` would otherwise not see them."""
    for cls in configs:
        defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        mine = [a for a in parser._actions if a.dest in defaults]
        parser.set_defaults(**{a.dest: defaults[a.dest] for a in mine})
        for a in mine:
            if defaults[a.dest] is not None and defaults[a.dest] is not False and "default" not in (a.help or ""):
                a.help = f"{a.help} (default: %(default)s)" if a.help else "default: %(default)s"
