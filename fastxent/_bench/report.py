"""The text report of a benchmark run: machine header and ceilings, one table row per
implementation and case, the threads-scaling and linear tables, and a summary of speedups.

Columns of the main table:
  time          best sample, seconds per call
  elem/s        N*C elements per second
  GB/s          bytes that must move (inputs read, outputs written) per second
  % ceil        elem/s as a % of the lower of the two measured ceilings at the case's thread
                count, and which one binds: "mem" (DRAM read) or "exp" (fastxent's exp rate)
  speedup       time(peer) / time(fastxent) (> 1: fastxent is faster); on the fastxent row,
                against the fastest peer doing the same work, named in the last column

Progress ("case i of n") is shown by ``Progress``.

Layer: formatting only (reads records, computes nothing but geometric means); above grid.py.
"""
import itertools
import math
import shutil
import sys

from .ceilings import at
from .grid import ALL_OPS, SHORT

ITEMSIZE = {"float32": 4, "float64": 8}


def fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.3g} us"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_rate(x, unit="/s"):
    if x is None:
        return "-"
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def fmt_gbs(x):
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def fmt_ratio(x):
    if x is None:
        return "-"
    return f"{x:.3g}x" if x < 100 else f"{x:.0f}x"


def fmt_pct(pct, bound=None):
    if pct is None:
        return "-"
    text = "<1%" if 0 < pct < 1 else f"{pct:.0f}%"
    return f"{text} {bound}" if bound else text


def fmt_bytes(b):
    if b is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b} B"


class Table:
    """Fixed-width columns: ((title, width, "<" | ">"), ...)."""

    def __init__(self, *cols):
        self.cols = cols

    def line(self, values):
        return "  ".join(f"{v:{align}{w}}" for v, (_, w, align) in zip(values, self.cols)).rstrip()

    def header(self, out):
        print(self.line([c[0] for c in self.cols]), file=out)
        print(self.line(["-" * c[1] for c in self.cols]), file=out)
        out.flush()

    def records(self, rows, cells, out):
        """One line per record of a case: its case label on the first line, its implementation,
        then ``cells(record)`` (the other columns) or its error."""
        for i, r in enumerate(rows):
            head = [r["case"] if i == 0 else "", _impl_label(r)]
            if r.get("error"):
                print(self.line(head + ["error"]) + "  " + r["error"][:80], file=out)
            else:
                print(self.line(head + cells(r)) + _memory_error(r), file=out)
        out.flush()


def _impl_label(r):
    label = r["impl"]
    if r.get("impl_threads") == 1 and r["threads"] > 1:
        label += " [1T]"
    if r.get("loss_matches") is False:
        label += " !"
    return label


def _memory_error(r):
    return f"  memory: {r['memory_error'][:60]}" if r.get("memory_error") else ""


MAIN = Table(("case", 30, "<"), ("impl", 19, "<"), ("time", 9, ">"), ("elem/s", 10, ">"),
             ("GB/s", 6, ">"), ("% ceil", 8, ">"), ("speedup", 8, ">"), ("fastest peer", 13, "<"))
SCALING = Table(("op", 10, "<"), ("threads", 7, ">"), ("time", 9, ">"), ("elem/s", 10, ">"),
                ("% ceil", 8, ">"), ("speedup", 8, ">"), ("eff", 5, ">"))
LINEAR = Table(("linear+grad case", 29, "<"), ("impl", 9, "<"), ("time", 9, ">"),
               ("GFLOP/s", 8, ">"), ("vs naive", 9, ">"), ("extra mem", 10, ">"),
               ("vs naive", 9, ">"))


class Progress:
    """"case i of n" for a person watching: on a terminal, one status line rewritten in place
    and cleared before each table row is printed; on any other stream, one line per case.
    ``stream``: None means stderr when it is a terminal (else nothing), False nothing."""

    def __init__(self, total, stream=None):
        if stream is None:
            stream = sys.stderr if sys.stderr.isatty() else False
        self.total, self.i, self.label, self.stream = total, 0, "", stream or None
        self.live = bool(stream) and hasattr(stream, "isatty") and stream.isatty()

    def _show(self, text, every_line=False):
        if self.stream is None:
            return
        if self.live:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\033[K" + text[:width])
        elif every_line:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text):
        self._show(text)

    def start(self, label):
        self.i += 1
        self.label = label
        self._show(f"case {self.i} of {self.total}: {label}", every_line=True)

    def step(self, what):
        self._show(f"case {self.i} of {self.total}: {self.label} ({what})")

    def done(self):
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()


