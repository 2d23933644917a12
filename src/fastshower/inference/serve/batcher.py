"""Dynamic batching: concurrent requests share one model call (up to ``max_batch`` showers,
after at most ``max_delay_ms``); each request keeps its own noise seed, so its showers do not
depend on what it was batched with."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fastshower.simhits import Primaries

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One request's decoded inputs (as model inputs and as primaries) and the future its
    response waits on."""

    inputs: dict[str, np.ndarray]
    seed: int
    primaries: Primaries
    future: asyncio.Future = field(default=None)
    batch_showers: int = 0  # showers in the model call that served it


class Batcher:
    """Collects jobs from concurrent requests into batches of up to max_batch showers."""

    def __init__(self, run: Callable[[list[Job]], list[dict[str, np.ndarray]]], max_batch: int,
                 max_delay_ms: float):
        """``run``: one model call for a list of jobs, a result per job (in a worker thread)."""
        self.run, self.max_batch, self.max_delay_s = run, max_batch, max_delay_ms / 1e3
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.batches = 0

    async def submit(self, job: Job) -> dict[str, np.ndarray]:
        job.future = asyncio.get_running_loop().create_future()
        await self.queue.put(job)
        return await job.future

    async def loop(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].inputs["energy"])
            deadline = asyncio.get_running_loop().time() + self.max_delay_s
            while size < self.max_batch:
                try:
                    timeout = max(deadline - asyncio.get_running_loop().time(), 0)
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                jobs.append(job)
                size += len(job.inputs["energy"])
            try:
                results = await asyncio.to_thread(self.run, jobs)
                self.batches += 1
                for job, result in zip(jobs, results, strict=True):
                    job.batch_showers = size
                    job.future.set_result(result)
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error
                log.exception("inference failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
