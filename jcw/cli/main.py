"""The `jcw` command: parses arguments, calls the Python API, prints where outputs went.

Input problems raise `JcwError`, printed as one line on stderr with exit code 2.
"""
from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

from jcw import __version__, config
from jcw.allocator import keep_freed_memory
from jcw.cli.latency import add_latency_commands
from jcw.cli.parser import Parser, accelerator_opt, action_group, data_opt, ray_opts
from jcw.errors import JcwError, one_line_warnings


def density_list(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


# Each handler imports the one API function it calls: the library pulls in torch, which `jcw --help` never needs.
def _supernet_train(args) -> None:
    from jcw.supernet.supernet import SupernetConfig
    from jcw.supernet.train import TrainConfig, train

    config = SupernetConfig(model=args.model, dataset=args.dataset, min_ratio=args.min_ratio, block=args.block,
                            densities=args.densities, pretrained=args.pretrained, weights=args.weights,
                            val_split=args.val_split)
    recipe = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         label_smoothing=args.label_smoothing, n_random=args.n_random,
                         random_densities=args.random_densities, seed=args.seed,
                         threads=args.threads, limit_train=args.limit_train, val_images=args.val_images,
                         accumulate=args.accumulate, accelerator=args.accelerator,
                         loader_workers=args.loader_workers)
    common = dict(config=config, recipe=recipe, data_dir=args.data_dir, resume=args.resume, force=args.force,
                  input_size=args.input)
    if args.workers or args.ray_address:
        from jcw.supernet.distributed import train_on_ray

        final = train_on_ray(args.out, args.workers or 1, ray_address=args.ray_address, threads=args.threads or 1,
                             gpus_per_worker=args.gpus_per_worker, max_failures=args.max_failures, **common)
    else:
        final = train(args.out, **common)
    print(f"supernet: {final}\nlog: {Path(args.out) / 'train_log.csv'}")


def _supernet_eval(args) -> None:
    from jcw.supernet.accuracy import evaluate_genomes

    rows = []
    for row in evaluate_genomes(args.supernet, args.genome, args.split, args.calibration_images, args.seed,
                                args.data_dir, args.accelerator):
        rows.append(row)
        if not args.json:
            print(f"{row['label']:>10}: top-1 {row['top1']:.2f}%  loss {row['loss']:.4f}  ({args.split})", flush=True)
    if args.json:
        print(json.dumps(rows))


def _predictor_fit(args) -> None:
    from jcw.predictor.fit import PredictorFitConfig, fit

    pred = fit(PredictorFitConfig(supernet=args.supernet, samples=args.samples, out=args.out, seed=args.seed,
                                  scored=args.scored, calibration_images=args.calibration_images,
                                  val_images=args.val_images, workers=args.workers, ray_address=args.ray_address,
                                  data_dir=args.data_dir, force=args.force, accelerator=args.accelerator))
    out = Path(args.out)
    for name, m in pred.report["models"].items():
        print(f"{name:>9}: RMSE {m['rmse']:.3f}  Kendall tau {m['kendall_tau']:.3f}  Spearman {m['spearman_rho']:.3f}")
    print(f"kept: {pred.report['kept']}\npredictor: {out / 'predictor.pt'}\nreport: {out / 'report.json'}, "
          f"{out / 'report.png'}\ndataset: {out / 'dataset.csv'}")


def _span_ms(front) -> str:
    return f"{front['latency_ms'].min():.4g}-{front['latency_ms'].max():.4g} ms"


def _search(args) -> None:
    from jcw.search.archive import sparse_members
    from jcw.search.budget import parse_budgets
    from jcw.search.run import SearchConfig, search
    from jcw.search.rundir import RunDir

    cfg = SearchConfig(device=args.device, budgets_ms=parse_budgets(args.latency), supernet=args.supernet,
                       predictor=args.predictor, population=args.population, generations=args.generations,
                       seed=args.seed, out=args.out, workers=args.workers, ray_address=args.ray_address,
                       evaluator=args.evaluator, survival=args.survival, targets=args.targets, genes=args.genes,
                       rescore=args.rescore, refine=args.refine, refine_every=args.refine_every,
                       calibration_images=args.calibration_images, val_images=args.val_images,
                       export=not args.no_export, resume=args.resume, force=args.force, data_dir=args.data_dir,
                       accelerator=args.accelerator)
    result = search(cfg, log=lambda line: print(line, flush=True))
    print("\nbudget      id   latency_ms   top-1 (val)   top-1 (test)")
    for row in result.summary.itertuples():
        if row.id is None or row.id != row.id:
            print(f"{row.budget_ms:>8g}ms   -   no subnet within budget")
        else:
            test = "-" if row.test_top1 is None or row.test_top1 != row.test_top1 else f"{row.test_top1:.2f}%"
            print(f"{row.budget_ms:>8g}ms {int(row.id):>5} {row.latency_ms:>12.4f}   {row.top1:>10.2f}%   {test:>11}")
    front, sparse = result.pareto, result.pareto[sparse_members(result.pareto)]
    if len(front):  # what the joint search adds over channel pruning, at a glance
        print(f"\nfront: {len(front)} members, {_span_ms(front)}; " + (
            f"{len(sparse)} with sparse weights, {_span_ms(sparse)} (open diamonds in the plot)" if len(sparse) else
            "all dense"))
    run = RunDir(result.out)
    print(f"\npareto: {run.pareto}\nplot: {run.png}\nhistory: {run.history}")
    if run.subnets.is_dir():
        print(f"subnets: {run.subnets}")


