"""Ignore rules in isolation: line parsing, precedence layers, brackets, escaping."""

from __future__ import annotations

import pytest

from mltrain.snapshot.ignore import IgnoreRules, Verdict, as_bytes, escape_glob, trim_trailing_spaces
from mltrain.snapshot.ignore_glob import normalize_brackets


@pytest.mark.parametrize(
    ("line", "trimmed"),
    [
        ("foo", "foo"),
        ("foo   ", "foo"),
        ("foo\\ ", "foo\\ "),
        ("foo\\  ", "foo\\ "),
        ("foo\t", "foo\t"),
        ("foo \t ", "foo \t"),
        ("   ", ""),
        ("a\\", "a\\"),
    ],
)
def test_trailing_spaces_follow_git(line: str, trimmed: str) -> None:
    assert trim_trailing_spaces(line) == trimmed


def rules(*, gitignore: bytes = b"", mltrainignore: bytes = b"", amlignore: bytes = b"") -> IgnoreRules:
    base = IgnoreRules.create(mltrainignore=mltrainignore, amlignore=amlignore)
    return base.with_gitignore("", gitignore) if gitignore else base


def test_layers_rank_gitignore_then_amlignore_then_secrets_then_mltrainignore() -> None:
    r = rules(gitignore=b"*.csv\n", amlignore=b"!a.csv\n*.txt\n", mltrainignore=b"!b.txt\n")
    assert r.verdict("a.csv", False) is Verdict.INCLUDE
    assert r.verdict("c.csv", False) is Verdict.EXCLUDE
    assert r.verdict("a.txt", False) is Verdict.EXCLUDE
    assert r.verdict("b.txt", False) is Verdict.INCLUDE


def test_secret_verdicts() -> None:
    r = rules(amlignore=b"!.env\n")
    assert r.verdict(".env", False) is Verdict.SECRET
    assert r.verdict("sub/.env.local", False) is Verdict.SECRET
    assert r.verdict(".aws", True) is Verdict.SECRET
    assert r.verdict(".aws", False) is Verdict.INCLUDE  # a file named .aws is not the directory
    assert r.verdict("environment.yml", False) is Verdict.INCLUDE
    assert rules(gitignore=b"*.pem\n").verdict("k.pem", False) is Verdict.EXCLUDE
    assert rules(mltrainignore=b"!*.pem\n").verdict("k.pem", False) is Verdict.INCLUDE


def test_nested_gitignore_is_relative_to_its_directory() -> None:
    r = rules().with_gitignore("sub/", b"/local\nlogs/\n!keep.log\n*.log\n")
    assert r.verdict("sub/local", False) is Verdict.EXCLUDE
    assert r.verdict("sub/x/local", False) is Verdict.INCLUDE
    assert r.verdict("sub/x/logs", True) is Verdict.EXCLUDE
    assert r.verdict("sub/keep.log", False) is Verdict.EXCLUDE


def test_deeper_gitignore_wins() -> None:
    r = rules(gitignore=b"*.txt\n").with_gitignore("a/", b"!*.txt\n").with_gitignore("a/b/", b"x.txt\n")
    assert r.verdict("a/b/x.txt", False) is Verdict.EXCLUDE
    assert r.verdict("a/b/y.txt", False) is Verdict.INCLUDE


def test_names_are_matched_as_bytes_like_git() -> None:
    r = rules(gitignore=b"?.txt\n")
    assert r.verdict("é.txt", False) is Verdict.INCLUDE  # two bytes: git's ? matches one
    assert r.verdict("e.txt", False) is Verdict.EXCLUDE
    assert as_bytes("é") == "\xc3\xa9"
    raw = b"\xff.bin".decode("utf-8", "surrogateescape")
    assert rules(gitignore=b"\xff*\n").verdict(raw, False) is Verdict.EXCLUDE


@pytest.mark.parametrize("name", ["plain.txt", "a*b", "q?", "[x]", "back\\slash", "!bang", "#hash", "trail ", "sp ace"])
def test_escape_glob_matches_exactly_that_path(name: str) -> None:
    line = escape_glob(f"dir/{name}").encode() + b"\n"
    r = rules(mltrainignore=line)
    assert r.verdict(f"dir/{name}", False) is Verdict.EXCLUDE
    assert r.verdict(f"dir/{name}x", False) is Verdict.INCLUDE
    assert r.verdict(f"other/dir/{name}", False) is Verdict.INCLUDE


def test_invalid_patterns_are_skipped_not_fatal() -> None:
    r = rules(gitignore=b"foo\\\n[z-\n*.o\n")
    assert r.verdict("x.o", False) is Verdict.EXCLUDE
    assert r.verdict("foo", False) is Verdict.INCLUDE


@pytest.mark.parametrize(
    ("pattern", "normalized"),
    [
        ("plain", "plain"),
        ("[[:digit:]]x", "[0-9]x"),
        ("[z-a]", "[z]"),
        ("\\[x]", "\\[x]"),
        ("[]-]", "[]-]"),
        ("[\\]]", "[]]"),
    ],
)
def test_bracket_normalization(pattern: str, normalized: str) -> None:
    assert normalize_brackets(pattern) == normalized


@pytest.mark.parametrize("pattern", ["[[:bogus:]]", "[abc", "x[", "[\\", "[!]"])
def test_brackets_git_never_matches(pattern: str) -> None:
    assert normalize_brackets(pattern) is None


@pytest.mark.parametrize("pattern", ["[!]]", "[!!]", "[^a-z]"])
def test_negated_brackets_become_positive_sets_without_slash(pattern: str) -> None:
    result = normalize_brackets(pattern)
    assert result is not None and result.startswith("[") and result.endswith("]")
    assert "/" not in result and not result.startswith(("[!", "[^"))
