"""Small pieces every module of ``fastxent.score`` shares: the error type, the memory probe,
natural ordering of shard names and sizes in text."""
import os
import re

__all__ = ["ScoreError", "natural_key", "resident_bytes", "parse_bytes", "format_bytes"]

_ARGUMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):")


class ScoreError(ValueError):
    """A problem with the scoring inputs or options.

    The message is one line and starts with the Python argument it concerns ("labels: ...",
    "out: ..."), which is also ``argument`` (None when no single argument is at fault).
    """

    def __init__(self, message, argument=None):
        text = " ".join(str(message).split())
        super().__init__(text)
        if argument is None:
            m = _ARGUMENT.match(text)
            argument = m.group(1) if m else None
        self.argument = argument


def natural_key(s):
    """Sort key putting "x2" before "x10"."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s)]


def resident_bytes():
    """The process's resident memory now (bytes; 0 where the platform does not say)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource
        import sys
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError, AttributeError):
        return 0


_UNITS = {"": 10**6, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(text):
    """'300MB', '1.5 GiB', '64MiB', '500000000B' -> bytes (a bare number is in MB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"expected a size such as 300MB, 2GiB or 300 (MB), got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n):
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n:,} bytes"
