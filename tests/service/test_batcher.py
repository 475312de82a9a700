"""The micro-batcher on its own: a malformed model output is a model error for its callers, never a crash."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dispatch.features import AGENT_FEATURES, CANDIDATE_FEATURES, Encoded
from service.batcher import MicroBatcher, ModelRunError

K = 4


def _encoded(agents: int) -> Encoded:
    return Encoded(
        np.zeros((agents, len(AGENT_FEATURES)), np.float32),
        np.zeros((agents, K, len(CANDIDATE_FEATURES)), np.float32),
        np.ones((agents, K), bool),
    )


def _good(batch: dict[str, np.ndarray]) -> np.ndarray:
    b, n, k = batch["cand_mask"].shape
    return np.zeros((b, n, k + 1))


@pytest.mark.parametrize("bad", [np.zeros((0, 3, K + 1)), np.zeros((3, K + 1))], ids=["no rows", "2-d"])
def test_malformed_output_is_a_model_error_on_both_paths(bad: np.ndarray) -> None:
    outputs = [bad]

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        return outputs.pop(0) if outputs else _good(batch)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(run, K, pool, inline_max_rows=8)
            batcher.start()
            with pytest.raises(ModelRunError, match="model output of shape"):
                batcher.run_now(_encoded(3))  # the direct path for a lone small snapshot
            assert batcher.run_now(_encoded(3)) is not None  # and it keeps working
            outputs.append(bad)
            first, second = batcher.submit(_encoded(3)), batcher.submit(_encoded(2))  # the queued path
            with pytest.raises(ModelRunError, match="model output of shape"):
                await first
            with pytest.raises(ModelRunError):
                await second  # the same batch
            third = await batcher.submit(_encoded(2))  # the batching task survived
            assert third.logits.shape == (2, K + 1) and third.batch_size == 1
            batcher.close()
            await batcher.wait_closed()

    asyncio.run(scenario())
