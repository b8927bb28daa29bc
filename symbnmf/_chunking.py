"""How many networks one compiled call vmaps (private; shared by ``symbnmf simulate`` and the
training experiments, issue 14).

Every call vmaps :data:`VMAP_WIDTH` networks per device, fewer only when there are fewer networks
or the memory budget cannot hold that many; a narrower width is rounded to one of
:data:`CHUNK_BUCKETS`, so that any number of networks compiles at most a few programs (the
padding networks of the last call are computed and dropped).
"""

from __future__ import annotations

#: Networks per compiled call, per device.
VMAP_WIDTH = 8

#: Narrower calls are rounded to one of these.
CHUNK_BUCKETS: tuple[int, ...] = (1, 2, 3, 4, 6, 8)


def bucket_up(n: int) -> int:
    """Smallest bucket >= n (n at least 1, at most :data:`VMAP_WIDTH`)."""
    return min(b for b in CHUNK_BUCKETS if b >= min(max(1, n), VMAP_WIDTH))


def bucket_down(n: int) -> int:
    """Largest bucket <= n (at least 1)."""
    return max(b for b in CHUNK_BUCKETS if b <= max(1, n))


__all__ = ["CHUNK_BUCKETS", "VMAP_WIDTH", "bucket_down", "bucket_up"]
