"""The `osnas` command line: parse, then call an importable `run_*` function.

User errors (OsnasError) become one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys

from osnas.errors import OsnasError, one_line


def _common(p: argparse.ArgumentParser, sources: bool = True) -> None:
    if sources:
        p.add_argument("--sources", default=None, help="comma-separated source datasets (default: built-in synthetic)")
    p.add_argument("--data-root", default=None, help="datasets folder (default: $OSNAS_DATA or ./data)")
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set search.epochs=5 (repeatable)")
    p.add_argument("--out", default=None, help="run folder to write")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="osnas", description=__doc__.splitlines()[0])
    from osnas import __version__

    ap.add_argument("--version", action="version", version=f"osnas {__version__}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    for add in (_search, _derive, _analyze, _retrain, _evaluate, _plot, _profile, _demo, _data, _info, _extract,
                _export):
        add(sub)
    return ap


def _search(sub) -> None:
    p = sub.add_parser("search", help="bilevel search of IN/BN placement over several source domains")
    _common(p)
    p.add_argument("--space", default=None, help="search space name or YAML file (default osnet_stem_blocks)")
    p.add_argument("--runs", type=int, default=None, metavar="N",
                   help="supernets to train into the run folder, combined by derive's vote (default 3: "
                        "search.runs)")
    p.add_argument("--pretrained", default=None, metavar="FILE",
                   help="published torchreid ImageNet OSNet weights the supernets start from")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


def _derive(sub) -> None:
    p = sub.add_parser("derive", help="read the answer of a search into a genotype file")
    p.add_argument("--run", required=True, nargs="+", help="search run folder(s); several are combined by vote")
    p.add_argument("--select", default=None, metavar="METHOD",
                   help="how each run is read: argmax | perturb | retrieval | retrieval-pooled (default: "
                        "retrieval-pooled for runs judged on data the weights never saw, else argmax)")
    p.add_argument("--out", default=None,
                   help="genotype file to write (default RUN/genotype.yaml; required with several --run folders)")
    p.add_argument("--against", default=None, metavar="NAMES",
                   help="retrieval: published designs the answer must beat on fresh kept-out batches, else the "
                        "best of them is recommended (default osnet,osnet_ibn,osnet_ain; none: no check)")
    p.add_argument("--gate", type=float, default=None, metavar="Z",
                   help="retrieval: IN, and a searched answer over a published design, must win by more than Z "
                        "standard errors (default 2)")
    p.add_argument("--batches", type=int, default=None,
                   help="validation batches per source (default 16 for retrieval, 4 for perturb)")
    p.add_argument("--stem-first", action="store_true",
                   help="retrieval: after each run's answer, move one block IN site to the stem where that "
                        "scores no lower than the gate allows (a prior; no default uses it)")
    p.add_argument("--checkpoint", default=None, help="one run: derive from this checkpoint instead of its last")
    p.add_argument("--order", default=None, metavar="ORDER",
                   help="perturb: fixed (positions in the space's order, the default) | greedy")
    p.add_argument("--data-root", default=None, help="perturb, retrieval: datasets folder (default: the run's own)")
    p.add_argument("--device", default="auto", help="perturb, retrieval: auto | cpu | cuda[:N]")
    p.add_argument("--cost-table", default=None, metavar="FILE|proxy",
                   help="deployment cost table (default: the run's search.cost_table)")
    p.add_argument("--cost-budget", type=float, default=None, metavar="REL",
                   help="hard latency budget relative to the all-BN network (default: the run's search.cost_budget; "
                        "0 = none)")
    p.add_argument("--no-measure", action="store_true",
                   help="with a measured cost table: skip timing the derived network (record the prediction only)")


def _analyze(sub) -> None:
    p = sub.add_parser("analyze", help="domain-gap diagnostic: where do the sources differ in what IN removes?")
    _common(p)


def _retrain(sub) -> None:
    p = sub.add_parser("retrain", help="train a genotype (file or name) from scratch or published weights")
    _common(p)
    p.add_argument("--genotype", required=True, help="genotype file or name (osnet, osnet_ibn, osnet_ain)")
    p.add_argument("--pretrained", default=None, help="published torchreid weights to start from")
    p.add_argument("--resume", action="store_true")


def _evaluate(sub) -> None:
    p = sub.add_parser("eval-crossdomain", help="evaluate checkpoints on held-out target datasets")
    p.add_argument("--checkpoint", required=True, nargs="+", help="one or more retrain checkpoints")
    p.add_argument("--targets", required=True, help="comma-separated target datasets")
    p.add_argument("--data-root", default=None)
    p.add_argument("--metric", default=None, choices=["cosine", "euclidean"])
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    p.add_argument("--out", default=None, help="folder for metrics.json and results.md")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _plot(sub) -> None:
    p = sub.add_parser("plot", help="plot alpha weights, candidate scores and results of runs")
    p.add_argument("--run", required=True, nargs="+", help="run folder(s); several search runs are overlaid")
    p.add_argument("--out", default=None, help="folder for the figures (default RUN/plots)")
    p.add_argument("--format", default="png", choices=["png", "svg"])
    p.add_argument("--metrics", nargs="*", default=[], help="metrics.json files for the results chart")


def _profile(sub) -> None:
    p = sub.add_parser("profile", help="measure the deployment cost of every candidate of a search space")
    p.add_argument("--backend", default=None,
                   help="eager | bf16 | torchscript | onnxruntime | cuda (default eager; the BN-folded network)")
    p.add_argument("--space", default=None, help="search space name or YAML file (default: search.space's default)")
    p.add_argument("--arch", default="osnet_x1_0", help="width: osnet_x1_0 | osnet_x0_75 | osnet_x0_5 | osnet_x0_25")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (default 0: the backend's default)")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds per unit (median and IQR over them)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--clock", default="wall", help="wall | cpu (process CPU time: steadier on a busy machine; "
                                                    "needs --threads 1)")
    p.add_argument("--device", default=None, help="--backend cuda: the GPU (cuda or cuda:N)")
    p.add_argument("--proxy", action="store_true", help="count MACs and bytes instead of timing (no --backend)")
    p.add_argument("--out", default=None, help="cost table to write (.yaml/.json; default "
                                               "cost_<backend>_<arch>_<h>x<w>_b<batch>.yaml)")


def _demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the built-in synthetic domains")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data-root", default=None)
    p.add_argument("--quick", action="store_true", help="a much smaller run (for smoke tests)")


def _data(sub) -> None:
    p = sub.add_parser("data", help="dataset utilities")
    dsub = p.add_subparsers(dest="data_cmd", metavar="ACTION")
    q = dsub.add_parser("synth", help="write the built-in synthetic domains in the Market-1501 layout")
    q.add_argument("--out", required=True)
    q.add_argument("--domains", default=None, help="how many synth domains (a number), or domain names or families: "
                                                  "synth0,hard,geom2 (default: synth0..3)")
    q.add_argument("--force", action="store_true", help="regenerate even if present")
    q = dsub.add_parser("info", help="print the sizes of a dataset on disk")
    q.add_argument("name")
    q.add_argument("--data-root", default=None)


def _info(sub) -> None:
    p = sub.add_parser("info", help="parameters, MACs and IN placement of a model")
    p.add_argument("model", help="model name or genotype file")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)


def _extract(sub) -> None:
    p = sub.add_parser("extract", help="embed a folder of images with a model")
    p.add_argument("--checkpoint", default=None, help="retrain checkpoint")
    p.add_argument("--model", default=None, help="model name (with --weights for published weights)")
    p.add_argument("--weights", default=None, help="torchreid weights for --model")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="output .npz (features + file names)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--bf16", action="store_true")


def _export(sub) -> None:
    p = sub.add_parser("export", help="export a model to TorchScript or ONNX")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--weights", default=None)
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    p.add_argument("--out", required=True)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--check", action="store_true",
                   help="run the ONNX file in ONNX Runtime against PyTorch (exit 1 if they differ), report the "
                        "bf16/fp16 drift of each IN site; writes OUT.check.json")
    p.add_argument("--check-batches", default=None, metavar="B,B,...", help="--check: batch sizes (default 1,3,8)")
    p.add_argument("--check-target", default=None, metavar="DATASET",
                   help="--check: also compare rank-1 fp32 vs bf16 vs ONNX Runtime on this dataset (e.g. synth0)")
    p.add_argument("--data-root", default=None, help="--check-target: datasets folder (default: $OSNAS_DATA or ./data)")


def derive_config(args: argparse.Namespace):
    """The derive flags as a DeriveConfig: the one place the command line maps to derive's settings."""
    from osnas.derive import DeriveConfig
    from osnas.derive.options import check_against

    return DeriveConfig(select=args.select, gate=args.gate, batches=args.batches, order=args.order,
                        stem_first=args.stem_first,
                        against=None if args.against is None else check_against(args.against),
                        cost_table=args.cost_table, cost_budget=args.cost_budget, measure=not args.no_measure,
                        checkpoint=args.checkpoint, data_root=args.data_root, device=args.device)