def print_header(results, out):
    m = results["machine"]
    cfg = m.get("fastxent_config") or {}
    print(f"fastxent bench ({results['mode']}): {m['cpu']}, {m['usable_cpus']} usable CPUs"
          + (f", L2 {m['l2_bytes'] // 1024} KiB" if m.get("l2_bytes") else "")
          + (f", L3 {m['l3_bytes'] // 2**20} MiB" if m.get("l3_bytes") else ""), file=out)
    if cfg:
        print(f"fastxent {cfg.get('version')}: openmp {'on' if cfg.get('openmp') else 'off'}, "
              f"kernels {cfg.get('isa', '?')} ({cfg.get('simd')}), "
              f"default threads {cfg.get('default_threads')}", file=out)
    print("peers: " + ", ".join(f"{k} {v}" if v else k for k, v in results["impls"].items()),
          file=out)
    if m.get("env"):
        print("environment: " + " ".join(f"{k}={v}" for k, v in m["env"].items())
              + "  (thread counts below are set explicitly)", file=out)
    load = m.get("load_average")
    if load and load[0] > 0.5:
        print(f"note: load average {load[0]:.2f} before the run: other processes compete for "
              "the CPUs, figures are noisy", file=out)
    print_ceilings(results.get("ceilings"), out)
    print(file=out)


def print_ceilings(ceilings, out):
    """The two ceilings per thread count; the read bandwidth also as elements/s of each dtype."""
    if not ceilings or not ceilings.get("read_gbs"):
        return
    levels = sorted({int(k) for k in ceilings["read_gbs"]})
    exp = ceilings.get("exp_elems_per_s") or {}
    table = Table(("ceilings", 44, "<"), *((f"{k} thread{'s' * (k > 1)}", 11, ">") for k in levels))
    print(file=out)
    table.header(out)
    read = [at(ceilings["read_gbs"], k) for k in levels]
    size = f" over {fmt_bytes(ceilings['read_bytes'])}" if ceilings.get("read_bytes") else ""
    print(table.line([f"memory: DRAM read (np.max{size})"]
                     + [f"{fmt_gbs(r)} GB/s" for r in read]), file=out)
    for dtype in exp:
        size = ITEMSIZE[dtype]
        print(table.line([f"  = {SHORT[dtype]} elements ({size} bytes) read"]
                         + [fmt_rate(r * 1e9 / size) for r in read]), file=out)
    for dtype, rates in exp.items():
        print(table.line([f"exp: fastxent.logsumexp, {SHORT[dtype]} rows in L2"]
                         + [fmt_rate(at(rates, k)) for k in levels]), file=out)


def print_case(rows, out):
    def cells(r):
        fx = r["impl"] == "fastxent"
        speed = r.get("vs_fastest") if fx else r.get("fastxent_speedup")
        return [fmt_time(r.get("best_s")), fmt_rate(r.get("elements_per_s")),
                fmt_gbs(r.get("gb_per_s")), fmt_pct(r.get("pct_ceiling"), r.get("bound")),
                fmt_ratio(speed), r.get("fastest_peer", "") if fx else ""]
    MAIN.records(rows, cells, out)


def print_scaling(rows, out):
    if not rows:
        return
    print(f"\nthreads scaling, fastxent {SHORT[rows[0]['dtype']]} {rows[0]['n']}x{rows[0]['c']}:",
          file=out)
    SCALING.header(out)
    for r in rows:
        if r.get("error"):
            print(SCALING.line([r["op"], r["threads"], "error"]) + "  " + r["error"], file=out)
            continue
        sp = r.get("scaling_speedup")
        print(SCALING.line([r["op"], r["threads"], fmt_time(r["best_s"]),
                            fmt_rate(r.get("elements_per_s")),
                            fmt_pct(r.get("pct_ceiling"), r.get("bound")), fmt_ratio(sp),
                            f"{100 * sp / r['threads']:.0f}%" if sp else "-"]), file=out)


