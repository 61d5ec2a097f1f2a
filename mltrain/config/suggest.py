"""What a user meant: close matches for a mistyped key or option, and the quoted form of an override Hydra's
grammar rejects (``compute.master=local[2]`` -> ``compute.master='local[2]'``).

The valid keys come from the schemas (``mltrain.config.schema.keys_under``), so a typo is caught with the
same knowledge the validation has, and a key added by a new target is suggested with no edit here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CUTOFF = 0.75  # difflib's ratio: "scirpt"/"script" 0.83, "cancel_grase"/"cancel_grace" 0.92


def close(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, sorted(set(candidates)), n=n, cutoff=CUTOFF)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` did you mean docker?`` (with the leading space), or "" when nothing is close."""
    found = close(word, candidates)
    return f" did you mean {' or '.join(found)}?" if found else ""


# --------------------------------------------------------------- grammar
def quoted_override(line: str) -> str | None:
    """The form of ``line`` Hydra's grammar accepts, with the same meaning; None when quoting cannot help.

    A value is quoted whole (``k=local[2]`` -> ``k='local[2]'``); a bracketed list has each item quoted
    (``k=[numpy==2.1, scikit-learn>=1.5]`` -> ``k=['numpy==2.1','scikit-learn>=1.5']``). The result is
    checked with Hydra's own parser before it is offered.
    """
    key, sep, value = line.partition("=")
    if not sep or not key:
        return None
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        items = [item.strip() for item in value[1:-1].split(",") if item.strip()]
        fixed = f"{key}=[{','.join(_quote(item) for item in items)}]"
    else:
        fixed = f"{key}={_quote(value)}"
    return fixed if fixed != line and _parses(fixed) else None


def _quote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value
    if "'" in value and '"' not in value:
        return f'"{value}"'
    return "'" + value.replace("'", "\\'") + "'"


def _parses(line: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        OverridesParser.create().parse_overrides([line])
    except OverrideParseException:
        return False
    return True


def grammar_message(line: str, detail: str) -> str:
    fixed = quoted_override(line)
    if fixed is not None:
        return (f"malformed override {line}: use \"{fixed}\" (Hydra reads [ ] , = ' and spaces in a value "
                "as syntax; quote the value)")
    return f"malformed override {line}: {detail} (expected key=value, e.g. params.lr=0.01)"
