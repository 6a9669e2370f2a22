"""One-line descriptions of config fields, read from the source of their attrs class: the string
literal right under a field (an attribute docstring) or else the comment at the end of its line::

    @attrs.define
    class Config:
        eta: float = 1.0
        \"\"\"Particle step size of the flow (Eq. 12).\"\"\"
        steps: int = 10  # Euler steps per sample

``onestep plugins`` and ``onestep config`` show them beside each field's default.
"""
from __future__ import annotations

import ast
import inspect
import io
import re
import textwrap
import tokenize
from typing import Any, Iterator

import attrs


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    match = re.search(r"(?<=[a-z0-9)\]`'\"])\.(\s|$)", flat)
    return flat[: match.start() + 1] if match else flat


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its one-line description; empty where the source cannot be read."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        tree = ast.parse(source)
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return {}
    body = next((n.body for n in tree.body if isinstance(n, ast.ClassDef)), [])
    docs: dict[str, str] = {}
    for node, after in zip(body, [*body[1:], None]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[node.target.id] = _first_sentence(after.value.value)
        elif node.end_lineno in comments:
            docs[node.target.id] = comments[node.end_lineno]
    return docs


def describe(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(dotted path, default, description) of every field of attrs class ``cls``, nested attrs
    fields expanded (``train.optim.lr``)."""
    docs = field_docs(cls)
    instance = cls()
    for f in attrs.fields(cls):
        value = getattr(instance, f.name)
        path = f"{prefix}{f.name}"
        if attrs.has(type(value)):
            yield from describe(type(value), f"{path}.")
        else:
            yield path, value, docs.get(f.name, "")
