"""The ``fastxent`` command (also ``python -m fastxent``).

    fastxent info                     build/runtime configuration (fastxent.show_config())
    fastxent bench                    quick benchmark vs the NumPy reference and installed peers
    fastxent bench --full             the whole grid (shapes x f32/f64 x loss, loss+grad x threads)
    fastxent bench --smoke            tiny sizes: checks in seconds that every installed peer runs
    fastxent bench --json out.json --plot out.png --threads-scaling
    fastxent bench --report out.json  re-print a saved run, or a pytest-benchmark JSON from bench/
    fastxent score LOGITS LABELS [--out LOSSES.npy] [--top-k 5] [--json] ...
                                      stream over stored scores in bounded memory: mean NLL,
                                      perplexity, top-k accuracy, ECE, Brier, throughput
                                      (.npy, .npz, shards, safetensors, Zarr, Parquet, --dask)

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
    from fastxent._bench import plot, report, run, saved

    # Fail before minutes of benchmarking, not after.
    if args.plot:
        _check_writable(args.plot, "--plot")
        plot.require_matplotlib()
    if args.json:
        _check_writable(args.json, "--json")
    if args.report:
        if args.full or args.smoke or args.threads_scaling or args.impls or args.json:
            raise CliError("--report: only --plot can be combined with it")
        results = saved.load_results(args.report)
        report.print_report(results)
    else:
        if args.full and args.smoke:
            raise CliError("--smoke: cannot be combined with --full")
        mode = "full" if args.full else "smoke" if args.smoke else "quick"
        results = run.run(mode, impls=args.impls, threads_scaling=args.threads_scaling,
                          progress=False if args.no_progress else None)
        if args.json:
            saved.save_json(results, args.json)
            print(f"results saved to {args.json}")
    if args.plot:
        plot.plot(results, args.plot)
        print(f"figure saved to {args.plot}")
    return 0


def _add_bench(sub):
    from fastxent._bench.peers import impl_names

    p = sub.add_parser(
        "bench", help="benchmark fastxent against the NumPy reference and installed peers",
        description="Measure the machine's two ceilings (DRAM read bandwidth, fastxent's exp "
                    "rate), then time cross-entropy loss and loss+grad (and the probability "
                    "family) for fastxent, the NumPy reference and each installed peer (torch, "
                    "torch.compile, jax, scipy, scikit-learn) and report time, elements/s, GB/s, "
                    "% of the lower ceiling, the speedups and the fastest peer. Quick mode "
                    "(default) takes under a minute.")
    p.add_argument("--full", action="store_true",
                   help="the whole grid (all shapes, float32 and float64, torch.compile); minutes")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes through the same code paths, seconds: checks that every "
                        "peer runs (the figures mean nothing)")
    p.add_argument("--json", metavar="FILE", help="save the results (and machine info) as JSON")
    p.add_argument("--plot", metavar="FILE",
                   help="draw speedups and %% of the ceiling per case to FILE (PNG; needs "
                        "matplotlib)")
    p.add_argument("--threads-scaling", action="store_true",
                   help="also time fastxent at 1..N threads on 4096x32768 (loss, loss+grad)")
    p.add_argument("--impls", metavar="LIST",
                   help="comma-separated implementations to run (default: all installed; "
                        f"known: {', '.join(impl_names())})")
    p.add_argument("--report", metavar="FILE",
                   help="print the report of a saved --json file or of a pytest-benchmark JSON "
                        "(pytest bench --benchmark-json=FILE) instead of running")
    p.add_argument("--no-progress", action="store_true",
                   help="no 'case i of n' status line (shown only when stderr is a terminal)")
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


# Python keyword arguments of fastxent.score (named by its errors) -> the flags of `score`
_SCORE_FLAGS = {
    "logits": "LOGITS", "labels": "LABELS", "out": "--out", "offsets": "--offsets",
    "weights": "--weights", "per_class": "--per-class", "base": "--base",
    "ignore_index": "--ignore-index", "chunk_rows": "--chunk-rows", "num_threads": "--threads",
    "memory_limit": "--memory-limit", "top_k": "--top-k", "ece_bins": "--ece-bins",
    "eps": "--eps", "input": "--input", "shift": "--shift", "per_sequence": "--per-sequence",
    "logits_key": "--logits-key", "labels_key": "--labels-key", "dask_timeout": "--dask-timeout",
    "address": "--dask",
}


def _flag_message(exc):
    """A fastxent.score error with its Python argument replaced by the command's flag."""
    msg, arg = str(exc), getattr(exc, "argument", None)
    if arg in _SCORE_FLAGS and msg.startswith(arg + ":"):
        return _SCORE_FLAGS[arg] + msg[len(arg):]
    return msg


