"""`jcw latency ...`: derive, measure, validate, compare, predict, list, bundle and import latency tables."""
from __future__ import annotations

import json
import sys

from jcw.cli.parser import action_group


def _latency_derive(args) -> None:
    from jcw.latency.derive import derive

    table, csv_path, json_path = derive(args.device, args.supernet, args.out_dir, " ".join(["jcw"] + sys.argv[1:]),
                                        args.sparse_kernel)
    fit, kernel = table.meta["fit"], table.meta["fit"]["sparse_kernel"]
    kernel_error = (f"; XNNPACK sparse kernel a = {kernel['a']}, fit on {kernel['points']} published ratios, "
                    f"leave-one-out MAPE {kernel['loo_mape_pct']}%" if "a" in kernel else "")
    print(f"{table.device} ({table.runtime}): {len(table.entries)} entries, fit on {fit['samples']} public data "
          f"points, leave-one-out MAPE {fit['loo_mape_pct']}%{kernel_error}\ntable: {csv_path}\nmetadata: {json_path}")


def _latency_predict(args) -> None:
    from jcw.latency.device_model import predict_model

    record = predict_model(args.device, args.model, args.input)
    print(json.dumps(record) if args.json else
          f"{record['model']} at {args.input}px on {args.device}: {record['latency_ms']:.2f} ms (derived; the "
          f"model's leave-one-out MAPE is {record['loo_mape_pct']}% on {record['loo_on']}, and a whole network can "
          "miss by more: see \"How well the dense prices hold\" in the README)")


def _latency_list(args) -> None:
    from jcw.latency.table import list_tables

    print(f"{'device':<15} {'runtime':<15} {'threads':>7} {'source':<9} {'entries':>7}  {'error':<30} made")
    for row in list_tables(args.dir):
        err = row["error"]
        text = f"MAPE {err['mape_pct']}%, {100 * err.get('within_10pct', 0):.0f}% within 10%" \
            if "mape_pct" in err else "not validated"
        where = " (not this machine's CPU: measure your own)" if row["other_cpu"] else ""
        print(f"{row['device']:<15} {row['runtime']:<15} {row['threads']:>7} {row['source']:<9} {row['entries']:>7}  "
              f"{text:<30} {row['date']}\n{'':<15} prices: {row['processor']}{where}\n"
              f"{'':<15} error against: {err.get('kind', 'nothing yet')}"
              f"{' of ' + err['supernet'] if 'supernet' in err else ''}")


def _latency_measure(args) -> None:
    from jcw.latency.measure import measure

    table, csv_path, json_path = measure(args.device, args.supernet, args.threads, args.repeats, args.runtime,
                                         args.out_dir, " ".join(["jcw"] + sys.argv[1:]), args.extend)
    spread, made = table.meta["spread"], table.meta["made"]
    run = made["extended"][-1] if args.extend else made
    print(f"{args.device} ({table.runtime}, {table.threads} thread{'s' * (table.threads > 1)} pinned to cores "
          f"{run['pinned_cores']}): {run['entries_timed']} entries measured, {len(table.entries)} in the table; "
          "spread over repeats "
          f"{spread['median_std_pct']}% (median), {spread['p90_std_pct']}% (90th percentile)\ntable: {csv_path}\n"
          f"metadata: {json_path}")


def _latency_compare(args) -> None:
    from jcw.latency.table import compare_tables

    report = compare_tables(args.reference, args.other)
    if args.json:
        return print(json.dumps(report))
    print(f"{report['other']} vs {report['reference']}: {report['common_entries']} common entries, median ratio "
          f"{report['median_ratio']:.3f}, MAPE {report['mape_pct']:.1f}%, {100 * report['within_10pct']:.0f}% within "
          f"10%, {100 * report['within_25pct']:.0f}% within 25%; {report['reference']}'s own spread over repeats "
          f"{report['reference_noise_pct']:.1f}% (median)")


def _latency_validate(args) -> None:
    from jcw.latency.validate import validate_table

    report = validate_table(args.device, args.supernet, args.samples, seed=args.seed, out_dir=args.out_dir,
                            rounds=args.rounds)
    if args.json:
        print(json.dumps(report))
    else:
        low, high = report["mape_range"]
        print(f"{args.device}: {report['samples']} subnets of {report['supernet']}, MAPE {report['mape']:.2f}% "
              f"(median of {report['rounds']} rounds, range {low:.2f}-{high:.2f}%), "
              f"{100 * report['within_10pct']:.0f}% within 10%\n"
              f"report: {report['report']}")


def _latency_bundle(args) -> None:
    from jcw.latency.bundle import bundle

    path = bundle(args.device, args.supernet, args.out, args.format)
    how = ("run on a phone: BENCHMARK_MODEL=PATH " + str(path / "run.sh") if args.format == "tflite"
           else f"run on a phone: {path / 'run.sh'} --adb   (or --local to time on this machine)")
    print(f"bundle: {path}\n{how}\nthen: jcw latency import {path}")


