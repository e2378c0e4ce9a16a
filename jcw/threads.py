"""Process-wide torch settings that a library call may change only for its own duration."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block at `threads` intra-op threads (None: leave as is) and restore the caller's count after, so
    timing or training at 1 thread does not leave a notebook or a test session at 1 thread."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

