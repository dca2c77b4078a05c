"""Progress bars on stderr; the only tqdm import. Quiet unless asked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm


@contextlib.contextmanager
def progress_bar(enabled: bool, desc: str, total: int | None = None) -> Iterator[tqdm | None]:
    """Yield a tqdm bar counting model queries, or None when disabled."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm  # 25 ms to import: only when a bar is shown

    bar = tqdm(total=total, desc=desc, unit="q", unit_scale=True, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
