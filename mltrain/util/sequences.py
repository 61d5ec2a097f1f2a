"""A read-only sequence of strings made by index: the indexing rules written once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload


class IndexedStrings(Sequence[str]):
    """Subclasses give ``__len__`` and ``_item(i)`` for ``0 <= i < len``; negative indices and slices come from here
    (a slice is a list: these sequences are long and lazy, a slice of one is what a caller wants to hold)."""

    __slots__ = ()

    def _item(self, index: int) -> str:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        n = len(self)
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(n))]
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        return self._item(index)
