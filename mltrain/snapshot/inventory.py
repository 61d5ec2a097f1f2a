"""The per-file bookkeeping of one snapshot, between the walk and the manifest.

Which digests the stat cache vouches for, which files must be read, which
contents the store lacks, and what to remember for next time.
"""

from __future__ import annotations

import os
from itertools import compress
from operator import not_
from typing import TYPE_CHECKING, Final, cast

from mltrain.errors import SnapshotError
from mltrain.snapshot.cache import (
    MAX_DELTA_ROWS,
    RACY_WINDOW_NS,
    Columns,
    Flags,
    PatchedDigests,
    StatCache,
    changed_rows,
)
from mltrain.snapshot.hashing import Claims, hash_files
from mltrain.snapshot.manifest import (
    ALGORITHM,
    LINK_MODE,
    Manifest,
    hash_bytes,
    row_json,
    splice_rows,
)
from mltrain.snapshot.walk import WalkResult

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mltrain.snapshot.blobstore import BlobStore, Edit

_NEVER = -1
"""An mtime no file has: the row never matches, so the file is hashed again."""
SPLICE_MAX: Final = 64
"""Up to this many changed entries, the new manifest's JSON is the remembered one with those rows rewritten."""


class Inventory:
    """The files of one snapshot and what to do with each: take the cached digest, hash, or store.

    Kept as parallel lists (one per field, in path order) so the common case,
    an unchanged tree, is a handful of whole-list comparisons.
    """

    def __init__(self, walked: WalkResult, root: str, store: BlobStore, *, dry_run: bool) -> None:
        """The files as the walk found them under ``root``: its columns are taken over, not copied."""
        self.root = root
        self.store = store
        self.dry_run = dry_run
        self.rels: list[str] = walked.rels
        self.stat_sizes: list[int] = walked.sizes
        self.mtimes: list[int] = walked.mtimes
        self.inodes: list[int] = walked.inodes
        self.modes: list[int] = walked.modes  # the walk gives the manifest's modes
        self.links: list[str | None] = walked.links()
        self.link_rows = sorted(walked.link_targets)
        self.sizes = list(self.stat_sizes)
        """Manifest sizes: a link's is its target's byte length; a file's what was read."""
        self.cache = StatCache("")
        self.digests: list[str | None] | PatchedDigests = []
        self.remembered: Flags = []
        self._unchanged = False
        self._same_paths = False
        self._touched: set[int] | None = None
        """Rows whose stat or mode differs from the cache's row at the same position; None if the paths differ."""
        self._hashed: list[int] = []
        """Rows read by :meth:`build`."""
        self.spliced_from: tuple[str, list[Edit]] | None = None
        """(remembered manifest, edits) when :meth:`build` made the manifest from that one's JSON: the store
        keeps it as those edits (``BlobStore.put_manifest``)."""
        self.warnings: list[str] = []
        """Files skipped or read while changing, as the run's snapshot warnings say."""

    def compare(self, cache: StatCache) -> None:
        """Take every digest the cache can vouch for; decide whether the tree is unchanged."""
        self.cache = cache
        old = cache.columns
        self._same_paths = old.same_paths(self.rels)
        found = [changed_rows(new, cached) for new, cached in (
            (self.stat_sizes, old.sizes), (self.mtimes, old.mtimes), (self.inodes, old.inodes),
            (self.modes, old.modes))] if self._same_paths else [None]
        if not any(found) and None not in found:
            # Every row as cached: the digests are taken as the cache holds them, not unpacked.
            self.digests = PatchedDigests(old.digest_view(), {})
            self.remembered = old.remembered.copy()  # a memcpy when packed
            self._touched = set()
        elif None not in found:  # the same paths: only the rows that differ are touched
            stat_changed: set[int] = set().union(*found[:3])
            self.digests, self.remembered = self._patched(stat_changed, set(found[3] or ()))
        else:
            self.digests, self.remembered = self._lookup()
        for index in self.link_rows:
            # A link's text is re-read every time (cheap); its inode may change while the text does not.
            data = os.fsencode(cast("str", self.links[index]))
            digest = hash_bytes(data)
            self.sizes[index] = len(data)
            if self.digests[index] != digest:
                j = cache.index.get(self.rels[index])
                self.remembered[index] = j is not None and bool(old.remembered[j]) and old.digest_view()[j] == digest
                self.digests[index] = digest
        self._unchanged = (
            cache.manifest_id is not None
            and cache.manifest_count == len(self.rels)
            and all(self.remembered)  # in C, also over the cache's packed bytes
            and self.store.has_manifest(cache.manifest_id)
        )

    def _patched(self, stat_changed: set[int], mode_changed: set[int]) -> tuple[PatchedDigests, Flags]:
        """The cache's digests and flags, the same paths in the same rows: a row whose stat changed is unknown,
        one whose stat or mode changed not remembered. The rest stay as the cache holds them (packed)."""
        old = self.cache.columns
        digests = PatchedDigests(old.digest_view(), dict.fromkeys(stat_changed))
        remembered = bytearray(old.remembered)
        self._touched = stat_changed | mode_changed
        for row in self._touched:
            remembered[row] = False
        return digests, remembered

    def _lookup(self) -> tuple[list[str | None], Flags]:
        """Cache hits file by file, by path (the paths changed)."""
        old = self.cache.columns
        index = self.cache.index
        digests: list[str | None] = []
        flags: list[bool] = []
        for i, rel in enumerate(self.rels):
            j = index.get(rel)
            if j is None:
                digests.append(None)
                flags.append(False)
            elif (old.sizes[j], old.mtimes[j], old.inodes[j]) == (self.stat_sizes[i], self.mtimes[i], self.inodes[i]):
                digests.append(old.digests[j])
                flags.append(bool(old.remembered[j]) and old.modes[j] == self.modes[i])
            else:
                digests.append(None)
                flags.append(False)
        return digests, flags

    def unchanged(self) -> bool:
        """The tree is exactly the remembered manifest, which is still complete in the store."""
        return self._unchanged

    def still_unchanged(self) -> bool:
        """:meth:`unchanged`, re-checked under the store lock (a gc may have run meanwhile)."""
        if self._unchanged and self.cache.manifest_id is not None:
            self._unchanged = self.store.has_manifest(self.cache.manifest_id)
        return self._unchanged

    def manifest_as_cached(self) -> Manifest:
        return self._manifest(self.cache.manifest_id)

    def build(self, workers: int | None = None) -> tuple[Manifest, int]:
        """Hash what is unknown, store what is missing; return the manifest and the new bytes.

        ``workers``: threads that read and store (None: sized to the machine and the work).
        """
        store, claims = self.store, Claims(self.store)
        remembered_complete = self.cache.manifest_id is not None and store.has_manifest(self.cache.manifest_id)
        rows: Iterable[int] = range(len(self.digests))
        if remembered_complete and self._touched is not None and 0 not in self.cache.columns.remembered:
            # Every other row is a remembered file of that complete manifest: nothing to do for it.
            rows = sorted(self._touched.union(self.link_rows))
        bytes_new = 0
        jobs: list[int] = []
        for index in rows:
            digest = self.digests[index]
            if digest is None:
                jobs.append(index)
                continue
            if remembered_complete and self.remembered[index]:
                continue
            link = self.links[index]
            if not claims.new(digest):
                continue
            if self.dry_run:
                bytes_new += self.sizes[index]
            elif link is not None:
                store.put_bytes(digest, os.fsencode(link))
                bytes_new += self.sizes[index]
            else:
                claims.release(digest)
                jobs.append(index)
        prefix = self.root + "/"
        work = [(self.rels[i], prefix + self.rels[i], self.stat_sizes[i]) for i in jobs]
        gone = []
        hashed_all = hash_files(work, store, claims, dry_run=self.dry_run, warnings=self.warnings,
                                 workers=workers)
        self._hashed = jobs
        for index, hashed in zip(jobs, hashed_all, strict=True):
            if hashed is None:
                gone.append(index)
                continue
            self.digests[index] = hashed.digest
            self.sizes[index] = hashed.size
            bytes_new += hashed.new_bytes
        if gone:
            self._drop(gone)
        canonical = self._spliced_canonical() if remembered_complete else None
        return self._manifest(canonical=canonical), bytes_new

    def _drop(self, rows: list[int]) -> None:
        """Forget files that vanished between the walk and their read (the manifest is of the tree as read)."""
        doomed = set(rows)
        keep = [i for i in range(len(self.rels)) if i not in doomed]
        for name in ("rels", "links", "stat_sizes", "mtimes", "inodes", "modes", "sizes", "digests", "remembered"):
            column = getattr(self, name)
            setattr(self, name, [column[i] for i in keep])
        self.link_rows = [i for i, link in enumerate(self.links) if link is not None]
        self._touched = None  # the paths differ from the cache's now: no row-by-row splice
        self._unchanged = False

    def _spliced_canonical(self) -> bytes | None:
        """The remembered manifest's JSON with only the changed entries rewritten, when that is exact.

        Exact when the paths are the same and every cached row is what the
        remembered manifest holds (``remembered``): an entry whose digest,
        mode and size match its cached row is then byte for byte the old one.
        A link whose text changed is rebuilt in full (the cache has no link texts).
        """
        old = self.cache.columns
        if self._touched is None or self.cache.manifest_id is None or 0 in old.remembered:
            return None
        # A row can differ from the remembered manifest only if its stat or mode did, or it is a link.
        n = len(self.rels)
        old_digests = old.digest_view()  # rows read one by one: left packed
        changed = {
            i for i in self._touched.union(self.link_rows)
            if self.digests[i] != old_digests[i] or self.modes[i] != old.modes[i] or self.sizes[i] != old.sizes[i]
        }
        if len(changed) > SPLICE_MAX or any(old.modes[i] == LINK_MODE for i in changed):
            return None
        rels, digests = self.rels, cast("list[str]", self.digests)
        edits = [
            (i, row_json(rels[i], old.modes[i], old.sizes[i], old_digests[i], None),
             row_json(rels[i], self.modes[i], self.sizes[i], digests[i], self.links[i]))
            for i in sorted(changed)
        ]
        try:
            canonical = self.store.manifest_bytes(self.cache.manifest_id)
        except SnapshotError:
            return None
        spliced = splice_rows(canonical, n, edits)
        if spliced is not None:
            self.spliced_from = (self.cache.manifest_id, edits)
        return spliced

    def save_cache(self, manifest: Manifest, walk_started_ns: int) -> None:
        """Remember this snapshot's digests and, unless a dry run, its manifest.

        A racy file (changed too recently to trust its mtime) keeps its row, with an
        mtime that never matches: it is hashed again next time, and the path lists
        stay equal so the next comparison is still position by position.
        """
        cutoff = walk_started_ns - RACY_WINDOW_NS
        stored = not self.dry_run
        touched = self._rows_unlike_cache()
        if touched is not None:
            # Only these rows can differ from the cache: fix up just them, and the cache writes just them.
            mtimes = list(self.mtimes)
            for i in touched:
                if mtimes[i] >= cutoff:
                    mtimes[i] = _NEVER
            digests = cast("list[str]", self.digests)  # every row was hashed or taken from the cache
            if stored:
                remembered = [True] * len(mtimes)
                for i in touched:
                    remembered[i] = self.sizes[i] == self.stat_sizes[i]
            else:
                remembered = list(map(bool, self.remembered))
        else:
            mtimes = [m if m < cutoff else _NEVER for m in self.mtimes]
            if not stored:
                remembered = list(map(bool, self.remembered))
            elif self.sizes == self.stat_sizes:
                remembered = [True] * len(mtimes)
            else:  # a file that grew while it was read: its row does not describe the manifest's entry
                remembered = list(map(int.__eq__, self.sizes, self.stat_sizes))
            digests = [d or "" for d in self.digests]
        new = Columns(self.rels, self.stat_sizes, mtimes, self.inodes, self.modes, digests, remembered)
        if stored:
            self.cache.save(new, manifest.id, manifest.count, touched=touched)
        else:
            self.cache.save(new, self.cache.manifest_id, self.cache.manifest_count, touched=touched)

    def _rows_unlike_cache(self) -> set[int] | None:
        """The rows this snapshot's cache columns can differ in from the loaded cache's; None if unknown.

        Known when the paths are the same: a row outside this set kept its stat and mode (so its mtime,
        already past the racy window when cached, and its cached digest), was not read again, is no link
        (whose text is read every time) and was already remembered. With few such rows, saving the cache
        touches only them instead of every row: the cost of one edit does not grow with the tree.
        """
        if self._touched is None or len(self._touched) > MAX_DELTA_ROWS:
            return None
        rows = self._touched.union(self.link_rows, self._hashed)
        old = self.cache.columns.remembered
        if not all(old):
            rows.update(compress(range(len(old)), map(not_, old)))
        return rows if len(rows) <= MAX_DELTA_ROWS else None

    def _manifest(self, manifest_id: str | None = None, canonical: bytes | None = None) -> Manifest:
        """The manifest over this inventory's columns (shared, not copied: the inventory is done with them)."""
        digests = cast("list[str]", self.digests)  # every digest is known by now
        return Manifest.of_columns(ALGORITHM, self.rels, self.modes, self.sizes, digests, self.links,
                                   manifest_id=manifest_id, canonical=canonical)
