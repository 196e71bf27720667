"""The Examples sections of the public API's docstrings run as doctests, so the documentation
cannot drift from what the code does."""
import doctest
import importlib
import inspect

import numpy as np
import pytest

MODULES = ["fastxent._api", "fastxent._lse_api", "fastxent._probs_api", "fastxent._binary_api",
           "fastxent._linear", "fastxent._config"]


@pytest.mark.parametrize("name", MODULES)
def test_examples(name):
    module = importlib.import_module(name)
    with np.printoptions(legacy=False):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                                 verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0


def test_every_public_function_has_examples():
    import fastxent

    for name in fastxent.__all__:
        obj = getattr(fastxent, name)
        if not callable(obj) or name in ("score_arrays", "score_files"):
            continue            # (the batch-scoring entry points document options CLI-style)
        doc = obj.__doc__ or ""
        sections = ["Examples"]
        if inspect.signature(obj).parameters:
            sections += ["Parameters", "Returns", "Raises"]
        for section in sections:
            assert f"{section}\n    ---" in doc, f"{name}: no {section} section"
