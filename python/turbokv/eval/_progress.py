"""tqdm progress bars that can be switched off (library code never prints)."""
from __future__ import annotations

from typing import Any, Iterable, Optional

from tqdm.auto import tqdm


def bar(iterable: Optional[Iterable[Any]] = None, *, progress: bool, desc: str,
        total: Optional[int] = None, unit: str = "it") -> Any:
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not progress, leave=False,
                dynamic_ncols=True)
