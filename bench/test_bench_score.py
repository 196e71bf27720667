"""``fastxent score`` benchmarks: scoring a stored .npy beside its two ceilings.

One ``benchmark.group`` per file size holds three cases on the same float32 logits file:

* ``score``: ``fastxent.score_files`` (loss, top-1 accuracy, ECE, Brier; bounded memory);
* ``kernel``: ``fastxent.cross_entropy(reduction="none")`` on the same array in memory;
* ``read``: a plain sequential read of the file into one reused buffer.

With the page cache warm (the file is read once before timing); ``extra_info`` records the file's
bytes, so GB/s = bytes / time.  The cold-cache comparison (the file evicted before every run)
is ``fastxent.score._bench.measure``, which ``fastxent bench --full`` prints.

    pytest bench/test_bench_score.py --benchmark-only                  # 200 MB file
    pytest bench/test_bench_score.py --benchmark-only --xent-grid=full # 2 GB file
"""
import numpy as np
import pytest

import fastxent
from fastxent.score import _bench


@pytest.fixture(scope="module")
def score_file(request, tmp_path_factory):
    full = request.config.getoption("--xent-grid") == "full"
    rows = 500_000 if full else 50_000
    lg, lb = _bench.make_file(str(tmp_path_factory.mktemp("score")), rows, 1000)
    _bench.plain_read(lg)                    # warm the page cache
    return lg, lb


@pytest.mark.parametrize("case", ["score", "kernel", "read"])
def test_score_throughput(benchmark, score_file, case):
    lg, lb = score_file
    x = np.load(lg, mmap_mode="r")
    benchmark.group = f"score {x.shape[0]}x{x.shape[1]} float32 (warm)"
    benchmark.extra_info.update(bytes=x.nbytes, rows=x.shape[0], classes=x.shape[1],
                                threads=fastxent.config()["default_threads"])
    if case == "score":
        fn = lambda: fastxent.score_files(lg, lb)  # noqa: E731
    elif case == "kernel":
        arr, y = np.array(x), np.load(lb)
        fn = lambda: fastxent.cross_entropy(arr, y, reduction="none")  # noqa: E731
    else:
        fn = lambda: _bench.plain_read(lg)  # noqa: E731
    fn()
    benchmark(fn)