def _print_paths(paths: dict) -> None:
    if "xnnpack report" in paths:
        from jcw.export.tflite import read_report, summarise

        rows = read_report(paths["xnnpack report"])
        summary = summarise(rows)
        print(f"{'layer':<24} {'op':<14} {'density':>7}  {'stored':<7} {'XNNPACK':<7} why")
        for r in rows:
            why = "see the last line" if summary.endswith(r.why) else r.why
            print(f"{r.name:<24} {r.op:<14} {r.density:>7.3f}  {'sparse' if r.stored_sparse else 'dense':<7} "
                  f"{r.xnnpack:<7} {why}")
        print(summary)
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))


def _export(args) -> None:
    from jcw.export.from_run import export_from_run

    _print_paths(export_from_run(args.run, args.id, out=args.out, onnx=args.onnx, data_dir=args.data_dir,
                                 tflite=args.tflite))


def _pick(args) -> None:
    from jcw.export.from_run import pick
    from jcw.search.budget import parse_budget

    best, paths = pick(args.run, parse_budget(args.latency), out=args.out, onnx=args.onnx, data_dir=args.data_dir,
                       tflite=args.tflite)
    print(f"picked id {int(best['id'])}: {best['latency_ms']:.4g}ms, top-1 {best['top1']:.2f}%")
    _print_paths(paths)


def _plot(args) -> None:
    from jcw.search.plot import plot_compare, plot_member, plot_run
    from jcw.search.rundir import RunDir

    if len(args.run) > 1:
        png, html = plot_compare(args.run, args.out or Path(args.run[0]) / "compare")
        return print(f"plot: {png}\npage: {html}")
    space, resolved = None, RunDir(args.run[0]).read().config["resolved"]
    if "definition" not in resolved["space"]:  # a run from before config.json kept its space: rebuild it
        from jcw.supernet.supernet import load_supernet

        space = load_supernet(resolved["supernet"]).space
    if args.id is not None:
        return print(f"layers: {plot_member(args.run[0], args.id, space)}")
    png = plot_run(args.run[0], space)
    print(f"plot: {png}\npage: {png.with_suffix('.html')}")


def _finetune(args) -> None:
    from jcw.export.from_run import deployable
    from jcw.finetune import FinetuneConfig, finetune

    if args.tflite:  # before the training, not after it
        from jcw.latency.tflite_runtime import require_tflite

        require_tflite()
    cfg = FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, distill_from=args.distill_from,
                         seed=args.seed, limit_train=args.limit_train, val_images=args.val_images,
                         test_images=args.test_images, accelerator=args.accelerator)
    res = finetune(args.subnet, cfg, out=args.out, resume=args.resume, data_dir=args.data_dir)
    split = f" (first {args.test_images} images)" if args.test_images else ""
    print(f"test top-1{split}: {res['test_top1_before']:.2f}% before, {res['test_top1']:.2f}% after")
    # the fine-tuned network is the one to ship: its .onnx and .tflite where asked
    _print_paths({**deployable(Path(res["subnet"]), args.onnx, args.tflite), "log": res["log"]})


