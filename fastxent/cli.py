"""The ``fastxent`` command (also ``python -m fastxent``).

    fastxent info                     build/runtime configuration (fastxent.show_config())
    fastxent bench                    quick benchmark vs the NumPy reference and installed peers
    fastxent bench --full             the whole grid (shapes x f32/f64 x loss, loss+grad x threads)
    fastxent bench --json out.json --plot out.png --threads-scaling
    fastxent bench --report out.json  re-print a saved run, or a pytest-benchmark JSON from bench/
    fastxent score LOGITS.npy LABELS.npy [--out LOSSES.npy] [--offsets OFFS.npy] [--base 2]
                                      stream over memory-mapped logits: mean NLL, perplexity,
                                      accuracy, throughput (also .npz, shard directories, --dask)

Errors are one line on stderr and exit code 2.  Each subcommand is one ``_add_<name>`` function
that registers its parser and handler.
"""
import argparse
import os
import sys

PROG = "fastxent"


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (plus a --help hint) instead of exiting."""

    def error(self, message):
        raise CliError(f"{message} (see '{self.prog} --help')")


def _cmd_info(args):
    import fastxent

    if args.json:
        import json
        print(json.dumps(fastxent.config(), indent=1))
    else:
        fastxent.show_config()
    return 0


def _add_info(sub):
    p = sub.add_parser("info", help="show version, OpenMP, threads, CPU, kernel level and compiler flags",
                       description="Show fastxent's build and runtime configuration.")
    p.add_argument("--json", action="store_true", help="print fastxent.config() as JSON")
    p.set_defaults(func=_cmd_info)


def _check_writable(path, option):
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CliError(f"{option}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CliError(f"{option}: directory {parent} is not writable")


def _cmd_bench(args):
    from fastxent import _bench

    # Fail before minutes of benchmarking, not after.
    if args.plot:
        _check_writable(args.plot, "--plot")
        _bench.require_matplotlib()
    if args.json:
        _check_writable(args.json, "--json")
    if args.report:
        if args.full or args.threads_scaling or args.impls or args.json:
            raise CliError("--report: only --plot can be combined with it")
        results = _bench.load_results(args.report)
        _bench.print_report(results)
    else:
        results = _bench.run(full=args.full, impls=args.impls,
                             threads_scaling=args.threads_scaling)
        if args.json:
            _bench.save_json(results, args.json)
            print(f"results saved to {args.json}")
    if args.plot:
        _bench.plot(results, args.plot)
        print(f"figure saved to {args.plot}")
    return 0


def _add_bench(sub):
    from fastxent._bench import impl_names

    p = sub.add_parser(
        "bench", help="benchmark fastxent against the NumPy reference and installed peers",
        description="Time cross-entropy loss and loss+grad for fastxent, the NumPy reference and "
                    "each installed peer (torch, torch.compile, scipy, scikit-learn, jax) and "
                    "report time, GB/s, % of the measured memory bandwidth and speedups. "
                    "Quick mode (default) takes under a minute.")
    p.add_argument("--full", action="store_true",
                   help="the whole grid (all shapes, float32 and float64, torch.compile); minutes")
    p.add_argument("--json", metavar="FILE", help="save the results (and machine info) as JSON")
    p.add_argument("--plot", metavar="FILE", help="draw figures to FILE (PNG; needs matplotlib)")
    p.add_argument("--threads-scaling", action="store_true",
                   help="also time fastxent at 1..N threads on 4096x32768 (loss, loss+grad)")
    p.add_argument("--impls", metavar="LIST",
                   help="comma-separated implementations to run (default: all installed; "
                        f"known: {', '.join(impl_names())})")
    p.add_argument("--report", metavar="FILE",
                   help="print the report of a saved --json file or of a pytest-benchmark JSON "
                        "(pytest bench --benchmark-json=FILE) instead of running")
    p.set_defaults(func=_cmd_bench)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _cmd_score(args):
    from fastxent import score

    options = dict(offsets=args.offsets, out=args.out, chunk_rows=args.chunk_rows,
                   ignore_index=args.ignore_index, base=args.base, num_threads=args.threads,
                   progress=not args.no_progress and sys.stderr.isatty())
    try:
        if args.dask:
            from fastxent import dask as fxdask

            summary = fxdask.score_files(args.logits, args.labels, address=args.dask, **options)
        else:
            summary = score.score_files(args.logits, args.labels, **options)
    except score.ScoreError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        import json
        print(json.dumps(summary.to_dict(), indent=1))
    else:
        print(summary.format())
    return 0


def _add_score(sub):
    p = sub.add_parser(
        "score", help="score stored logits: mean NLL, perplexity, bits per item, accuracy",
        description="Stream over memory-mapped logits (N, C) and labels (N,) in row chunks, so "
                    "inputs larger than RAM work, and print rows, mean NLL (nats and --base), "
                    "perplexity, bits per item, top-1 accuracy and throughput. Inputs: two .npy "
                    "files; one .npz holding 'logits' and 'labels' (or two .npz of one array); a "
                    "directory of logits_<key>.npy + labels_<key>.npy shards (natural order of "
                    "<key>); or two directories of .npy shards paired in natural order.")
    p.add_argument("logits", metavar="LOGITS",
                   help="logits .npy (N, C) float16/32/64, a .npz, or a directory of shards")
    p.add_argument("labels", metavar="LABELS", nargs="?",
                   help="labels .npy (N,) of integers (or .npz / directory); may be left out "
                        "when LOGITS holds both")
    p.add_argument("--out", metavar="FILE",
                   help="write per-row losses (with --offsets: per-sequence summed losses, "
                        "float64) to this .npy, in the unit of --base; written atomically")
    p.add_argument("--offsets", metavar="FILE",
                   help="sequence offsets .npy (S+1 integers, 0 .. N, like CSR row pointers): "
                        "score ragged sequences laid end to end")
    p.add_argument("--chunk-rows", metavar="K", type=_positive_int,
                   help="rows per chunk (default: about 8 MiB of logits)")
    p.add_argument("--threads", metavar="T", type=_positive_int,
                   help="threads per chunk (default: OMP_NUM_THREADS or all cores)")
    p.add_argument("--base", metavar="B",
                   help="also report the mean NLL in this log base (2: bits); sets --out's unit")
    p.add_argument("--ignore-index", metavar="I", type=_int, default=-100,
                   help="rows with this label are not scored (default: -100)")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="run on a dask.distributed cluster (scheduler address, e.g. "
                        "tcp://scheduler:8786); the workers must see the same paths")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (shown only when stderr is a terminal and tqdm is "
                        "installed)")
    p.set_defaults(func=_cmd_score)


# Each subcommand is one ``_add_<name>(sub)`` function, listed here.
_SUBCOMMANDS = (_add_bench, _add_info, _add_score)


def build_parser():
    parser = _Parser(prog=PROG, description="Fast cross-entropy kernels: tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None):
    """Entry point of the ``fastxent`` command; returns the exit code."""
    try:
        from fastxent._bench import BenchError
    except ImportError as exc:         # e.g. the compiled extension is missing
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return args.func(args)
    except SystemExit as exc:          # --help
        return exc.code if isinstance(exc.code, int) else 0
    except (CliError, BenchError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:         # e.g. the compiled extension is missing
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:            # e.g. `fastxent bench | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:             # e.g. writing --json
        print(f"{PROG}: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
