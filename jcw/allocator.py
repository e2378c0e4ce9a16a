"""The C allocator's hold on freed memory: set once per process, before the first big tensor."""
from __future__ import annotations

import ctypes

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Stop glibc from handing freed activation buffers back to the OS after every batch.

    By default glibc returns large freed blocks (mmap'd above a threshold, or trimmed off the heap top) at once, so
    each layer of the next batch faults fresh zeroed pages back in: scoring one subnet took about 1.3 million minor
    page faults, and 30-50% of its CPU time was the kernel's. Serving every block up to 32 MiB (glibc's ceiling for
    this setting) from a heap that is never trimmed makes the pages stay. Call it once per process (the CLI and each
    scoring actor do); False where the C library is not glibc, and nothing changes there.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20)))
