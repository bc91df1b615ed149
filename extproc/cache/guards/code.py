"""The code guard: code must match exactly, whitespace included.

The embedding model cannot see whitespace (its tokenizer drops it), yet in code, quoted strings
and indented blocks whitespace is meaning: ``x = 'a    b'`` is not ``x = 'a b'``, an indented
``return`` is not an unindented one.  A candidate is rejected when

- the code in the two prompts (fenced blocks, inline code, indented lines) is not identical, or
- the prompts differ only in whitespace and either looks like code or quotes a string.

Prose that differs only in whitespace ("What is  Envoy?") is still served.
"""

from __future__ import annotations

import re

_FENCED = re.compile(r"```.*?(?:```|\Z)", re.S)
_INLINE = re.compile(r"`[^`\n]+`")
_INDENTED = re.compile(r"^(?: {4}|\t).*\S.*$", re.M)
_WS = re.compile(r"\s+")
# Characters that make whitespace around them matter: code syntax and quotes.
_CODE_LIKE = re.compile(r"""[=;{}()\[\]<>"'`\\|&$#:]""")


def code_segments(text: str) -> list[str]:
    """The code of ``text`` in order: fenced blocks, then inline spans and indented lines outside them."""
    fenced = _FENCED.findall(text)
    rest = _FENCED.sub("\n", text)
    return [*fenced, *_INLINE.findall(rest), *_INDENTED.findall(rest)]


def collapse(text: str) -> str:
    """``text`` with every whitespace run as one space (what the embedding model sees)."""
    return _WS.sub(" ", text).strip()


class CodeGuard:
    """Rejects a candidate whose code (or whitespace in code-like text) differs from the query's."""

    name = "code"

    def reject(self, query: str, candidate: str) -> bool:
        """True when serving ``candidate``'s answer could answer different code."""
        if query == candidate:
            return False
        if code_segments(query) != code_segments(candidate):
            return True
        if collapse(query) == collapse(candidate):  # differ in whitespace only
            return bool(_CODE_LIKE.search(query))
        return False
