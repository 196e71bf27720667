#!/usr/bin/env bash
# Test what tools/build_wheel.sh built, the way users get it.
#
#   tools/test_dist.sh [WHEEL [SDIST]]     # default: the newest ones in dist/
#
# 1. The wheel, in a fresh venv with no C compiler on PATH: it installs (with the test extra)
#    and the test suite passes, run from a copy of tests/ outside the source tree.
# 2. The same wheel under qemu-x86_64 -cpu Nehalem (an SSE4.2-only CPU: Debian's qemu-user):
#    tools/smoke.py passes and fastxent picks x86-64-v2; -cpu Haswell picks x86-64-v3; forcing
#    FASTXENT_ISA=x86-64-v3 on Nehalem is refused with a clear error.
# 3. The sdist: unpacked, installed from its directory (compiled here), and its tests run there.
# 4. A source build whose compiler is missing (CC=/nonexistent) fails with one clear message.
# Needs Python >= 3.10, qemu-user (apt-get install qemu-user) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEEL=$(realpath "${1:-$(ls -t dist/fastxent-*manylinux*.whl | head -n 1)}")
SDIST=$(realpath "${2:-$(ls -t dist/fastxent-*.tar.gz | head -n 1)}")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastxent-dist-test.XXXXXX")
echo "wheel: $WHEEL"; echo "sdist: $SDIST"; echo "work:  $WORK"
PYTEST="python -m pytest -q -p no:cacheprovider --import-mode=importlib"

# ---- 1. the wheel, no compiler on PATH
"$PYTHON" -m venv "$WORK/wheel-venv"
mkdir "$WORK/bin"                        # the only programs on PATH besides the venv's
for tool in sh bash env cat ls rm mkdir uname; do ln -s "$(command -v "$tool")" "$WORK/bin/"; done
mkdir "$WORK/wheel-tests" && cp -r tests "$WORK/wheel-tests/"
(
    export PATH="$WORK/wheel-venv/bin:$WORK/bin"
    unset CC CXX
    for cc in cc gcc g++ c++ clang clang++ x86_64-linux-gnu-gcc; do
        if command -v "$cc" >/dev/null; then echo "a compiler is on PATH: $cc" >&2; exit 1; fi
    done
    python -m pip install -q --upgrade pip
    python -m pip install -q "$WHEEL[test]"
    cd "$WORK/wheel-tests"
    python -c "import fastxent; fastxent.show_config()"
    $PYTEST tests
)

# ---- 2. the wheel on older CPUs (emulated)
PY="$WORK/wheel-venv/bin/python"
qemu-x86_64 -cpu Nehalem "$PY" tools/smoke.py --expect x86-64-v2
qemu-x86_64 -cpu Haswell "$PY" tools/smoke.py --expect x86-64-v3
if out=$(FASTXENT_ISA=x86-64-v3 qemu-x86_64 -cpu Nehalem "$PY" -c "import fastxent" 2>&1); then
    echo "FASTXENT_ISA=x86-64-v3 was not refused on Nehalem" >&2; exit 1
fi
echo "$out" | tail -n 1 | grep "^ImportError: FASTXENT_ISA=x86-64-v3: this CPU cannot run the x86-64-v3 kernels"

# ---- 3. the sdist: build it, run its tests in the unpacked directory
"$PYTHON" -m venv "$WORK/sdist-venv"
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/$(basename "$SDIST" .tar.gz)"
(
    export PATH="$WORK/sdist-venv/bin:$PATH"
    python -m pip install -q --upgrade pip
    python -m pip install -q "$SRC[test]"
    cd "$SRC"
    pytest -q      # the sdist's pytest configuration; not `python -m pytest`, which would put the
                   # uncompiled ./fastxent ahead of the installed one
)

# ---- 4. no compiler: one clear message
if out=$(CC="$WORK/no-such-cc" "$WORK/sdist-venv/bin/python" -m pip install --no-deps --force-reinstall "$SRC" 2>&1); then
    echo "the build without a compiler did not fail" >&2; exit 1
fi
echo "$out" | grep -A 8 "error: fastxent: no working C compiler"
echo "test_dist: all passed"
rm -rf "$WORK"
