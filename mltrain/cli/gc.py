"""``mltrain gc``: free workspace space (old or failed runs, unreferenced blobs, unused environments)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from mltrain.cli.output import out
from mltrain.cli.runs import open_history
from mltrain.errors import ConfigError, UsageError
from mltrain.store.db import TERMINAL


def command(parsed: argparse.Namespace) -> int:
    """Delete what no kept run needs: runs asked for, unreferenced blobs and checkouts, unused environments."""
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.materialize import remove_tree

    if parsed.engine and parsed.envs is None:
        raise UsageError("gc: --engine says whose images --envs prunes; add --envs DAYS")
    engine = _gc_engine(parsed.engine) if parsed.envs is not None else None  # a bad --engine stops gc first
    workspace, store = open_history(parsed)
    with store:
        records = store.find()
        cutoff = time.time() - parsed.older_than * 86400 if parsed.older_than is not None else None
        doomed = [
            r for r in records
            if r.status in TERMINAL
            and ((cutoff is not None and r.created < cutoff) or (parsed.failed and r.status in ("Failed", "Canceled")))
        ]
        doomed_ids = {r.id for r in doomed}
        # Active runs keep their snapshot too, even one still being written (no snapshot_id yet:
        # its blobs are young, and blob gc spares anything newer than the grace period).
        keep = {r.snapshot_id for r in records if r.snapshot_id and r.id not in doomed_ids}
        if not parsed.dry_run and doomed:
            store.delete_runs(doomed_ids)
            for record in doomed:
                remove_tree(workspace.run_paths(record.id).dir)
    blobs = BlobStore(workspace.blobs)
    removed, freed = blobs.gc(keep, dry_run=parsed.dry_run, grace_seconds=parsed.grace)
    checkouts = 0
    if workspace.checkouts.is_dir():
        for folder in workspace.checkouts.iterdir():
            in_progress = folder.name.startswith(".tmp-")  # a checkout being built right now
            if folder.name not in keep and not in_progress and not parsed.dry_run:
                remove_tree(folder)
                checkouts += 1
    verb = "would free" if parsed.dry_run else "freed"
    out(f"{verb} {freed / 1e6:.1f} MB: {removed} blobs, {len(doomed)} runs, {checkouts} checkouts")
    if parsed.envs is not None:
        active = {r.env_fingerprint for r in records if r.env_fingerprint and r.status not in TERMINAL}
        _gc_environments(parsed, active, engine)
    return 0


def _gc_engine(url: str | None) -> Any:
    """The engine ``gc --envs`` prunes: the local one (which may be absent), or ``--engine URL``, which must
    answer before anything is deleted."""
    from mltrain.targets.docker.engine import connect
    from mltrain.targets.docker.util import EngineConfig

    try:
        engine = connect(EngineConfig(base_url=url))
    except ConfigError as exc:
        raise UsageError(f"gc --engine {url}: {str(exc).split(': ', 1)[-1]}") from None
    if url:
        engine.request("GET", "/_ping", versioned=False)  # unreachable: a one-line TargetError naming the URL
    return engine


def _gc_environments(parsed: argparse.Namespace, active: set[str], engine: Any) -> None:
    """``--envs DAYS``: venvs and mltrain-built images no run on this machine used for DAYS days."""
    from mltrain.environments.gc import prune

    pruned = prune(parsed.envs, active, engine=engine, engine_required=bool(parsed.engine), dry_run=parsed.dry_run)
    verb = "would remove" if parsed.dry_run else "removed"
    out(f"{verb} {len(pruned.venvs)} venvs ({pruned.freed / 1e6:.1f} MB) and {len(pruned.images)} images "
         f"not used for {parsed.envs:g} days"
         + ("" if pruned.images_checked else " (no Docker engine answered: images not checked)"))
    for name in [*pruned.venvs, *pruned.images]:
        out(f"  {name}")
    for note in pruned.notes:
        out(f"  {note}")
