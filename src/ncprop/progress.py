"""The one progress helper of the package: a tqdm bar on a terminal, silent otherwise.

Library code never prints; long loops wrap their iterable with :func:`progress`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def _enabled(stream=None) -> bool:
    if os.environ.get("NCPROP_PROGRESS", "").lower() in {"0", "false", "off"}:
        return False
    if os.environ.get("NCPROP_PROGRESS", "").lower() in {"1", "true", "on"}:
        return True
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    """Iterate ``iterable``, drawing a progress bar on stderr when it is a terminal."""
    if not _enabled():
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
