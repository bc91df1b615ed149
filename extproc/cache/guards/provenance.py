"""Which code computed a model's text features: a digest ``train-verifier`` records in the model
file and the server compares at load, since a model is only right for the features it learned
from (a rule or word list changed since gives other values than it was fitted on).

Kept apart from :mod:`~extproc.cache.guards.features` so that the digest covers the code that
computes features and nothing else.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
from functools import cache

from extproc.cache.guards import content, dates, direction, features, lexical, numerals, rules, scripts

FEATURE_MODULES = (features, rules, dates, direction, lexical, numerals, content, scripts)
"""The modules whose code decides a text feature's value."""


def code_of(source: str) -> str:
    """Python ``source`` without its comments and docstrings (which change no feature)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                kept = [
                    s for s in block if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
                ]
                setattr(node, name, kept or [ast.Pass()])
    return ast.unparse(tree)


@cache
def feature_code() -> str:
    """A digest of the code that computes the text features (their names, the rules and word
    lists they read; not comments or docstrings); "" where the package was installed without
    its sources (nothing to compare)."""
    try:
        source = "".join(code_of(inspect.getsource(m)) for m in FEATURE_MODULES)
    except OSError:
        return ""
    names = ",".join(features.FEATURES)
    return hashlib.sha256(f"{names}|{source}".encode()).hexdigest()[:16]
