"""The routing encoder under concurrency, with the real MiniLM model: concurrent asks share
model calls and each gets its own vectors back; a full queue refuses at once (RouterBusy)
instead of letting requests wait without bound."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from coe.errors import RouterBusy
from coe.routing.encoders import EncoderCache

QUERIES = [f"question number {i} about {topic}" for i, topic in enumerate(["maths", "law"] * 12)]


async def test_concurrent_asks_share_model_calls_and_get_their_own_vectors(
    encoders: EncoderCache,
) -> None:
    enc = EncoderCache(max_queue=1000)
    enc._shared.models = encoders._shared.models  # the loaded model, not a second copy
    alone = enc.encode_sync(QUERIES)
    got = await asyncio.gather(*(enc.encode([q]) for q in QUERIES))
    for i, vec in enumerate(got):
        assert vec.shape == (1, alone.shape[1])
        assert np.allclose(vec[0], alone[i], atol=1e-5), QUERIES[i]
    assert enc.calls <= 3, f"{enc.calls} model calls for {len(QUERIES)} concurrent asks"


async def test_a_full_queue_refuses_at_once_and_the_queued_asks_finish(
    encoders: EncoderCache,
) -> None:
    enc = EncoderCache(max_queue=4)
    enc._shared.models = encoders._shared.models
    busy = threading.Event()
    release = threading.Event()

    def hold() -> None:  # the encoder thread busy on someone else's call
        busy.set()
        release.wait(30)

    held = enc._thread().submit(hold)
    assert await asyncio.to_thread(busy.wait, 10)
    first = asyncio.create_task(enc.encode(["a", "b"]))  # taken, waits for the thread
    await asyncio.sleep(0.05)
    second = asyncio.create_task(enc.encode(["c", "d"]))  # queued behind it
    await asyncio.sleep(0.05)
    with pytest.raises(RouterBusy, match="2 texts queued"):
        await enc.encode(["e", "f", "g"])
    release.set()
    held.result(timeout=10)
    a, b = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert a.shape[0] == 2 and b.shape[0] == 2
    assert (await enc.encode(["e"])).shape[0] == 1  # drained: taken again


async def test_one_large_ask_alone_is_always_taken(encoders: EncoderCache) -> None:
    enc = EncoderCache(max_queue=2)
    enc._shared.models = encoders._shared.models
    assert (await enc.encode(QUERIES[:10])).shape[0] == 10  # a batch unit bigger than the cap