class _Stopped(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread so that every cleanup path runs."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    raise _Stopped(signum)


def _stop_signals():
    """Turn SIGTERM and SIGHUP into _Stopped; returns the previous handlers."""
    import signal
    old = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            try:
                old[sig] = signal.signal(sig, _stop)
            except (ValueError, OSError):     # not the main thread
                pass
    return old


def _cmd_score(args):
    import signal

    from fastxent import score
    from fastxent.score._common import format_bytes, parse_bytes, resident_bytes

    try:
        limit = parse_bytes(args.memory_limit)
    except ValueError as exc:
        raise CliError(f"--memory-limit: {exc}") from None
    # As the program itself (the usual case) the limit bounds the whole process; called in-process
    # through main(argv), it bounds what the call adds to the caller's process.
    held = resident_bytes() if args.standalone else 0
    if held and limit - held < (1 << 20):
        raise CliError(f"--memory-limit: {format_bytes(limit)} leaves nothing for scoring: the "
                       f"process already holds {format_bytes(held)}")
    options = dict(
        logits_key=args.logits_key, labels_key=args.labels_key, weights=args.weights,
        offsets=args.offsets, input=args.input, binary=args.binary, shift=args.shift,
        per_sequence=args.per_sequence, ignore_index=args.ignore_index, base=args.base,
        top_k=tuple(args.top_k or ()), ece_bins=args.ece_bins, eps=args.eps, out=args.out,
        per_class=args.per_class, chunk_rows=args.chunk_rows, num_threads=args.threads,
        memory_limit=limit - held,
        progress=not (args.no_progress or args.quiet) and sys.stderr.isatty())
    old = _stop_signals()
    try:
        if args.dask:
            from fastxent import dask as fxdask

            options.pop("memory_limit")
            summary = fxdask.score_files(args.logits, args.labels, address=args.dask,
                                         timeout=args.dask_timeout, **options)
        else:
            summary = score.score_files(args.logits, args.labels, **options)
    except score.ScoreError as exc:
        if getattr(exc, "needed", None):
            raise CliError(f"--memory-limit: {format_bytes(limit)} is too small: the process holds "
                           f"{format_bytes(held)} and scoring needs {format_bytes(exc.needed)} "
                           "more") from None
        raise CliError(_flag_message(exc)) from None
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if args.json:
        print(summary.to_json())
    elif not args.quiet:
        print(summary.format())
    return 0


def _nonneg_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _add_score(sub):
    p = sub.add_parser(
        "score", help="score stored model outputs: NLL, perplexity, accuracy, calibration",
        description="Stream over stored scores (logits, log-probabilities or probabilities) and "
                    "labels in row chunks, in bounded memory, and print rows, mean NLL (nats "
                    "and --base), perplexity, bits per item, top-1 and top-k accuracy, expected "
                    "calibration error, Brier score and throughput. Inputs: .npy, .npz, "
                    "safetensors, Zarr, Parquet or Arrow files (two files, or one holding both), "
                    "or a directory of logits_<key>.npy + labels_<key>.npy shards.")
    p.add_argument("logits", metavar="LOGITS",
                   help="scores (N, C), sequences (B, T, V) or binary (N,): a file or a directory "
                        "of shards")
    p.add_argument("labels", metavar="LABELS", nargs="?",
                   help="integer labels (N,) or (B, T); may be left out when LOGITS holds both")
    g = p.add_argument_group("what is read")
    g.add_argument("--input", choices=("auto", "logits", "log-probs", "probs"), default="auto",
                   help="how to read the scores (default auto: probabilities when the rows are "
                        "in [0, 1] and sum to 1, otherwise logits)")
    g.add_argument("--binary", action="store_true",
                   help="one logit or probability per row, labels 0/1 (binary cross-entropy)")
    g.add_argument("--logits-key", "--logits-col", dest="logits_key", metavar="NAME",
                   help="array, tensor or column of the scores (default 'logits')")
    g.add_argument("--labels-key", "--labels-col", dest="labels_key", metavar="NAME",
                   help="array, tensor or column of the labels (default 'labels')")
    g.add_argument("--weights", metavar="FILE", help="per-row sample weights: weighted means")
    g.add_argument("--offsets", metavar="FILE",
                   help="sequence offsets (S+1 integers, 0 .. N, like CSR row pointers): ragged "
                        "sequences laid end to end")
    g.add_argument("--shift", action="store_true",
                   help="score position t against label t+1 of its sequence (causal LM)")
    g.add_argument("--ignore-index", metavar="I", type=_int, default=-100,
                   help="rows with this label are not scored (default: -100)")
    g.add_argument("--eps", metavar="E", type=_nonneg_float,
                   help="clip probabilities at E (default: machine epsilon of the computation)")
    g = p.add_argument_group("what is reported")
    g.add_argument("--base", metavar="B",
                   help="also report the mean NLL in this log base (2: bits); sets --out's unit")
    g.add_argument("--top-k", metavar="K", type=_positive_int, action="append",
                   help="also report top-K accuracy (repeatable)")
    g.add_argument("--ece-bins", metavar="B", type=_positive_int, default=15,
                   help="bins of the expected calibration error (default: 15)")
    g.add_argument("--out", metavar="FILE",
                   help="write the per-row NLL (with --offsets or --per-sequence: each "
                        "sequence's summed NLL, float64) to this .npy, in the unit of --base")
    g.add_argument("--per-sequence", action="store_true",
                   help="--out holds each sequence's summed NLL (3-D logits or --offsets)")
    g.add_argument("--per-class", metavar="FILE.csv",
                   help="write class, count, mean NLL and accuracy of every class to this CSV")
    quiet = g.add_mutually_exclusive_group()
    quiet.add_argument("--json", action="store_true", help="print the summary as JSON")
    quiet.add_argument("--quiet", action="store_true",
                       help="print nothing on success (errors still go to stderr)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar (shown only when stderr is a terminal and tqdm is "
                        "installed)")
    g = p.add_argument_group("how it runs")
    g.add_argument("--chunk-rows", metavar="K", type=_positive_int,
                   help="rows per chunk (default: about 32 MiB of scores, within --memory-limit)")
    g.add_argument("--threads", metavar="T", type=_positive_int,
                   help="threads over the rows of a chunk (default: OMP_NUM_THREADS or all cores)")
    g.add_argument("--memory-limit", metavar="SIZE", default="300MB",
                   help="peak resident memory of the command, --out included (default 300MB; "
                        "units B, KB, MB, GB, KiB, MiB, GiB; a bare number is MB)")
    g.add_argument("--dask", metavar="ADDRESS",
                   help="run on a dask.distributed cluster (scheduler address, e.g. "
                        "tcp://scheduler:8786); the workers must see the same paths")
    g.add_argument("--dask-timeout", metavar="SECONDS", type=_nonneg_float, default=60.0,
                   help="with --dask: stop with an error when no worker has been left for this "
                        "long (default: 60)")
    p.set_defaults(func=_cmd_score)


# Each subcommand is one ``_add_<name>(sub)`` function, listed here.
_SUBCOMMANDS = (_add_bench, _add_info, _add_score)


def build_parser():
    from fastxent._version import __version__

    parser = _Parser(prog=PROG, description="Fast cross-entropy kernels: tools.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None):
    """Entry point of the ``fastxent`` command; returns the exit code."""
    try:
        from fastxent._bench.grid import BenchError
    except ImportError as exc:         # e.g. the compiled extension is missing
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.standalone = argv is None
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
    except _Stopped as exc:
        import signal
        print(f"{PROG}: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
