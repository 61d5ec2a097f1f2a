"""Our ignore decisions against git's own, on a corpus of tricky cases.

Each case is built in a real git repository and compared with
``git ls-files --others --exclude-standard``: the files git would add are
exactly the files a snapshot keeps. ``.amlignore``/``.mltrainignore`` and the
secret-file defaults are modelled as ``-x`` patterns, which git ranks above
every ``.gitignore`` (as we rank them), in the same order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mltrain.snapshot.ignore import SECRET_PATTERNS
from mltrain.snapshot.walk import load_rules, walk

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

Name = str | bytes


@dataclass(frozen=True)
class Case:
    ignores: Mapping[Name, str | bytes]
    """Ignore files (``.gitignore`` at any depth) and their text."""
    files: tuple[Name, ...]
    links: Mapping[str, str] = field(default_factory=dict)
    """Symlinks to create: path -> target text."""


def case(gitignore: str | bytes, *files: Name, **links: str) -> Case:
    return Case({".gitignore": gitignore}, files, links)


CASES: dict[str, Case] = {
    "glob": case("*.log\n", "a.log", "b.txt", "sub/c.log", "sub/d.txt"),
    "negation": case("*.log\n!keep.log\n", "a.log", "keep.log", "sub/keep.log", "sub/x.log"),
    "leading_slash_anchors": case("/build\n", "build/x", "sub/build/x", "buildx"),
    "middle_slash_anchors": case("doc/*.txt\n", "doc/a.txt", "doc/sub/b.txt", "x/doc/c.txt", "doc/d.md"),
    "trailing_slash_in_middle": case("a/b/\n", "a/b/c", "x/a/b/c", "a/bc"),
    "dir_only": case("out/\n", "out/a", "sub/out/b", "d/out", "out2"),
    "dir_only_skips_files": case("logs/\n", "logs", "sub/logs/x"),
    "dir_only_wildcard": case("build*/\n", "build1/x", "buildx", "b/build2/y"),
    "dir_only_skips_symlink_to_dir": case("link/\n", "real/f", link="real"),
    "name_matches_dir_too": case("vendor\n", "vendor/a", "x/vendor/b", "vendorx"),
    "star_slash_is_every_dir": case("*/\n", "a", "d/x", "e/f/g"),
    "leading_double_star": case("**/tmp\n", "tmp/a", "x/tmp/b", "x/y/tmp", "tmpx"),
    "double_star_path": case("**/foo/bar\n", "foo/bar", "x/foo/bar", "x/y/foo/bar", "foo/baz"),
    "trailing_double_star": case("cache/**\n", "cache/a", "cache/sub/b", "sub/cache/c"),
    "trailing_double_star_negated": case("cache/**\n!cache/keep\n", "cache/a", "cache/keep", "cache/sub/b"),
    "middle_double_star": case("a/**/b\n", "a/b", "a/x/b", "a/x/y/b", "x/a/b", "a/bb"),
    "dir_only_double_star": case("a/**/\n", "a/f", "a/x/f", "a/x/y/f"),
    "double_star_alone": case("**\n!*.keep\n", "a.keep", "b", "d/c.keep"),
    "escaped_hash": case("\\#notes\n", "#notes", "notes"),
    "comment": case("# comment\n*.bak\n", "# comment", "x.bak", "y"),
    "hash_in_middle": case("a#b\n", "a#b", "ab"),
    "escaped_bang": case("\\!important\n", "!important", "important"),
    "bang_in_middle": case("a!b\n", "a!b", "ab"),
    "escaped_star": case("\\*.txt\n", "*.txt", "a.txt"),
    "escaped_letter": case("a\\b\n", "ab", "a\\b"),
    "trailing_spaces_trimmed": case("foo   \n", "foo", "foo "),
    "escaped_trailing_space": case("bar\\ \n", "bar ", "bar"),
    "leading_space_kept": case(" lead\n", " lead", "lead"),
    "crlf_lines": case("*.log\r\n!keep.log\r\n", "a.log", "keep.log", "b"),
    "parent_excluded_no_reinclude": case("data/\n!data/keep.csv\n", "data/keep.csv", "data/x"),
    "reinclude_under_star": case("data/*\n!data/keep.csv\n", "data/keep.csv", "data/x", "data/sub/y"),
    "reinclude_nested_levels": case(
        "dir/*\n!dir/sub/\ndir/sub/*\n!dir/sub/keep\n", "dir/a", "dir/sub/keep", "dir/sub/x"
    ),
    "whitelist": case("*\n!*/\n!*.py\n", "a.py", "b.txt", "sub/c.py", "sub/d.md"),
    "top_level_whitelist": case("/*\n!/src\n", "a", "src/x", "other/y"),
    "negated_dir_keeps_file_rules": case("*.csv\n!data/\n", "data/x.csv", "data/y.txt"),
    "dir_reincluded_then_files": case("logs/\n!logs/\n*.log\n", "logs/a.log", "logs/b.txt"),
    "last_match_wins": case("!x.txt\n*.txt\n", "x.txt", "y.txt"),
    "dotfiles": case(".*\n!.keep\n", ".hidden", "visible", ".keep", "d/.x"),
    "char_class": case("file[0-9].txt\n", "file1.txt", "filea.txt", "file10.txt"),
    "negated_class": case("[!a]x\n", "ax", "bx", "x"),
    "question_mark": case("?.tmp\n", "a.tmp", "ab.tmp", ".tmp"),
    "star_stops_at_slash": case("a/*.c\n", "a/x.c", "a/b/y.c"),
    "spaces_in_names": case("my file.txt\n", "my file.txt", "my  file.txt"),
    "unicode_names": case("*.ü\nünï/\n", "ä.ü", "b.txt", "ünï/x", "x/ünï/y"),
    "newline_in_names": case("*.pyc\n", "a\nb.pyc", "dir\nx/y.pyc", "dir\nx/z.py", "c\n"),
    "non_utf8_names": case(b"*.bin\n\xe9*\n", b"\xff\xfe.bin", b"\xff.txt", b"\xe9t\xe9", b"t\xe9"),
    "posix_classes": case("[[:digit:]]*\n[[:space:][:punct:]]x\n", "1a", "a1", " x", "-x", "ax"),
    "unknown_posix_class_never_matches": case("[[:bogus:]]\n*.o\n", "b", "x.o"),
    "bracket_closing_first": case("[]a]x\n", "]x", "ax", "bx"),
    "bracket_escape_inside": case("[\\]]z\n", "]z", "az"),
    "bracket_reversed_range": case("[z-a]\n*.o\n", "z", "a", "x.o"),
    "bracket_caret_negates": case("[^a]y\n", "ay", "by"),
    "bracket_negation_never_matches_slash": case("a[!x]b\n", "a/b", "acb", "axb"),
    "bracket_awkward_sets": case("[!]]\n[[]\n[]-]\n", "]", "[", "-", "a"),
    "question_mark_is_one_byte": case("?.txt\n[!a]\n", "é.txt", "b.txt", "é", "a"),
    "pattern_ending_in_nbsp_byte": case("*à\n", "là", "la"),
    "trailing_tab_kept": case("tab\t\n", "tab\t", "tab"),
    "trailing_backslash_invalid": case("foo\\\n*.o\n", "foo", "foo\\", "x.o"),
    "lone_slash_and_bang": case("/\n!\n*.o\n", "a", "!", "x.o"),
    "dir_only_name_ending_in_space": case("sp /\n", "sp /x", "sp/y"),
    "star_star_inside_segment": case("foo**bar\n", "foobar", "fooxbar", "foo/bar", "foox/ybar"),
    "secret_files": case(
        "",
        ".env", ".env.local", "key.pem", "tls.key", "id_rsa", "id_rsa.pub", "id_ed25519", ".netrc",
        ".aws/credentials", ".ssh/config", "sub/.env", "ok.txt", "environment.yml",
    ),
    "gitignore_cannot_reinclude_secret": case("!.env\n", ".env", "ok"),
    "nested_deeper_wins": Case(
        {".gitignore": "*.txt\n", "sub/.gitignore": "!important.txt\n"},
        ("a.txt", "sub/important.txt", "sub/other.txt", "important.txt"),
    ),
    "nested_anchor_is_its_dir": Case({"sub/.gitignore": "/local\n"}, ("sub/local", "sub/x/local", "local")),
    "nested_in_excluded_dir_unread": Case(
        {".gitignore": "data/\n", "data/.gitignore": "!keep\n"}, ("data/keep", "data/x", "y")
    ),
    "nested_three_levels": Case(
        {".gitignore": "*.tmp\n", "a/.gitignore": "!*.tmp\nx*\n", "a/b/.gitignore": "!x1\n*.tmp\n"},
        ("r.tmp", "a/r.tmp", "a/x0", "a/b/x1", "a/b/x2", "a/b/r.tmp"),
    ),
    "symlinked_gitignore_not_followed": Case(
        {"patterns.txt": "*.x\n"}, ("sub/a.x", "b.x"), {"sub/.gitignore": "../patterns.txt"}
    ),
}

_BRACKET_PATTERNS = (
    "[!]]", "[]-]", "[a-]", "[!!]", "[[]", "[!a]", "[[:space:][:punct:]]", "[\\\\-z]", "[^!]", "[!^]", "[!-]",
    "[]a]", "[!][]", "[:a]", "[[:]]", "[a-\\]]", "[!x-z]", "[[?]", "[!\\]]", "[^-^]", "[!^!]", "[!-![]",
    "[[:alpha:]-]", "[!]",
)
_BRACKET_NAMES = ("a", "aa", "b", "]", "-", "!", "^", "[", "\\", " ", ":", "z", "1", "\t", "é", "x.y", "d/x")
CASES.update(
    {f"bracket_zoo_{n:02}": case(pattern + "\n", *_BRACKET_NAMES) for n, pattern in enumerate(_BRACKET_PATTERNS)}
)


def _git(repo: Path, *args: str) -> bytes:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(repo),
        "LC_ALL": "C",
    }
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True).stdout


def _b(name: Name) -> bytes:
    return name if isinstance(name, bytes) else name.encode("utf-8")


def _build(root: Path, item: Case) -> None:
    base = os.fsencode(root)
    for rel in item.files:
        path = os.path.join(base, _b(rel))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(b"x")
    for rel, text in item.ignores.items():
        path = os.path.join(base, _b(rel))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(_b(text))
    for rel, target in item.links.items():
        path = os.path.join(base, _b(rel))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(target, path)


def _git_kept(repo: Path, extra: tuple[str, ...] = ()) -> set[str]:
    args = ["ls-files", "--others", "--exclude-standard", "-z"]
    for pattern in (*SECRET_PATTERNS, *extra):
        args += ["-x", pattern]
    out = _git(repo, *args)
    return {os.fsdecode(p) for p in out.split(b"\0") if p}


def _ours(root: Path) -> set[str]:
    return {f[0] for f in walk(os.fspath(root), load_rules(os.fspath(root))).files}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """All nested cases in one repository (each under its own folder), listed by git once."""
    repo = tmp_path_factory.mktemp("corpus")
    _git(repo, "init", "-q")
    for name, item in CASES.items():
        _build(repo / name, item)
    return repo, _git_kept(repo)


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_files_as_git(corpus: tuple[Path, set[str]], name: str) -> None:
    repo, git_kept = corpus
    prefix = name + "/"
    expected = {p[len(prefix) :] for p in git_kept if p.startswith(prefix)}
    ours = {p[len(prefix) :] for p in _ours(repo) if p.startswith(prefix)}
    assert ours == expected


ROOT_CASES: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "mltrainignore_reincludes_gitignored": (
        {".gitignore": "*.log\ndata/\n", ".mltrainignore": "!keep.log\n!data/\ndata/*.tmp\n"},
        ("a.log", "keep.log", "data/x", "data/y.tmp", "sub/keep.log"),
    ),
    "mltrainignore_over_amlignore": (
        {".amlignore": "*.csv\n/big/\n", ".mltrainignore": "!a.csv\n"},
        ("a.csv", "b.csv", "big/x", "sub/a.csv"),
    ),
    "mltrainignore_opts_secret_back_in": (
        {".mltrainignore": "!.env.example\n!/.ssh/\n"},
        (".env", ".env.example", ".ssh/config", ".ssh/id_rsa"),
    ),
    "amlignore_cannot_reinclude_secret": ({".amlignore": "!.env\n"}, (".env", "a")),
    "root_gitignore_anchors": (
        {".gitignore": "/top.txt\nsub/*.o\n", "sub/.gitignore": "!keep.o\n"},
        ("top.txt", "x/top.txt", "sub/a.o", "sub/keep.o", "x/sub/a.o"),
    ),
}


@pytest.mark.parametrize("name", sorted(ROOT_CASES))
def test_root_ignore_files_same_as_git_exclude_options(tmp_path: Path, name: str) -> None:
    ignores, files = ROOT_CASES[name]
    texts: dict[Name, str | bytes] = {rel: text for rel, text in ignores.items()}
    _build(tmp_path, Case(texts, files))
    _git(tmp_path, "init", "-q")
    aml = [line for line in ignores.get(".amlignore", "").splitlines() if line]
    mine = [line for line in ignores.get(".mltrainignore", "").splitlines() if line]
    # git ranks -x patterns above .gitignore, the last one winning: amlignore < secrets < mltrainignore.
    args = ["ls-files", "--others", "--exclude-standard", "-z"]
    for pattern in (*aml, *SECRET_PATTERNS, *mine):
        args += ["-x", pattern]
    expected = {os.fsdecode(p) for p in _git(tmp_path, *args).split(b"\0") if p}
    assert _ours(tmp_path) == expected
