"""The package type-checks: mypy (configured in pyproject.toml, with the .pyi stubs of the
compiled kernels) reports no issue, and the typing marker ships with the package."""
from pathlib import Path

import fastxent

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(fastxent.__file__).resolve().parent


def test_typing_files_present():
    assert (PACKAGE / "py.typed").is_file()
    for name in ("_xent", "_probs"):
        assert (PACKAGE / f"{name}.pyi").is_file()


def test_mypy_is_clean():
    """mypy reads the source tree (and the stubs, not the compiled modules)."""
    from mypy import api

    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"),
                                      "--cache-dir", str(ROOT / ".mypy_cache"),
                                      str(ROOT / "fastxent")])
    assert status == 0, stdout + stderr


def test_stubs_match_the_compiled_modules():
    """Every function a stub declares exists in the compiled module, and the reverse."""
    import ast

    from importlib import import_module

    from fastxent import _kernels

    modules = [(fam, import_module(f"fastxent._{fam}_{level['suffix']}"))
               for fam in _kernels.FAMILIES for level in _kernels.BUILD_INFO["levels"]]
    assert modules
    for fam, module in modules:
        tree = ast.parse((PACKAGE / f"_{fam}.pyi").read_text())
        declared = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        declared |= {n.target.id for n in tree.body
                     if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                     and not n.target.id.startswith("_")}
        public = {n for n in dir(module) if not n.startswith("_")
                  and (callable(getattr(module, n)) or n.isupper())}
        assert declared == public, (module.__name__, declared ^ public)
