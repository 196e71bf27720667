"""fastxent.score._bench: the measuring function behind the score benchmarks (quick mode)."""
import glob
import os
import tempfile

import numpy as np

from fastxent.score import _bench


def test_measure_quick_leaves_nothing_behind():
    pattern = os.path.join(tempfile.gettempdir(), "fastxent-bench-score-*")
    before = set(glob.glob(pattern))
    r = _bench.measure(rows=2000, classes=50, repeat=1)
    assert set(glob.glob(pattern)) == before
    assert (r["rows"], r["classes"], r["bytes"]) == (2000, 50, 2000 * 50 * 4 + 128)
    for key in ("score", "kernel", "read", "score_vs_kernel", "score_vs_read"):
        assert r["warm"][key] > 0
    assert r["warm"]["score_vs_kernel"] == r["warm"]["score"] / r["warm"]["kernel"]
    if "cold" in r:
        assert set(r["cold"]) == {"score", "read", "score_vs_read"}
    text = _bench.report(r)
    assert text.startswith("score: 2,000 x 50 float32 logits")
    assert "in-memory kernel" in text and "warm cache" in text


def test_measure_a_given_file_and_plain_read(tmp_path):
    lg, lb = _bench.make_file(str(tmp_path), 300, 7)
    x = np.load(lg)
    assert x.shape == (300, 7) and x.dtype == np.float32 and np.load(lb).max() < 7
    assert _bench.plain_read(lg, block=1000) == os.path.getsize(lg)
    r = _bench.measure(lg, lb, repeat=1, cold=False, num_threads=1)
    assert "cold" not in r and r["threads"] == 1 and r["rows"] == 300
    assert sorted(os.listdir(tmp_path)) == ["labels.npy", "logits.npy"]