def dispatch(args: argparse.Namespace) -> int:
    cmd = args.cmd
    if cmd == "search":
        from osnas.search import run_search

        run_search(sources=args.sources, data_root=args.data_root, space=args.space, config_file=args.config,
                   overrides=args.overrides, out=args.out, resume=args.resume, pretrained=args.pretrained,
                   runs=args.runs)
    elif cmd == "derive":
        from osnas.derive import run_derive

        run_derive(run=args.run, out=args.out, cfg=derive_config(args))
    elif cmd == "analyze":
        from osnas.analyze import run_analyze

        run_analyze(sources=args.sources, data_root=args.data_root, config_file=args.config,
                    overrides=args.overrides, out=args.out)
    elif cmd == "retrain":
        from osnas.retrain import run_retrain

        run_retrain(genotype=args.genotype, sources=args.sources, data_root=args.data_root,
                    config_file=args.config, overrides=args.overrides, out=args.out,
                    pretrained=args.pretrained, resume=args.resume)
    elif cmd == "eval-crossdomain":
        from osnas.evaluate import run_eval_crossdomain

        run_eval_crossdomain(checkpoints=args.checkpoint, targets=args.targets, data_root=args.data_root,
                             metric=args.metric, rerank=args.rerank, out=args.out, overrides=args.overrides)
    elif cmd == "plot":
        from osnas.plot import run_plot

        run_plot(runs=args.run, out=args.out, fmt=args.format, metrics=args.metrics)
    else:
        return _dispatch_tools(args)
    return 0