def build_parser() -> Parser:
    parser = Parser(prog="jcw", description="Joint channel and weight-sparsity search for fast CNNs on phones.")
    parser.add_argument("--version", action="version", version=f"jcw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    se = sub.add_parser("search", help="search the latency-accuracy Pareto front for a device")
    se.add_argument("--device", required=True, help="a latency table name (see `jcw latency list`)")
    se.add_argument("--latency", required=True, help="budget(s): 30ms, 0.03s, 250us or 10ms,20ms,30ms")
    se.add_argument("--supernet", help="supernet file, or the folder holding it (default: the shipped one)")
    se.add_argument("--predictor", help="predictor folder fit on --supernet")
    se.add_argument("--population", type=int)
    se.add_argument("--generations", type=int)
    se.add_argument("--seed", type=int)
    se.add_argument("--out", help="run folder (default: runs/<time>-<device>-<budget>)")
    ray_opts(se)
    se.add_argument("--evaluator", choices=config.CHOICES["evaluator"])
    se.add_argument("--survival", choices=config.CHOICES["survival"],
                    help="jcw: multi-target selection; nsga2: plain rank and crowding")
    se.add_argument("--targets", type=int, help="latency targets for jcw selection")
    se.add_argument("--genes", choices=config.CHOICES["genes"],
                    help="what may shrink: both, channels only, or weight density only")
    se.add_argument("--rescore", type=int, help="front members re-scored on the supernet")
    se.add_argument("--refine", type=int,
                    help="front members scored on the supernet to refit the predictor, per round (0: never)")
    se.add_argument("--refine-every", type=int, help="generations between refinement rounds")
    se.add_argument("--calibration-images", type=int, help="BN recalibration images per scored subnet")
    se.add_argument("--val-images", type=int, help="cap on validation images per scored subnet")
    se.add_argument("--no-export", action="store_true", help="skip exporting the best subnet per budget")
    se.add_argument("--resume", action="store_true")
    se.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    accelerator_opt(se)
    data_opt(se)
    config.apply_defaults(se, config.SearchConfig)
    se.set_defaults(func=_search)

    sn_sub = action_group(sub, "supernet", "train or evaluate a weight-sharing supernet")
    tr = sn_sub.add_parser("train", help="train a supernet with the sandwich rule")
    tr.add_argument("--model",
                    help="mbv2_tiny, mbv2_small, mbv2_small_s2, mbv2_small_56, mobilenet_v2, resnet18, resnet34, "
                         "resnet50")
    tr.add_argument("--dataset", help="fashion-mnist, fashion-mnist-rgb, cifar10, cifar100, imagefolder")
    tr.add_argument("--input", type=int, metavar="PX",
                    help="image side: imagefolder crops to it (default 224), the others resize to it (default their "
                         "own); recorded")
    tr.add_argument("--val-split", type=int, metavar="N",
                    help="training images held out as the validation split the search and predictor score on; "
                         "recorded")
    data_opt(tr)
    tr.add_argument("--out", default="supernets/mine")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--weight-decay", type=float, help="on weights, not on biases or batch norm")
    tr.add_argument("--label-smoothing", type=float, help="on the largest subnet's labels")
    tr.add_argument("--n-random", type=int, help="random subnets per step besides largest and smallest")
    tr.add_argument("--random-densities", choices=config.CHOICES["random_densities"],
                    help="independent per layer, or as XNNPACK runs them: one for its sparse subgraph's 1x1 convs, "
                         "the rest dense")
    tr.add_argument("--min-ratio", type=float, help="smallest width as a fraction of the base")
    tr.add_argument("--densities", type=density_list, metavar="1,0.3,...",
                    help="the density choices of every sparse layer, dense first (default 1,0.9,...,0.2)")
    tr.add_argument("--block", type=int, choices=config.CHOICES["block"], help="4: JCW's SIMD blocks of 4 out-channels")
    tr.add_argument("--pretrained", action="store_true",
                    help="start from torchvision's ImageNet weights; the classifier is made for the dataset's classes")
    tr.add_argument("--weights", metavar="FILE", help="start from a local state_dict or torchvision checkpoint")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--threads", type=int, help="torch threads (per worker with --workers; default 1 there)")
    tr.add_argument("--accumulate", type=int, help="micro-batches per step (per worker), gradients summed")
    tr.add_argument("--loader-workers", type=int,
                    help="processes decoding ImageFolder images (default: one per core, at most 8)")
    tr.add_argument("--workers", type=int, default=0,
                    help="data-parallel Ray Train workers (default 0: train in this process)")
    tr.add_argument("--ray-address", default=None, help="train on an existing Ray cluster")
    tr.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per Ray Train worker (nccl when > 0)")
    tr.add_argument("--max-failures", type=int, default=3,
                    help="worker failures Ray Train recovers from the last checkpoint before it gives up")
    tr.add_argument("--limit-train", type=int,
                    help="cap training images per epoch, and those each epoch's validation recalibrates on "
                         "(quick runs)")
    tr.add_argument("--val-images", type=int, help="cap on validation images scored after each epoch")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint with the saved recipe")
    tr.add_argument("--force", action="store_true")
    accelerator_opt(tr)
    config.apply_defaults(tr, config.TrainConfig, config.SupernetConfig)
    tr.set_defaults(func=_supernet_train)
    ev = sn_sub.add_parser("eval", help="top-1 and loss of chosen subnets, batch norm recalibrated")
    ev.add_argument("--supernet", default=None)
    ev.add_argument("--genome", default="largest,smallest",
                    help="largest, smallest, random:N, uniform:R (every group at R of its width, dense), or a file")
    ev.add_argument("--split", default="val", choices=("val", "test"))
    ev.add_argument("--calibration-images", type=int, default=config.CALIBRATION_IMAGES)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", action="store_true")
    accelerator_opt(ev)
    data_opt(ev)
    ev.set_defaults(func=_supernet_eval)

    pr_sub = action_group(sub, "predictor", "fit an accuracy predictor on supernet-scored subnets")
    pf = pr_sub.add_parser("fit", help="sample, score, fit and report")
    pf.add_argument("--supernet")
    pf.add_argument("--samples", type=int,
                    help="subnets to sample and score (default 1000; with --scored, new ones on top: default 0)")
    pf.add_argument("--out")
    pf.add_argument("--seed", type=int)
    pf.add_argument("--force", action="store_true")
    pf.add_argument("--scored", metavar="CSV",
                    help="reuse the subnets scored by an earlier fit on this supernet (its dataset.csv)")
    pf.add_argument("--calibration-images", type=int, help="BN recalibration images per scored subnet")
    pf.add_argument("--val-images", type=int, help="cap on validation images per scored subnet")
    accelerator_opt(pf)
    ray_opts(pf)
    data_opt(pf)
    config.apply_defaults(pf, config.PredictorFitConfig)
    pf.set_defaults(func=_predictor_fit)

    add_latency_commands(sub)

    ex = sub.add_parser("export", help="export a front member as a ready-to-fine-tune subnet")
    ex.add_argument("run")
    ex.add_argument("--id", type=int, required=True)
    ex.add_argument("--onnx", action="store_true")
    ex.add_argument("--tflite", action="store_true", help="also a .tflite with sparse 1x1 weights for XNNPACK")
    ex.add_argument("--out", default=None)
    data_opt(ex)
    ex.set_defaults(func=_export)

    pk = sub.add_parser("pick", help="export the best front member within a budget")
    pk.add_argument("run")
    pk.add_argument("--latency", required=True)
    pk.add_argument("--out", default=None)
    pk.add_argument("--onnx", action="store_true")
    pk.add_argument("--tflite", action="store_true", help="also a .tflite with sparse 1x1 weights for XNNPACK")
    data_opt(pk)
    pk.set_defaults(func=_pick)

    pl = sub.add_parser("plot", help="redraw a run's pareto.png and pareto.html, or compare several runs")
    pl.add_argument("run", nargs="+", help="one run, or several to overlay their fronts")
    pl.add_argument("--id", type=int, help="draw this subnet's layers (RUN/layers-ID.png)")
    pl.add_argument("--out", help="with several runs: file stem of the png and html (default: RUN1/compare)")
    pl.set_defaults(func=_plot)

    ft = sub.add_parser("finetune", help="fine-tune an exported subnet with its masks held")
    ft.add_argument("subnet")
    ft.add_argument("--epochs", type=int)
    ft.add_argument("--lr", type=float)
    ft.add_argument("--batch-size", type=int)
    ft.add_argument("--distill-from", help="supernet file; its largest subnet teaches")
    ft.add_argument("--out", default=None)
    ft.add_argument("--seed", type=int)
    ft.add_argument("--limit-train", type=int)
    ft.add_argument("--val-images", type=int, help="cap on validation images scored after each epoch")
    ft.add_argument("--test-images", type=int, help="cap on test images scored before and after (default: all)")
    ft.add_argument("--resume", action="store_true")
    ft.add_argument("--onnx", action="store_true", help="also OUT/subnet.onnx of the fine-tuned network")
    ft.add_argument("--tflite", action="store_true",
                    help="also OUT/subnet.tflite, its sparse 1x1 weights stored for XNNPACK, with its report")
    data_opt(ft)
    accelerator_opt(ft)
    config.apply_defaults(ft, config.FinetuneConfig)
    ft.set_defaults(func=_finetune)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        with one_line_warnings():
            args.func(args)
    except JcwError as exc:
        sys.stderr.write(f"jcw: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("jcw: interrupted\n")
        return 130
    except BrokenPipeError:  # `jcw latency list | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or the exit's flush raises again
        return 141
    except OSError as exc:  # a path the user named that cannot be read or written (--out /read-only/run)
        if exc.filename is None:
            raise
        sys.stderr.write(f"jcw: error: {exc.filename}: {exc.strerror or exc}\n")
        return 2
    finally:
        # the interpreter's last collection then skips torch's objects: 0.5 s of a command's exit on 2 cores
        gc.freeze()
    return 0

