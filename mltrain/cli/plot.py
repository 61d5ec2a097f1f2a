"""``mltrain runs plot ID [ID...] [--metric NAME] [-o FILE.png|.svg]``: metric curves, runs overlaid.

With ``-o`` a picture (matplotlib, the ``plot`` extra); without, a text chart on stdout (terminal or not),
which needs nothing beyond mltrain. The drawing is ``mltrain.tracking.plot``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mltrain.cli.output import info, out
from mltrain.cli.runs import open_history


def command(parsed: argparse.Namespace) -> int:
    from mltrain.tracking.plot import load, pick_metrics, save_figure, text_chart, too_many

    workspace, store = open_history(parsed)
    with store:
        curves = load(store, workspace, parsed.run_ids)
    metrics = pick_metrics(curves, parsed.metric)
    note = too_many(metrics)
    if parsed.output:
        path = save_figure(curves, metrics, Path(parsed.output))
        if note:
            info(note)
        out(f"wrote {path}")
        return 0
    columns = shutil.get_terminal_size((100, 24)).columns
    label = max(len(c.label) for c in curves)
    out(text_chart(curves, metrics, width=max(10, min(40, columns - label - 40))))
    if note:
        info(note)
    return 0
