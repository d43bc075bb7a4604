"""Bulk indexing's workers on a Ray cluster (`lookalike index --ray`): the same worker code as the local
process pool (`worker.py`), run by Ray actors, one per CPU the cluster offers, each loading its engines'
models once. The indexer stays the driver and its one writer: only it opens the store, so crash safety
and incrementality are as without Ray. An actor that dies (its node lost, its process killed) is started
again and its batch asked again: its result reaches the writer once.

Imported only with `--ray`: Ray is an optional dependency (`pip install 'lookalike[ray]'`).
"""

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor

import ray
from ray.util import ActorPool

from . import worker

log = logging.getLogger(__name__)
LOCAL = "local"  # a Ray instance of this machine's own, started for this run


@ray.remote(max_restarts=-1, max_task_retries=-1)
class Extractor:
    """One worker: the engines built once (as `worker.start` builds them in a local process)."""

    def __init__(self, engines: dict, max_pixels: int):
        worker.set_up(engines, max_pixels)

    def run(self, task: Callable, *args):
        return task(*args)


class RayWorkers(Executor):
    """A `concurrent.futures` executor's `map` and `shutdown`, over Ray actors."""

    def __init__(self, address: str, workers: int | None, engines: dict, max_pixels: int):
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=None if address == LOCAL else address, log_to_driver=False, include_dashboard=False)
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        log.info("indexing with %d Ray workers on %s", count, ray.get_runtime_context().gcs_address)
        self._actors = [Extractor.options(num_cpus=1).remote(engines, max_pixels) for _ in range(count)]
        self._pool = ActorPool(self._actors)

    def map(self, task: Callable, *arguments: Iterable) -> Iterator:
        """`task(*args)` for each tuple of `arguments`, by the actors, answered in order."""
        return self._pool.map(lambda actor, args: actor.run.remote(task, *args), list(zip(*arguments)))

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        if self._started and ray.is_initialized():
            ray.shutdown()
