"""The `jcw` command: parses arguments, calls the Python API, prints where outputs went.

Input problems raise `JcwError`, printed as one line on stderr with exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jcw import __version__
from jcw.errors import JcwError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"jcw: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def _supernet_train(args) -> None:
    from jcw.data import load_dataset
    from jcw.supernet.supernet import Supernet, SupernetConfig, read_checkpoint
    from jcw.supernet.train import TrainConfig, train_supernet

    out = Path(args.out)
    if args.resume:
        ckpt = read_checkpoint(out / "checkpoint.pt")
        config = SupernetConfig.from_dict(ckpt["config"])
    else:
        if (out / "supernet.pt").exists() and not args.force:
            raise JcwError(f"{out} already holds a trained supernet; pass --resume to continue or --force to retrain")
        data_meta = load_dataset(args.dataset, args.data_dir)
        config = SupernetConfig(model=args.model, dataset=args.dataset, input_size=data_meta.input_size,
                                in_channels=data_meta.in_channels, num_classes=data_meta.num_classes,
                                min_ratio=args.min_ratio, block=args.block, pretrained=args.pretrained)
    data = load_dataset(config.dataset, args.data_dir)
    net = Supernet(config)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, n_random=args.n_random,
                      seed=args.seed, threads=args.threads, limit_train=args.limit_train)
    final = train_supernet(net, data, out, cfg, resume=args.resume)
    print(f"supernet: {final}\nlog: {out / 'train_log.csv'}")


def build_parser() -> Parser:
    parser = Parser(prog="jcw", description="Joint channel and weight-sparsity search for fast CNNs on phones.")
    parser.add_argument("--version", action="version", version=f"jcw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    sn = sub.add_parser("supernet", help="train or evaluate a weight-sharing supernet")
    sn_sub = sn.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    sn_sub.required = True
    tr = sn_sub.add_parser("train", help="train a supernet with the sandwich rule")
    tr.add_argument("--model", default="mbv2_tiny")
    tr.add_argument("--dataset", default="fashion-mnist")
    tr.add_argument("--data-dir", default=None)
    tr.add_argument("--out", default="supernets/mine")
    tr.add_argument("--epochs", type=int, default=12)
    tr.add_argument("--batch-size", type=int, default=256)
    tr.add_argument("--lr", type=float, default=0.2)
    tr.add_argument("--n-random", type=int, default=1, help="random subnets per step besides largest and smallest")
    tr.add_argument("--min-ratio", type=float, default=0.25, help="smallest width as a fraction of the base")
    tr.add_argument("--block", type=int, default=1, choices=(1, 4), help="4: JCW's SIMD blocks of 4 out-channels")
    tr.add_argument("--pretrained", action="store_true", help="start from torchvision's ImageNet weights")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=0)
    tr.add_argument("--limit-train", type=int, default=0, help="cap training images per epoch (quick runs)")
    tr.add_argument("--resume", action="store_true")
    tr.add_argument("--force", action="store_true")
    tr.set_defaults(func=_supernet_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except JcwError as exc:
        sys.stderr.write(f"jcw: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("jcw: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