def _dispatch_tools(args: argparse.Namespace) -> int:
    """The commands around the pipeline: profile, demo, data, info, extract, export."""
    cmd = args.cmd
    if cmd == "profile":
        from osnas.profile import run_profile

        run_profile(space=args.space, arch=args.arch, backend=args.backend, height=args.height, width=args.width,
                    batch=args.batch, threads=args.threads, repeats=args.repeats, warmup=args.warmup, out=args.out,
                    proxy=args.proxy, device=args.device, clock=args.clock)
    elif cmd == "demo":
        from osnas.demo import run_demo

        run_demo(out=args.out, data_root_arg=args.data_root, quick=args.quick)
    elif cmd == "data":
        if args.data_cmd == "synth":
            from osnas.data.synth import run_synth

            run_synth(out=args.out, domains=args.domains, force=args.force)
        elif args.data_cmd == "info":
            from osnas.data.datasets import run_data_info

            run_data_info(args.name, args.data_root)
        else:
            raise OsnasError("osnas data: expected an action: synth or info")
    elif cmd == "info":
        from osnas.models.info import run_info

        run_info(args.model, height=args.height, width=args.width)
    elif cmd == "extract":
        from osnas.models.deploy import run_extract

        run_extract(checkpoint=args.checkpoint, model=args.model, weights=args.weights, images=args.images,
                    out=args.out, batch_size=args.batch_size, height=args.height, width=args.width, bf16=args.bf16)
    elif cmd == "export" and args.check:
        from osnas.models.export_check import run_export_check

        run_export_check(checkpoint=args.checkpoint, model=args.model, weights=args.weights, fmt=args.format,
                         out=args.out, height=args.height, width=args.width, batches=args.check_batches,
                         data_root=args.data_root, target=args.check_target)
    elif cmd == "export":
        from osnas.models.deploy import run_export

        if args.check_batches or args.check_target or args.data_root:
            raise OsnasError("--check-batches, --check-target and --data-root go with --check")
        run_export(checkpoint=args.checkpoint, model=args.model, weights=args.weights, fmt=args.format,
                   out=args.out, height=args.height, width=args.width)
    else:
        build_parser().print_help(sys.stderr)
        return 2
    return 0


def _error_line(e: BaseException) -> str:
    msg = str(e)
    # errors raised in DataLoader workers arrive wrapped with the worker's traceback:
    # keep only the original message (the last line, minus the exception type prefix)
    if "Traceback" in msg:
        last = [ln for ln in msg.strip().splitlines() if ln.strip()][-1]
        msg = last.split(": ", 1)[1] if last.startswith(("osnas.", "OsnasError")) and ": " in last else last
    return one_line(msg)


def main(argv: list | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return dispatch(args)
    except OsnasError as e:
        print(f"osnas: error: {_error_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("osnas: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `osnas info ... | head`
        sys.stderr.close()
        return 0
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"osnas: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
