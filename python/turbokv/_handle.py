"""Lifetime of the objects that own one C handle (Model, KVCache, Session).

The rule, the same for a Model and its caches and for a KVCache and its sessions:

* ``close()`` frees the handle now, and refuses (:class:`~turbokv.InUseError`, naming
  them) while objects made from it are still open: a Model while a KVCache on it is
  open, a KVCache while a Session on it is open.  Nothing is freed then.
* Leaving a ``with`` block closes the object *and everything made from it* (a cache's
  sessions, a model's caches and their sessions), children first: the block is their
  lifetime.  Those objects then raise :class:`~turbokv.ClosedError` saying so.
* Every method of a closed object raises :class:`~turbokv.ClosedError`; no freed or NULL
  handle ever reaches the C library.
* ``__del__`` is only a safety net: it frees a handle nothing else uses (when the
  garbage collector finalizes a parent before its children, the parent's free waits
  for the last child).
"""
from __future__ import annotations

import weakref
from typing import Optional

from ._errors import ClosedError, InUseError


class Handle:
    """Base class: one C handle, the parent it was made from, its open children."""

    _kind = "object"  # what the messages call it
    _handle: Optional[int] = None
    _parent: Optional["Handle"] = None
    _n_open = 0  # open children
    _children: Optional["weakref.WeakSet[Handle]"] = None
    _closed_note = ""
    _free_pending = False

    def _free(self, handle: int) -> None:  # the C free function of the subclass
        raise NotImplementedError

    def _adopt(self, handle: int, parent: Optional["Handle"]) -> None:
        """Take ownership of a freshly created ``handle`` made from ``parent``."""
        self._handle = handle
        self._parent = parent
        if parent is not None:
            parent._n_open += 1
            if parent._children is None:
                parent._children = weakref.WeakSet()
            parent._children.add(self)

    @property
    def closed(self) -> bool:
        """True once the handle is freed or its free is pending (a with block ended while a
        child was being finalized)."""
        return self._handle is None or self._free_pending

    @property
    def handle(self) -> int:
        """The C handle; ClosedError when closed."""
        if self._handle is None or self._free_pending:
            raise ClosedError(f"{self._kind} is closed{self._closed_note}")
        return self._handle

    def _open_children(self) -> list["Handle"]:
        return [c for c in (self._children or ()) if c._handle is not None]

    def close(self) -> None:
        """Free the handle (idempotent).  Raises InUseError, freeing nothing, while
        objects made from this one are open (close them first)."""
        if self._handle is None or self._free_pending:
            return
        if self._n_open > 0:
            kids = self._open_children()
            names = ", ".join(repr(c) for c in kids[:3]) + (", ..." if len(kids) > 3 else "")
            kind = kids[0]._kind if kids else "object"
            raise InUseError(
                f"cannot close the {self._kind}: {self._n_open} open {kind}(s) still use it "
                f"({names}); close them first (leaving the {self._kind}'s with block closes "
                "them too)")
        self._release()

    def _release(self, note: str = "") -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        self._closed_note = note
        self._free(handle)
        parent = self._parent
        if parent is not None:
            parent._n_open -= 1
            if parent._free_pending and parent._n_open == 0:
                parent._release()

    def _close_tree(self, note: str = "") -> None:
        """Close every open object made from this one (recursively), then this one."""
        child_note = f": its {self._kind} was closed at the end of the {self._kind}'s with block"
        for child in self._open_children():
            child._close_tree(child_note)
        if self._n_open == 0:
            self._release(note)
        else:  # a child unreachable through the weak set (being finalized): free after it
            self._free_pending = True
            self._closed_note = note

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        """End of the with block: close this object and everything made from it."""
        self._close_tree()

    def __del__(self) -> None:
        try:
            if self._n_open > 0:
                self._free_pending = True  # freed when the last child is
            else:
                self._release()
        except Exception:  # interpreter shutdown: the bindings may be gone
            pass
