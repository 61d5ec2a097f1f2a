"""The outputs policy in place (mltrain.util.outputs.enforce) and the all-or-nothing copy, on real files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mltrain.util.outputs import Refused, copy_tree, enforce, listing, note_in_log


def test_an_outputs_folder_replaced_by_a_link_is_removed_and_its_target_untouched(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("keep")
    outputs = tmp_path / "run" / "outputs"
    outputs.parent.mkdir()
    outputs.symlink_to(elsewhere)
    assert enforce(outputs) == ["removed the outputs folder: it was a link, not a folder"]
    assert not os.path.lexists(outputs) and (elsewhere / "keep").read_text() == "keep"
    assert listing(outputs) == []


def test_enforce_clears_setid_keeps_inside_links_and_drops_the_rest(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    (outputs / "a" / "b").mkdir(parents=True)
    tool = outputs / "a" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o6755)
    (outputs / "a" / "b" / "up2").symlink_to("../..")  # the outputs folder itself: inside
    (outputs / "a" / "b" / "up3").symlink_to("../../..")
    (outputs / "loop").symlink_to("loop")
    os.mkfifo(outputs / "a" / "b" / "fifo")
    (outputs / "a" / "b").chmod(0o555)
    notes = enforce(outputs)
    assert len(notes) == 3, notes
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755
    assert sorted(p.name for p in outputs.rglob("*")) == ["a", "b", "tool", "up2"]
    assert enforce(outputs) == []  # a second pass (another process finalizing) finds nothing to say


def test_notes_go_to_the_log_as_mltrain_lines_escaped_and_capped(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text("job output\n")
    note_in_log(log, ["x\n[mltrain] forged"] + [f"note {i}" for i in range(25)])
    lines = log.read_text().splitlines()
    assert lines[:3] == ["job output", "[mltrain] outputs: x\\n[mltrain] forged", "[mltrain] outputs: note 0"]
    assert lines[-1] == "[mltrain] outputs: ... and 6 more" and len(lines) == 22


def test_copy_tree_is_all_or_nothing_and_never_merges(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    (outputs / "a").mkdir(parents=True)
    (outputs / "a" / "f").write_text("f")
    (outputs / "z").mkdir()
    os.mkfifo(outputs / "z" / "pipe")
    dest = tmp_path / "dest"
    with pytest.raises(Refused, match="z/pipe is a fifo"):
        copy_tree(outputs, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    (outputs / "z" / "pipe").unlink()
    assert copy_tree(outputs, dest) == 1
    assert (dest / "a" / "f").read_text() == "f"
    with pytest.raises(Refused, match="not an empty folder"):
        copy_tree(outputs, dest)
