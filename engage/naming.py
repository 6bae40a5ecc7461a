"""Helpers for turning free-form names into identifiers."""

from __future__ import annotations

import functools
import re
import string

_LOWER = frozenset(string.ascii_lowercase)
_UPPER = frozenset(string.ascii_uppercase)
_LOWER_OR_DIGIT = _LOWER | frozenset(string.digits)
# One output word: a greedy run of upper case letters/digits followed by a greedy run of lower case
# letters/digits (the two consecutive loops of go-snakecase); the lookahead keeps it non-empty.
_WORD = re.compile(r"(?=[A-Za-z0-9])[A-Z0-9]*[a-z0-9]*")


@functools.lru_cache(maxsize=4096)
def snakecase(name: str) -> str:
    """Convert ``name`` to snake_case, byte-exact with segmentio/go-snakecase's ``Snakecase``.

    Only ASCII letters and digits are word characters. Everything else (spaces, punctuation and every
    non-ASCII character, e.g. ``é`` or ``ƒ``) is a separator and is dropped, so the result is always
    ASCII. Go walks UTF-8 bytes, but each byte of a multi-byte character is >= 0x80 and hence a
    separator, so walking code points gives the same result.

    The rules:

    * The leading run of lower case letters, digits and underscores (an underscore only if it is not
      the first character and is followed by a lower case letter or digit) is kept as is; an input
      made only of such a run is returned unchanged (``sample_text`` -> ``sample_text``).
    * The rest is split into words, each a run of upper case letters/digits followed by a run of
      lower case letters/digits, so an acronym stays glued to the word after it (``CStringRef`` ->
      ``cstring_ref``) and digits stick to the letters around them (``THE5r`` -> ``the5r``). Words
      are lowercased and joined with single underscores; runs of separators collapse and leading or
      trailing separators vanish (``   $#$sample   2    Text   `` -> ``sample_2_text``).
    * The first word is appended to the kept run without an underscore when it starts right after
      the run with an upper case letter and the run's part after its last underscore has no lower
      case letter (``5TEst`` -> ``5test``, ``edf_6N`` -> ``edf_6n``, but ``f_pX9`` -> ``f_p_x9``).
    * An input without any ASCII letter or digit yields ``""``.
    """
    idx = 0
    while idx < len(name) and (
        name[idx] in _LOWER_OR_DIGIT
        or (name[idx] == "_" and 0 < idx < len(name) - 1 and name[idx + 1] in _LOWER_OR_DIGIT)
    ):
        idx += 1
    head = name[:idx]
    words = [match.group().lower() for match in _WORD.finditer(name, idx)]
    if name[idx : idx + 1] in _UPPER and _LOWER.isdisjoint(head.rpartition("_")[2]):
        head += words.pop(0)
    return "_".join([head, *words] if head else words)
