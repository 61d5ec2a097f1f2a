"""Which files of a source directory belong in a snapshot.

The rules follow git's exclude semantics so that "what git would commit" and
"what mltrain ships" agree:

* ``.gitignore`` files at any depth; a pattern is relative to the directory of
  the file that holds it, a deeper file wins over a shallower one, and inside
  one file the last matching line wins.
* ``.amlignore`` and ``.mltrainignore`` at the root of the source directory,
  in gitignore syntax, applied *after* every ``.gitignore`` (a ``!x`` there
  re-includes what a ``.gitignore`` dropped). ``.mltrainignore`` wins over
  ``.amlignore``.
* Known secret files (:data:`SECRET_PATTERNS`) are excluded after
  ``.amlignore`` and before ``.mltrainignore``: only an explicit ``!pattern``
  in ``.mltrainignore`` brings one back.
* A path whose parent directory is excluded can never be re-included. This
  falls out of evaluating one directory at a time: an excluded directory is
  pruned and never walked (nor are the ``.gitignore`` files inside it read).

``.git/info/exclude``, ``core.excludesFile`` and ``.gitignore`` files above
the source directory are deliberately not read: a snapshot must not depend on
the machine or checkout it was taken from.

Pattern syntax is compiled by pathspec (``GitIgnoreSpecPattern``, the pattern
class behind ``GitIgnoreSpec``). We do not call ``GitIgnoreSpec.check_file``:
it decides from the *full* path, letting a directory pattern match the
directory's descendants, and with that model ``*`` + ``!*/`` excludes a
directory that git keeps. Git decides each path by the last pattern that
matches *that path*, and prunes; so each pathspec regex is narrowed to match
the path itself (its "descendant" tail is replaced by an end anchor) and the
walk prunes. The corpus in ``tests/test_ignore_git.py`` checks the result
against ``git ls-files`` itself.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

from mltrain.snapshot.ignore_glob import normalize_brackets

logger = logging.getLogger(__name__)

MLTRAINIGNORE: Final = ".mltrainignore"
AMLIGNORE: Final = ".amlignore"
GITIGNORE: Final = ".gitignore"

ALWAYS_EXCLUDED_NAMES: Final = frozenset({".git", ".mltrain"})
"""Never snapshotted, whatever the rules say (repository data, mltrain's own workspace)."""

ALWAYS_EXCLUDED_DIRS: Final = frozenset({"__pycache__"})
"""Directory names never snapshotted (bytecode caches are rebuilt on the target)."""

VENV_MARKER: Final = "pyvenv.cfg"
"""A directory holding this file is a virtualenv: never snapshotted."""

SECRET_PATTERNS: Final = (
    ".env*",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_ed25519*",
    ".netrc",
    ".aws/",
    ".ssh/",
)
"""Credentials that should never travel to a compute target by accident."""

_ANY_TAIL: Final = "(?:(?P<ps_d>/)|$)"
_ANY_PARENT: Final = "^(?:.+/)?"
_MEMO_LIMIT: Final = 200_000
_GLOB_SPECIAL: Final = frozenset("\\*?[]")


class Verdict(IntEnum):
    """What the rules decide for one path."""

    INCLUDE = 0
    EXCLUDE = 1
    SECRET = 2
    """Excluded only because it looks like a secret (the caller warns about it)."""


class Layer(IntEnum):
    """Where a rule comes from; also its precedence class."""

    GITIGNORE = 0
    AMLIGNORE = 1
    SECRET = 2
    MLTRAINIGNORE = 3


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled ignore line."""

    regex: re.Pattern[str]
    """Matches a path (relative to the rule file's directory) that the line itself matches."""
    name_regex: re.Pattern[str] | None
    """When the line has no slash (as in git, only the name matters): the same test on the name."""
    negate: bool
    dir_only: bool
    layer: Layer
    origin: str
    """``file:line: text``, for log messages and debugging."""


@dataclass(frozen=True, slots=True)
class _Group:
    """Consecutive rules sharing a base directory, with one regex that pre-screens them all."""

    base: str
    rules: tuple[Rule, ...]
    """Lowest precedence first."""
    any_file: re.Pattern[str] | None
    any_dir: re.Pattern[str] | None
    by_name: bool
    """Every rule looks at the name only, so decisions are memoized per name."""
    memo: tuple[dict[str, Rule | None], dict[str, Rule | None]]
    """Decisions by name, for files and for directories."""


def trim_trailing_spaces(line: str) -> str:
    """Drop unescaped trailing spaces exactly like git's ``trim_trailing_spaces`` (tabs stay)."""
    last_space = -1
    i = 0
    n = len(line)
    while i < n:
        ch = line[i]
        if ch == " ":
            if last_space < 0:
                last_space = i
        elif ch == "\\":
            i += 1
            if i >= n:
                return line
            last_space = -1
        else:
            last_space = -1
        i += 1
    return line[:last_space] if last_space >= 0 else line


def compile_line(line: str, layer: Layer, origin: str) -> Rule | None:
    """Compile one ignore-file line, or return None for blanks, comments and invalid patterns."""
    line = trim_trailing_spaces(line)
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    body = line[1:] if negate else line
    dir_only = False
    if body.endswith("/") and body != "/":
        # Git strips one trailing slash and remembers "directories only"; the rest is an
        # ordinary pattern. Doing the same keeps pathspec's regex about the path itself.
        body = body[:-1]
        dir_only = True
        if body.endswith(" "):
            body = body[:-1] + "\\ "
    normalized = normalize_brackets(body) if body else None
    if normalized is None:
        return None
    body = _keep_trailing_whitespace(normalized)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            pattern = GitIgnoreSpecPattern(body)
    except Exception as exc:  # pathspec raises several types for malformed globs
        logger.warning("ignoring invalid pattern %s (%s)", origin, exc)
        return None
    if pattern.include is None or pattern.regex is None:
        return None
    source = _itself(pattern.regex.pattern, origin)
    name_source = None
    if "/" not in body:
        if source.startswith(_ANY_PARENT):
            name_source = "^" + source[len(_ANY_PARENT) :]
        elif not source:
            name_source = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        regex = re.compile(source, re.DOTALL)
        name_regex = None if name_source is None else re.compile(name_source, re.DOTALL)
    return Rule(regex, name_regex, negate, dir_only, layer, origin)


def _keep_trailing_whitespace(body: str) -> str:
    """pathspec strips all trailing whitespace; git keeps a tab (or an escaped char). Bracket it."""
    last = body[-1]
    if not last.isspace() or body.endswith("\\ "):
        return body
    head = body[:-1]
    if (len(head) - len(head.rstrip("\\"))) % 2:
        head = head[:-1]
    return f"{head}[{last}]"


def _itself(source: str, origin: str) -> str:
    """Narrow pathspec's regex from "this path or anything below it" to "this path"."""
    if source.endswith(_ANY_TAIL):
        return source[: -len(_ANY_TAIL)] + r"\Z"
    if source == ".":
        return ""
    if not source.endswith("/"):
        # pathspec's regex shapes are: <glob><_ANY_TAIL>, "." (match all), or a prefix
        # ending in "/" (``x/**``: everything strictly inside x). Anything else is new.
        logger.debug("unrecognised pathspec regex %r for %s; using it unchanged", source, origin)
    return source


def as_bytes(rel: str) -> str:
    """A path as one character per byte (latin-1), the form every rule matches against.

    Git matches names byte by byte: ``?`` or ``[...]`` is one *byte*, so it
    never matches a two-byte "é". Matching latin-1-decoded bytes against
    latin-1-decoded pattern lines gives the same answers, for any encoding.
    """
    return rel.encode("utf-8", "surrogateescape").decode("latin-1")


def parse_lines(text: bytes, layer: Layer, origin: str) -> list[Rule]:
    """Compile an ignore file's bytes; lines are matched as bytes (see :func:`as_bytes`)."""
    if text.startswith(b"\xef\xbb\xbf"):
        text = text[3:]
    rules = []
    for number, raw in enumerate(text.split(b"\n"), start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        rule = compile_line(raw.decode("latin-1"), layer, f"{origin}:{number}: {raw.decode('utf-8', 'replace')}")
        if rule is not None:
            rules.append(rule)
    return rules


def _union(regexes: list[re.Pattern[str]]) -> re.Pattern[str] | None:
    if not regexes:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return re.compile("|".join(f"(?:{r.pattern})" for r in regexes), re.DOTALL)


def _group(base: str, rules: list[Rule]) -> _Group:
    by_name = all(r.name_regex is not None for r in rules)

    def form(rule: Rule) -> re.Pattern[str]:
        return rule.name_regex if by_name and rule.name_regex is not None else rule.regex

    return _Group(
        base,
        tuple(rules),
        _union([form(r) for r in rules if not r.dir_only]),
        _union([form(r) for r in rules]),
        by_name,
        ({}, {}),
    )


def escape_glob(rel: str) -> str:
    """Quote a relative path so it is a literal, root-anchored gitignore pattern."""
    out = "".join("\\" + ch if ch in _GLOB_SPECIAL else ch for ch in rel)
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return "/" + out


class IgnoreRules:
    """The rules in force inside one directory of the walk.

    Immutable: entering a directory that has its own ``.gitignore`` yields a
    new object (:meth:`with_gitignore`); siblings keep sharing their parent's.
    """

    __slots__ = ("_aml", "_gits", "_groups", "_lower", "_top", "name_memo")

    def __init__(self, top: _Group, aml: _Group | None, gits: tuple[_Group, ...]) -> None:
        self._top = top
        self._aml = aml
        self._gits = gits
        """Deepest first."""
        self._groups = (top, *gits)
        """Highest precedence first."""
        self._lower = (aml, *gits) if aml is not None else gits
        """What applies below the secret rules, to tell "a secret" from "ignored anyway"."""
        by_name = all(g.by_name for g in (*self._groups, *self._lower))
        self.name_memo: tuple[dict[str, Verdict], dict[str, Verdict]] | None = ({}, {}) if by_name else None
        """When no rule looks past the file name: verdicts by name, for files and for directories.
        The walk consults it directly; a name's verdict is then the same in every directory."""

    @classmethod
    def create(cls, *, mltrainignore: bytes = b"", amlignore: bytes = b"") -> IgnoreRules:
        """Rules for a source root before any ``.gitignore`` is read."""
        aml = parse_lines(amlignore, Layer.AMLIGNORE, AMLIGNORE)
        secrets = [
            rule
            for number, line in enumerate(SECRET_PATTERNS, start=1)
            if (rule := compile_line(line, Layer.SECRET, f"<secret files>:{number}: {line}")) is not None
        ]
        mine = parse_lines(mltrainignore, Layer.MLTRAINIGNORE, MLTRAINIGNORE)
        return cls(_group("", [*aml, *secrets, *mine]), _group("", aml) if aml else None, ())

    def with_gitignore(self, rel_dir: str, text: bytes) -> IgnoreRules:
        """Rules for ``rel_dir`` (``""`` or ``"a/b/"``) and below, adding its ``.gitignore``."""
        rules = parse_lines(text, Layer.GITIGNORE, rel_dir + GITIGNORE)
        if not rules:
            return self
        return IgnoreRules(self._top, self._aml, (_group(as_bytes(rel_dir), rules), *self._gits))

    def verdict(self, rel: str, is_dir: bool) -> Verdict:
        """Decide for ``rel`` (relative to the root, no trailing slash); its parents are known kept."""
        if not rel.isascii():
            rel = as_bytes(rel)
        name = rel[rel.rfind("/") + 1 :]
        rule = _decide(self._groups, rel, name, is_dir)
        if rule is None or rule.negate:
            return Verdict.INCLUDE
        if rule.layer is not Layer.SECRET:
            return Verdict.EXCLUDE
        below = _decide(self._lower, rel, name, is_dir)
        if below is not None and not below.negate:
            return Verdict.EXCLUDE
        return Verdict.SECRET


def _decide(groups: tuple[_Group, ...], rel: str, name: str, is_dir: bool) -> Rule | None:
    for group in groups:
        if group.by_name:
            memo = group.memo[is_dir]
            try:
                rule = memo[name]
            except KeyError:
                rule = _last_match(group, name, is_dir, by_name=True)
                if len(memo) < _MEMO_LIMIT:
                    memo[name] = rule
        else:
            rule = _last_match(group, rel[len(group.base) :] if group.base else rel, is_dir, by_name=False)
        if rule is not None:
            return rule
    return None


def _last_match(group: _Group, subject: str, is_dir: bool, *, by_name: bool) -> Rule | None:
    screen = group.any_dir if is_dir else group.any_file
    if screen is None or screen.search(subject) is None:
        return None
    for rule in reversed(group.rules):
        regex = rule.name_regex if by_name else rule.regex
        if (is_dir or not rule.dir_only) and regex is not None and regex.search(subject) is not None:
            return rule
    return None
