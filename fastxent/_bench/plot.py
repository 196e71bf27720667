"""``fastxent bench --plot FILE.png``: one figure, one row per case.

Left: fastxent's speedup over each peer (time of the peer / time of fastxent, log scale; right
of the line at 1x fastxent is faster).  Right: fastxent's rate as a % of the lower ceiling,
coloured by the ceiling that binds (DRAM read or exp), with the fastest peer's % as a ring.

Layer: reads results (records); matplotlib is optional (``fastxent[plot]``) and imported here.
"""
from .ceilings import at
from .grid import BenchError
from .report import fmt_gbs, fmt_rate

_BOUND_COLORS = {"mem": "tab:blue", "exp": "tab:orange"}
_MARKERS = "osD^vP*X"


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install matplotlib "
                         "(or pip install 'fastxent[plot]')") from None
    matplotlib.use("Agg")


def _ceiling_text(results):
    """"DRAM read 20 GB/s, exp f32 4.3 G/s (2 threads)" at the largest thread count measured."""
    ceil = results.get("ceilings") or {}
    levels = sorted(int(k) for k in ceil.get("read_gbs") or {})
    if not levels:
        return ""
    k = levels[-1]
    parts = [f"DRAM read {fmt_gbs(at(ceil['read_gbs'], k))} GB/s"]
    parts += [f"exp {dt.replace('float', 'f')} {fmt_rate(at(rates, k), 'elem/s')}"
              for dt, rates in (ceil.get("exp_elems_per_s") or {}).items() if at(rates, k)]
    return "ceilings at %d thread%s: %s" % (k, "s" * (k > 1), ", ".join(parts))


def plot(results, path):
    """Draw the figure of ``results`` (a run or loaded JSON) to ``path``."""
    require_matplotlib()
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    rows = [r for r in results["results"] if r.get("best_s")]
    cases = list(dict.fromkeys(r["id"] for r in rows if r["impl"] == "fastxent"))
    if not cases:
        raise BenchError("--plot: no fastxent results to plot")
    by_case = {cid: {r["impl"]: r for r in rows if r["id"] == cid} for cid in cases}
    fx = [by_case[c]["fastxent"] for c in cases]
    peers = [p for p in dict.fromkeys(r["impl"] for r in rows) if p != "fastxent"]
    fig, (left, right) = plt.subplots(
        1, 2, sharey=True, figsize=(13, 2.2 + 0.24 * len(cases)),
        gridspec_kw={"width_ratios": (3, 2), "wspace": 0.04})
    # light bands group the cases of one shape and dtype
    shapes = [(r["dtype"], r["n"], r["c"]) for r in fx]
    band = 0
    for i, s in enumerate(shapes):
        band += i > 0 and s != shapes[i - 1]
        if band % 2:
            for ax in (left, right):
                ax.axhspan(i - 0.5, i + 0.5, color="0.93", zorder=0, linewidth=0)

    for j, p in enumerate(peers):
        pts = [(by_case[c][p]["fastxent_speedup"], i) for i, c in enumerate(cases)
               if by_case[c].get(p, {}).get("fastxent_speedup")]
        if pts:
            left.scatter(*zip(*pts), marker=_MARKERS[j % len(_MARKERS)], s=28, label=p, zorder=3)
    left.axvline(1.0, color="black", linewidth=1)
    left.set_xscale("log")
    left.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    left.set_xlabel("fastxent speedup = time(peer) / time(fastxent)   (> 1: fastxent is faster)")
    left.grid(axis="x", which="both", alpha=0.3)
    left.set_yticks(range(len(cases)), [r["case"] for r in fx], fontsize=8)
    left.set_ylim(len(cases) - 0.5, -0.5)
    if peers:
        left.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1), ncol=len(peers),
                    frameon=False, handletextpad=0.2, columnspacing=1.2)

    pct = [r.get("pct_ceiling") or 0.0 for r in fx]
    right.barh(range(len(cases)), pct, height=0.7, zorder=2,
               color=[_BOUND_COLORS.get(r.get("bound"), "gray") for r in fx])
    for i, v in enumerate(pct):
        right.text(v, i, f" {v:.0f}%" if v >= 1 else " <1%", va="center", fontsize=7)
    ring = [(by_case[c][r["fastest_peer"]].get("pct_ceiling"), i)
            for i, (c, r) in enumerate(zip(cases, fx))
            if r.get("fastest_peer") and by_case[c][r["fastest_peer"]].get("pct_ceiling")]
    if ring:
        right.scatter(*zip(*ring), marker="o", s=30, facecolors="none", edgecolors="black",
                      zorder=3)
    right.axvline(100, color="gray", linestyle="--", linewidth=1)
    right.set_xlim(0, 1.15 * max([95.0] + pct + [v for v, _ in ring]))
    right.set_xlabel("fastxent, % of the lower ceiling")
    right.grid(axis="x", alpha=0.3)
    right.tick_params(axis="y", length=0)
    bounds = {r.get("bound") for r in fx}
    handles = [Patch(color=_BOUND_COLORS[b], label=f"bound: {text}")
               for b, text in (("mem", "DRAM read"), ("exp", "exp rate")) if b in bounds]
    if ring:
        handles.append(plt.Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
                                  markeredgecolor="black", label="fastest peer"))
    if handles:
        right.legend(handles=handles, fontsize=8, loc="lower left", bbox_to_anchor=(0, 1),
                     ncol=len(handles), frameon=False, handletextpad=0.3, columnspacing=1.0)

    title = f"fastxent bench ({results['mode']}) on {results['machine'].get('cpu')}"
    fig.suptitle(title + "\n" + _ceiling_text(results), fontsize=10)
    fig.subplots_adjust(left=0.2, right=0.98, bottom=0.6 / fig.get_figheight() + 0.02,
                        top=1 - 1.0 / fig.get_figheight())
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise BenchError(f"--plot: cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