def print_linear_header(out):
    print("\nfused linear cross-entropy (loss + grad_hidden + grad_weight); extra mem = peak RSS "
          "during the call\nabove the RSS before it, minus the returned gradients:", file=out)
    LINEAR.header(out)


def print_linear_case(rows, out):
    def cells(r):
        naive, mv = r["impl"] == "naive", r.get("memory_vs_naive")
        return [fmt_time(r.get("best_s")), f"{r['gflops']:.3g}" if r.get("gflops") else "-",
                "-" if naive else fmt_ratio(r.get("time_vs_naive")),
                fmt_bytes(r.get("hwm_extra_bytes")),
                "-" if naive or mv is None else f"1/{1 / mv:.3g}"]
    LINEAR.records(rows, cells, out)


def _geomean_line(label, op, ratios, out):
    if ratios:
        gm = math.exp(sum(math.log(s) for s in ratios) / len(ratios))
        print(f"  {label:<15} {op:<15} {fmt_ratio(gm):>7}  ({fmt_ratio(min(ratios))} .. "
              f"{fmt_ratio(max(ratios))}, {len(ratios)} cases)", file=out)


def print_summary(results, out):
    rows = results["results"]
    peers = [p for p in dict.fromkeys(r["impl"] for r in rows) if p != "fastxent"]
    print("\nfastxent speedup over each peer, geometric mean (min .. max) over cases:", file=out)
    for op in ALL_OPS:
        _geomean_line("fastest peer", op, [r["vs_fastest"] for r in rows
                                          if r["op"] == op and r.get("vs_fastest")], out)
    for p, op in itertools.product(peers, ALL_OPS):
        _geomean_line(p, op, [r["fastxent_speedup"] for r in rows
                              if r["impl"] == p and r["op"] == op and r.get("fastxent_speedup")],
                      out)
    notes = ["% ceil: elem/s over the lower of the two ceilings at the case's thread count "
             "(mem: DRAM read bandwidth / bytes per element; exp: fastxent's exp rate).",
             "speedup: time(peer) / time(fastxent); on the fastxent row, against the fastest "
             "peer doing the same work (named in the last column)."]
    if any(r.get("impl_threads") == 1 and r["threads"] > 1 for r in rows):
        notes.append("[1T]: single-threaded NumPy-based peer, measured once, repeated per thread "
                     "count.")
    if any(r["impl"] == "sklearn" for r in rows):
        notes.append("sklearn log_loss is given probabilities (softmax done outside the timing); "
                     "it is never the fastest peer.")
    if any(r["impl"].startswith("torch") and r["op"] == "loss+grad" for r in rows):
        notes.append("torch loss+grad allocates a new gradient per call; fastxent and scipy write "
                     "into a preallocated out=.")
    bad = [r for r in rows if r.get("loss_matches") is False and not r.get("reused")]
    if bad:
        notes.append("!: loss differs from fastxent's beyond rtol (f32 1e-3, f64 1e-6): "
                     + ", ".join(f"{r['impl']} {r['case']} ({r['loss']:.6g})" for r in bad[:4])
                     + (" ..." if len(bad) > 4 else "")
                     + ("; sklearn clips probabilities to [eps, 1-eps] of the dtype, which "
                        "lowers the loss when C is large" if any(r["impl"] == "sklearn"
                                                                  for r in bad) else ""))
    for n in notes:
        print("  " + n, file=out)


def print_report(results, out=None):
    """Print a complete report for loaded results."""
    out = sys.stdout if out is None else out
    print_header(results, out)
    MAIN.header(out)
    for _, group in itertools.groupby(results["results"], key=lambda r: r["id"]):
        print_case(list(group), out)
    print_scaling(results.get("threads_scaling") or [], out)
    if results.get("linear"):
        print_linear_header(out)
        for _, group in itertools.groupby(results["linear"], key=lambda r: r["id"]):
            print_linear_case(list(group), out)
    if results.get("score"):
        from fastxent.score._bench import report as score_report
        print("\n" + score_report(results["score"]), file=out)
    print_summary(results, out)

