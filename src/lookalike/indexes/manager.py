"""Every engine's index, kept equal to the store it is derived from.

On open each index is loaded and caught up from its engine's journal, or rebuilt from the store when
its file is missing, unreadable, of another store, ahead of it, or older than the journal reaches.
Checkpoints save the indexes that changed and trim the journal they cover. Training builds the new
index beside the live one from a snapshot of the store while searches and writes go on, then replays
what changed meanwhile and swaps it in. The index kinds themselves know nothing of the store's journal.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from ..store import FeatureStore
from . import index_kind
from .base import Index, IndexSetup, Marker, Training

log = logging.getLogger(__name__)


class IndexManager(Mapping[str, Index]):
    def __init__(self, store: FeatureStore, setups: dict[str, IndexSetup], write_lock: threading.Lock):
        """`write_lock` is the library's: held across a store commit and the index updates that follow
        it, so that an index always equals the committed store when the lock is free."""
        self.store = store
        self.setups = setups
        self.write_lock = write_lock
        self._saved_seq: dict[str, int] = {}
        # Journal entries an index being rebuilt will replay: checkpoints must not trim them.
        self._held_from: dict[str, int] = {}
        self._indexes: dict[str, Index] = {name: self._open(name) for name in setups}

    def __getitem__(self, name: str) -> Index:
        return self._indexes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._indexes)

    def __len__(self) -> int:
        return len(self._indexes)

    def stats(self, name: str) -> dict:
        return {"features": self.store.count(name)} | self._indexes[name].stats()

    # -- training --------------------------------------------------------------------------------

    def train(self, name: str, training: Training) -> Index:
        """Train `name`'s index now, beside the live one, and save it."""
        started = time.perf_counter()
        setup = self.setups[name]
        trained = self._rebuild_beside(name, lambda: index_kind(setup.spec, setup.backend).train(setup, training))
        self.checkpoint()
        log.info("%s: trained its index (%s) in %.1f s", name, trained.stats(), time.perf_counter() - started)
        return trained

    def due_for_training(self) -> list[str]:
        """Engines whose index has outgrown its form (a flat point index past its limit, say)."""
        return [name for name, index in self._indexes.items() if index.needs_training()]

    def _rebuild_beside(self, name: str, build: Callable[[], Index]) -> Index:
        with self.write_lock:
            seq = self._held_from[name] = self.store.journal_seq(name)
        try:
            rebuilt = build()
            with self.write_lock:
                self._replay(name, rebuilt, self.store.journal_since(name, seq))
                self._indexes[name] = rebuilt
                self._saved_seq.pop(name, None)
        finally:
            self._held_from.pop(name, None)
        return rebuilt

    # -- persistence -----------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Save every index that changed since it was saved, then trim the journal it covers."""
        for name in self._indexes:
            with self.write_lock:
                seq = self.store.journal_seq(name)
                if seq == self._saved_seq.get(name):
                    continue
                self._indexes[name].save(Marker(self.store.uuid, seq))
            self._saved_seq[name] = seq
            self.store.trim_journal(name, min(seq, self._held_from.get(name, seq)))

    def _open(self, name: str) -> Index:
        setup = self.setups[name]
        kind = index_kind(setup.spec, setup.backend)
        loaded = kind.load(setup)
        if loaded is not None:
            index, marker = loaded
            touched = self.store.journal_since(name, marker.seq) if marker.store_uuid == self.store.uuid else None
            if touched is not None:
                if not touched:
                    self._saved_seq[name] = marker.seq
                else:
                    log.info("%s index: catching up %d changed images from the journal", name, len(touched))
                    self._replay(name, index, touched)
                return index
        started = time.perf_counter()
        index = kind.build(setup)
        if index.ntotal:
            log.warning(
                "%s index: missing or out of step with the store; rebuilt %d features in %.1f s",
                name,
                index.ntotal,
                time.perf_counter() - started,
            )
        return index

    def _replay(self, name: str, index: Index, touched: set[int] | None) -> None:
        """Bring `index` up to the store for the images the journal says were touched."""
        if touched is None:  # cannot happen while _held_from holds the journal back
            raise RuntimeError(f"{name}: the journal no longer covers the changes to replay")
        index.remove(touched)
        index.add(*self.store.read_features(name, sorted(touched)))
