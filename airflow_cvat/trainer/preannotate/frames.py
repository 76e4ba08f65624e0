"""Frames from CVAT to the model: decoded, downloaded ahead, batched by size.

Downloads overlap inference (a small thread pool, a bounded window ahead), and a batch holds
frames of one size only, because the model takes one ``[b, h, w, 3]`` tensor.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np


def decode_frame(data: bytes) -> np.ndarray:
    """Frame bytes (JPEG, PNG, ...) as uint8 RGB [h, w, 3]."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def prefetch(
    fetch: Callable[[int], np.ndarray], frames: Sequence[int], pool: ThreadPoolExecutor, window: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Frames in order, downloaded ``window`` ahead: downloads overlap inference, memory stays bounded."""
    pending: deque[tuple[int, Future]] = deque()
    queue = iter(frames)
    for frame in queue:
        pending.append((frame, pool.submit(fetch, frame)))
        if len(pending) >= window:
            break
    while pending:
        frame, future = pending.popleft()
        nxt = next(queue, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(fetch, nxt)))
        yield frame, future.result()


def batches_by_size(
    items: Iterable[tuple[int, np.ndarray]], batch_size: int
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Consecutive frames of one size, at most ``batch_size``: the model takes one [b,h,w,3] tensor."""
    batch: list[tuple[int, np.ndarray]] = []
    for item in items:
        if batch and (len(batch) >= batch_size or batch[0][1].shape != item[1].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch
