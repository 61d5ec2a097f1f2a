"""Rewrite git bracket expressions (``[...]``) into a form pathspec translates faithfully.

pathspec copies a bracket expression almost verbatim into a Python regex,
which differs from git's ``wildmatch`` in a few places: POSIX classes
(``[[:digit:]]``), backslash escapes inside brackets (``[\\]]``), reversed
ranges (git's ``[z-a]`` matches ``z``; pathspec drops the whole line), and a
negated class matching ``/`` (git never lets a bracket match ``/``). So each
bracket expression is parsed here with git's rules into a set of characters
and written back as a plain positive set pathspec cannot misread. Patterns
without ``[`` are untouched.
"""

from __future__ import annotations

from typing import Final

_MAX: Final = 0x10FFFF
_SLASH: Final = ord("/")
_AWKWARD_FIRST: Final = frozenset("!^[")
"""pathspec reads a leading ``!``/``^`` as negation; Python warns on a leading ``[``."""

Intervals = list[tuple[int, int]]


def _r(lo: str, hi: str) -> tuple[int, int]:
    return ord(lo), ord(hi)


_CLASSES: Final[dict[str, Intervals]] = {
    "alnum": [_r("0", "9"), _r("A", "Z"), _r("a", "z")],
    "alpha": [_r("A", "Z"), _r("a", "z")],
    "blank": [_r(" ", " "), _r("\t", "\t")],
    "cntrl": [(0, 31), (127, 127)],
    "digit": [_r("0", "9")],
    "graph": [(33, 126)],
    "lower": [_r("a", "z")],
    "print": [(32, 126)],
    "punct": [(33, 47), (58, 64), (91, 96), (123, 126)],
    "space": [(9, 13), (32, 32)],
    "upper": [_r("A", "Z")],
    "xdigit": [_r("0", "9"), _r("A", "F"), _r("a", "f")],
}


def normalize_brackets(pattern: str) -> str | None:
    """Return an equivalent pattern for pathspec, or None if git would never match it."""
    if "[" not in pattern:
        return pattern
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i : i + 2])
            i += 2
        elif ch == "[":
            parsed = _parse(pattern, i)
            if parsed is None:
                return None
            chars, i = parsed
            text = _emit(chars)
            if text is None:
                return None
            out.append(text)
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _parse(s: str, start: int) -> tuple[Intervals, int] | None:
    """Parse the bracket at ``s[start]`` like git's ``dowild``: (matched set, index after ``]``)."""
    n = len(s)
    p = start + 1
    if p >= n:
        return None
    negated = s[p] in "!^"
    if negated:
        p += 1
    items: Intervals = []
    prev: str | None = None
    first = True
    while True:
        if p >= n:
            return None
        ch = s[p]
        if ch == "]" and not first:
            break
        first = False
        if ch == "\\":
            p += 1
            if p >= n:
                return None
            prev = s[p]
            items.append(_r(prev, prev))
        elif ch == "-" and prev is not None and p + 1 < n and s[p + 1] != "]":
            p += 1
            hi = s[p]
            if hi == "\\":
                p += 1
                if p >= n:
                    return None
                hi = s[p]
            if hi >= prev:
                items.append(_r(prev, hi))
            prev = None
        elif ch == "[" and p + 1 < n and s[p + 1] == ":":
            close = s.find("]", p + 2)
            if close < 0:
                return None
            if close == p + 2 or s[close - 1] != ":":
                prev = "["
                items.append(_r(prev, prev))
            else:
                named = _CLASSES.get(s[p + 2 : close - 1])
                if named is None:
                    return None
                items.extend(named)
                prev = None
                p = close
        else:
            prev = ch
            items.append(_r(ch, ch))
        p += 1
    chars = _complement([*items, (_SLASH, _SLASH)]) if negated else _without(_merge(items), _SLASH)
    return chars, p + 1


def _merge(items: Intervals) -> Intervals:
    merged: Intervals = []
    for lo, hi in sorted(items):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _complement(items: Intervals) -> Intervals:
    out: Intervals = []
    nxt = 0
    for lo, hi in _merge(items):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= _MAX:
        out.append((nxt, _MAX))
    return out


def _without(items: Intervals, point: int) -> Intervals:
    out: Intervals = []
    for lo, hi in items:
        if lo <= point <= hi:
            out += [iv for iv in ((lo, point - 1), (point + 1, hi)) if iv[0] <= iv[1]]
        else:
            out.append((lo, hi))
    return out


def _emit(chars: Intervals, *, negate: bool = False) -> str | None:
    """Write a character set as ``[...]`` text that pathspec turns into the same regex class."""
    if not chars:
        return None
    if not negate and len(chars) == 1 and chars[0][0] == chars[0][1]:
        single = chr(chars[0][0])
        return "\\" + single if single in _AWKWARD_FIRST else f"[{single}]"
    special = {"]": False, "-": False}
    for mark in special:
        point = ord(mark)
        if any(lo <= point <= hi for lo, hi in chars):
            special[mark] = True
            chars = _without(chars, point)
    pieces = [_piece(lo, hi) for lo, hi in chars]
    if not special["]"]:
        safe = next((k for k, piece in enumerate(pieces) if piece[0] not in _AWKWARD_FIRST), None)
        if safe is None:
            if not special["-"]:
                # Only "!", "^" or "[" left (a set nobody writes): say it as "none of the rest".
                return _emit(_complement([*_with_marks(chars, special), (_SLASH, _SLASH)]), negate=True)
            pieces.insert(0, "-")
            special["-"] = False
        else:
            pieces.insert(0, pieces.pop(safe))
    body = ("]" if special["]"] else "") + "".join(pieces) + ("-" if special["-"] else "")
    return f"[{'!' if negate else ''}{body}]"


def _piece(lo: int, hi: int) -> str:
    if lo == hi:
        return chr(lo)
    return chr(lo) + chr(hi) if hi == lo + 1 else f"{chr(lo)}-{chr(hi)}"


def _with_marks(chars: Intervals, special: dict[str, bool]) -> Intervals:
    return _merge([*chars, *(_r(mark, mark) for mark, present in special.items() if present)])