def _latency_import(args) -> None:
    from jcw.latency.bundle import import_bundle

    table, csv_path, json_path = import_bundle(args.bundle, args.device, args.out_dir)
    print(f"{table.device}: {len(table.entries)} entries imported\ntable: {csv_path}\nmetadata: {json_path}")


def add_latency_commands(sub) -> None:
    la_sub = action_group(sub, "latency", "latency tables: derive, measure, validate, compare, list, bundle, import")
    ld = la_sub.add_parser("derive", help="price a supernet's layers with a device model fit to public data")
    ld.add_argument("--device", required=True, choices=("pixel1", "pixel4", "note10"))
    ld.add_argument("--supernet", action="append", help="supernet file(s) to cover (default: the shipped one)")
    ld.add_argument("--sparse-kernel", default="xnnpack", choices=("xnnpack", "jcw-arm"),
                    help="xnnpack: TFLite's sparse 1x1 kernel under XNNPACK's rules (default); jcw-arm: JCW's own "
                         "kernel, every conv sparse, as the table DEVICE-jcw-arm")
    ld.add_argument("--out-dir", default=None, help="default: your table folder ($JCW_HOME/latency_tables), which "
                    "is read before the shipped one")
    ld.set_defaults(func=_latency_derive)
    lm = la_sub.add_parser("measure", help="time every table entry on this machine")
    lm.add_argument("--device", default="host")
    lm.add_argument("--threads", type=int, default=1)
    lm.add_argument("--repeats", type=int, default=None, help="timed calls per entry (default: 30; with --extend, "
                                                              "the table's own)")
    lm.add_argument("--supernet", action="append")
    lm.add_argument("--runtime", default="torch", choices=("torch", "tflite-xnnpack", "onnxruntime"),
                    help="torch: what exported subnets run on the CPU (default); tflite-xnnpack: what `export "
                         "--tflite` writes, in LiteRT; onnxruntime: the bundle's micro-models")
    lm.add_argument("--out-dir", default=None, help="default: your table folder ($JCW_HOME/latency_tables, "
                                                     "~/.local/share/jcw/latency_tables), read before shipped tables")
    lm.add_argument("--extend", action="store_true",
                    help="add to the table of that name in --out-dir only the entries it lacks (a new supernet's "
                         "layers), timed as it was; it must come from this machine, runtime and threads; its "
                         "validation error stays the original's until `jcw latency validate` runs again")
    lm.set_defaults(func=_latency_measure)
    lc = la_sub.add_parser("compare", help="entry-by-entry agreement of two tables, against the first's noise")
    lc.add_argument("reference", help="a device name or a table .csv/.json")
    lc.add_argument("other")
    lc.add_argument("--json", action="store_true")
    lc.set_defaults(func=_latency_compare)
    lv = la_sub.add_parser("validate", help="time random exported subnets end to end against the table")
    lv.add_argument("--device", default="host")
    lv.add_argument("--samples", type=int, default=30)
    lv.add_argument("--supernet", default=None)
    lv.add_argument("--seed", type=int, default=0)
    lv.add_argument("--rounds", type=int, default=3, help="timing rounds; the report gives their median and range")
    lv.add_argument("--json", action="store_true")
    lv.add_argument("--out-dir", default=None)
    lv.set_defaults(func=_latency_validate)
    lp = la_sub.add_parser("predict", help="price a whole torchvision CNN with a device model")
    lp.add_argument("--device", required=True)
    lp.add_argument("--model", required=True, help="torchvision:NAME")
    lp.add_argument("--input", type=int, default=224)
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=_latency_predict)
    ll = la_sub.add_parser("list", help="every table with its source and error")
    ll.add_argument("--dir", default=None)
    ll.set_defaults(func=_latency_list)
    lb = la_sub.add_parser("bundle", help="micro-models + script to measure a phone over adb")
    lb.add_argument("--format", default="onnx", choices=("onnx", "tflite"),
                    help="onnx: onnxruntime_perf_test; tflite: TFLite's benchmark_model with XNNPACK")
    lb.add_argument("--device", required=True, help="name for the phone's table")
    lb.add_argument("--supernet", default=None)
    lb.add_argument("--out", required=True)
    lb.set_defaults(func=_latency_bundle)
    li = la_sub.add_parser("import", help="turn a bundle's timings (results.csv, or benchmark_model outputs under "
                           "results/) into a measured table")
    li.add_argument("bundle")
    li.add_argument("--device", default=None)
    li.add_argument("--out-dir", default=None)
    li.set_defaults(func=_latency_import)
