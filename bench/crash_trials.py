"""Crash consistency: SIGKILL `lookalike index DIR` and `lookalike serve` mid-write, then reopen and check.

Each trial starts from an empty data directory, engines phash and color, checkpoints every 0.5 s (so
kills land in index saves and journal trims too, and a reopen may replay the journal); every other
index trial checkpoints every 60 s instead, so that no index is saved before the kill (a reopen rebuilds).

- index: `lookalike index --workers 2` of 700 JPEG tiles, killed a random time (seeded) after its first
  committed batch, up to as long as a clean run takes from there to its exit. Acknowledged: the records
  another process read from the store just before the kill. Then `Library` opens the data directory
  (timed) and the checks run; `lookalike index` runs again and must end with every file stored.
- service: `lookalike serve`, a client thread posting adds (POST /images) back to back, the server killed
  a random time (up to 2 s) after the first 201. Acknowledged: the adds answered 201. Then the service
  restarts (timed until /health answers; /stats checked), is killed again, and `Library` opens (timed).

The checks: every acknowledged record is there with its name and a feature in every engine (else it
is *lost*); no record lacks an engine's feature, no feature its record (else *half-written*); each
index holds as many images as the store holds features, and a phash search by each stored feature
finds its image at distance 0 (else an index/store *disagreement*).

Run: .venv/bin/python bench/crash_trials.py [--trials 100] [--kinds index service] [--seed N]
"""

import argparse
import contextlib
import itertools
import json
import logging.handlers
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import common
import httpx2
import numpy as np
import psutil

from lookalike.engines import create_engine
from lookalike.library import Library
from lookalike.store import FeatureStore, ImageRecord

ENGINES = ["phash", "color"]
GALLERY_FILES = 700  # the indexer commits every 256 files: a run of 700 commits three batches
CHECKPOINT_SECONDS = 0.5
BURST_SECONDS = 2.0  # the service is killed at most this long after its first 201
POLL_SECONDS = 0.02
TIMEOUT = 60.0
RECOVERY_WORDS = {"rebuilt": "rebuilt", "journal": "catching up"}  # as the index manager logs them
FINDINGS = ("lost", "half_written", "disagreements", "failures")


@dataclass
class Findings:
    """What the checks found wrong, one description per problem."""

    lost: list[str] = field(default_factory=list)
    half_written: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)  # between an index and the store
    failures: list[str] = field(default_factory=list)  # anything else: an error response, a failed rerun

    def extend(self, other: "Findings") -> None:
        for name in FINDINGS:
            getattr(self, name).extend(getattr(other, name))

    def all(self) -> list[str]:
        return [problem for name in FINDINGS for problem in getattr(self, name)]


@dataclass
class Trial:
    kind: str
    mid_run: bool = False  # the killed process was still at work, not already finished
    acknowledged: dict[int, ImageRecord] = field(default_factory=dict)
    features_at_kill: int = 0  # of the engine whose pass was watched, where one was
    findings: Findings = field(default_factory=Findings)
    reopen_s: float | None = None  # opening `Library` after the kill
    recovery: set[str] = field(default_factory=set)  # how its indexes came back then: "rebuilt", "journal"
    healthy_s: float | None = None  # the restarted service, from its start until /health answers


def make_gallery(folder: Path, photos: dict, files: int = GALLERY_FILES, seed: int = 3) -> Path:
    """`files` 400x300 JPEG tiles cut from the photos at random offsets; another seed, other tiles."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = [photo.resize((800, 600)) for photo in photos.values()]  # so that a tile is a plain crop
    for number in range(files):
        left, top = int(rng.integers(0, 267)), int(rng.integers(0, 201))
        tile = sources[number % len(sources)].crop((left, top, left + 400, top + 300))
        (folder / f"tile{number:04d}.jpg").write_bytes(common.jpeg(tile))
    return folder.resolve()  # the indexer stores resolved paths


def lookalike_env(data_dir: Path, checkpoint_seconds: float, **settings: str) -> dict:
    settings |= {"LOOKALIKE_DATA_DIR": str(data_dir), "LOOKALIKE_ENGINES": json.dumps(ENGINES)}
    return {**os.environ, "LOOKALIKE_CHECKPOINT_SECONDS": str(checkpoint_seconds), **settings}


def start_lookalike(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    # Output goes to a file: a pipe nobody reads would stall the server once its request log fills it.
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        return subprocess.Popen([sys.executable, "-m", "lookalike", *args], env=env, stdout=output, stderr=output)


def start_index(data_dir: Path, folder: Path, checkpoint_seconds: float) -> subprocess.Popen:
    env = lookalike_env(data_dir, checkpoint_seconds)
    return start_lookalike(["index", str(folder), "--workers", "2"], env, data_dir.parent / "index.log")


def kill(process: subprocess.Popen) -> list[str]:
    """SIGKILL `process`, then its children (the indexer's workers: they hold nothing of the data dir and
    would exit by themselves within a second or two, which tests/test_cli.py checks); returns a problem
    if the process had failed by itself."""
    # Only while it is unreaped (even if exited): a reaped process's pid may be another's by now.
    children = psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
    process.send_signal(signal.SIGKILL)
    exit_status = process.wait()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):  # psutil checks that the pid is still this child's
            child.kill()
    psutil.wait_procs(children, timeout=10)
    return [] if exit_status in (0, -signal.SIGKILL) else [f"{process.args[3]} exited with {exit_status}"]


def start_service(data_dir: Path, checkpoint_seconds: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = lookalike_env(data_dir, checkpoint_seconds, LOOKALIKE_PORT=str(port))
    return start_lookalike(["serve"], env, data_dir.parent / "service.log"), f"http://127.0.0.1:{port}"


def wait_healthy(process: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx2.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx2.TransportError:
            time.sleep(POLL_SECONDS)
    raise RuntimeError(f"the service did not answer /health (exit status {process.poll()})")


class StoreWatcher:
    """Reads the records a writer in another process has committed; LMDB lets readers in beside it.
    Close it before this process opens the data directory itself: LMDB allows one open per process."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / "store"
        self._store: FeatureStore | None = None

    def records(self) -> dict[int, ImageRecord]:
        return {record.image_id: record for record in self._store.records()} if self._opened() else {}

    def features(self, engine: str) -> int:
        return self._store.count(engine) if self._opened() else 0

    def _opened(self) -> bool:
        if self._store is None and (self.path / "data.mdb").exists():
            self._store = FeatureStore(self.path, {name: create_engine(name).spec for name in ENGINES})
        return self._store is not None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def wait_for_commits(process: subprocess.Popen, watcher: StoreWatcher, commits: int, engine: str | None) -> None:
    """Until `commits` commits of records (or of `engine`'s features, written in a later pass) are seen."""
    progress = watcher.records if engine is None else lambda: watcher.features(engine)
    seen, seen_commits = progress(), 0
    deadline = time.monotonic() + TIMEOUT
    while seen_commits < commits and process.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {commits} commits within {TIMEOUT} s")
        time.sleep(POLL_SECONDS)
        now = progress()
        seen_commits, seen = seen_commits + (now != seen), now


def kill_at(
    process: subprocess.Popen, watcher: StoreWatcher, commits: int, delay: float, trial: Trial, engine=None
) -> None:
    """Kill the process `delay` s after its `commits`th commit (of `engine`'s features, if named),
    noting what was committed just before."""
    wait_for_commits(process, watcher, commits, engine)
    time.sleep(delay)
    trial.acknowledged = watcher.records()
    trial.features_at_kill = watcher.features(engine) if engine else 0
    trial.mid_run = process.poll() is None
    trial.findings.failures += kill(process)


def check_library(library: Library, acknowledged: dict[int, ImageRecord], complete: bool = False) -> Findings:
    """The checks; a slow engine's feature that the backlog owes counts as there, unless `complete`."""
    found = Findings()
    store = library.store
    owed = {} if complete else store.pending_of(list(acknowledged))
    for image_id, expected in acknowledged.items():
        record = store.record(image_id)
        missing = [
            engine
            for engine in library.engines
            if store.feature(engine, image_id) is None and engine not in owed.get(image_id, ())
        ]
        if record is None or record.file_name != expected.file_name or missing:
            found.lost.append(f"{image_id}: {expected.file_name!r} is now {record}, missing features {missing}")
    record_ids = {record.image_id for record in store.records()}
    engine_stats = library.stats()["engines"]
    for engine in library.engines:
        feature_ids = set(store.feature_ids(engine).tolist())
        owed_ids = set() if complete else {pending.image_id for pending in store.pending({engine})}
        # A record without its feature (and not owed it), a feature without its record, or an owed one with it.
        unpaired = sorted((record_ids ^ (feature_ids | owed_ids)) | (feature_ids & owed_ids))
        found.half_written += [f"{i}: a record or a {engine} feature without the other" for i in unpaired]
        if engine_stats[engine]["indexed"] != store.count(engine):
            found.disagreements.append(f"{engine}: index {engine_stats[engine]}, store {store.count(engine)}")
    for image_id, feature in zip(*store.read_features("phash")):
        if int(image_id) not in {hit.image_id for hit in library.indexes["phash"].search([feature], None, 0)}:
            found.disagreements.append(f"{image_id}: a phash search by its stored feature misses it")
    return found


def reopen_and_check(data_dir: Path, trial: Trial) -> None:
    """Open `Library` (timed), noting from the index manager's log how it brought the indexes back:
    rebuilt from the store, or caught up from the journal (neither: loaded as saved); then check."""
    manager_log, caught = logging.getLogger("lookalike.indexes.manager"), logging.handlers.BufferingHandler(1000)
    manager_log.addHandler(caught)
    manager_log.setLevel(logging.INFO)  # catching up is logged at INFO
    try:
        started = time.perf_counter()
        library = Library(data_dir, ENGINES)
        trial.reopen_s = time.perf_counter() - started
    finally:
        manager_log.removeHandler(caught)
    messages = " ".join(record.getMessage() for record in caught.buffer)
    trial.recovery = {way for way, words in RECOVERY_WORDS.items() if words in messages}
    with library:
        trial.findings.extend(check_library(library, trial.acknowledged))


def files_not_held(library: Library, folder: Path) -> list[str]:
    held = {(record.file_name, record.size, record.mtime_ns) for record in library.store.records()}
    on_disk = [(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(folder.rglob("*.jpg"))]
    return [f"{file[0]}: not held as it is on disk" for file in on_disk if file not in held]


def check_service(url: str, acknowledged: dict[int, ImageRecord]) -> Findings:
    found = Findings()
    stats = httpx2.get(f"{url}/stats", timeout=30).json()
    if stats["images"] < len(acknowledged):
        found.lost.append(f"/stats counts {stats['images']} images, {len(acknowledged)} were acknowledged")
    for engine, counts in stats["engines"].items():
        if counts["features"] != counts["indexed"]:
            found.disagreements.append(f"{engine}: /stats says {counts}")
    return found


def index_trial(
    data_dir: Path, folder: Path, commits: int, delay: float, checkpoint_seconds=CHECKPOINT_SECONDS, engine=None
):
    """Kill `lookalike index` `delay` s after its `commits`th commit (of `engine`'s features, if named:
    a slow engine's pass), reopen and check; rerun it and check that nothing is owed any more."""
    trial = Trial("index")
    watcher = StoreWatcher(data_dir)
    indexer = start_index(data_dir, folder, checkpoint_seconds)
    try:
        kill_at(indexer, watcher, commits, delay, trial, engine)
    finally:
        watcher.close()
        if indexer.returncode is None:  # kill_at failed before its kill
            kill(indexer)
    reopen_and_check(data_dir, trial)

    if start_index(data_dir, folder, 60.0).wait() != 0:
        trial.findings.failures.append(f"the rerun of index failed: {(data_dir.parent / 'index.log').read_text()}")
        return trial
    with Library(data_dir, ENGINES) as library:
        trial.findings.failures += files_not_held(library, folder)
        everything = {record.image_id: record for record in library.store.records()}
        trial.findings.extend(check_library(library, everything, complete=True))
    return trial


class Burst(threading.Thread):
    """Posts adds back to back until the server stops answering; keeps those answered 201."""

    def __init__(self, url: str, images: list[bytes]):
        super().__init__(daemon=True)
        self.url, self.images = url, images
        self.acknowledged: dict[int, ImageRecord] = {}
        self.failures: list[str] = []
        self.first_added = threading.Event()

    def run(self) -> None:
        with httpx2.Client(base_url=self.url, timeout=30) as client:
            for image_id in itertools.count():
                name = f"burst/{image_id:06d}.jpg"
                image = {"image": ("upload.jpg", self.images[image_id % len(self.images)], "image/jpeg")}
                try:
                    response = client.post("/images", files=image, data={"image_id": image_id, "file_name": name})
                except httpx2.TransportError:  # the server is gone
                    return
                if response.status_code == 201:
                    self.acknowledged[image_id] = ImageRecord(image_id, name)
                    self.first_added.set()
                else:
                    self.failures.append(f"add {image_id}: {response.status_code} {response.text[:200]}")


def service_trial(data_dir: Path, images: list[bytes], delay: float, checkpoint_seconds=CHECKPOINT_SECONDS) -> Trial:
    """Kill the service `delay` s into a burst of adds; restart it and check, kill it, reopen and check."""
    trial = Trial("service")
    server, url = start_service(data_dir, checkpoint_seconds)
    burst = Burst(url, images)
    try:
        wait_healthy(server, url)
        burst.start()
        if not burst.first_added.wait(TIMEOUT):
            raise TimeoutError(f"no add answered 201 within {TIMEOUT} s: {burst.failures}")
        time.sleep(delay)
        trial.mid_run = server.poll() is None and burst.is_alive()
    finally:
        trial.findings.failures += kill(server)
    burst.join(TIMEOUT)
    trial.acknowledged = dict(burst.acknowledged)
    trial.findings.failures += burst.failures

    # No checkpoint while restarted: it must leave the data directory as the kill did, for `Library` next.
    started = time.perf_counter()
    restarted, url = start_service(data_dir, 3600.0)
    try:
        wait_healthy(restarted, url)
        trial.healthy_s = time.perf_counter() - started
        trial.findings.extend(check_service(url, trial.acknowledged))
    finally:
        trial.findings.failures += kill(restarted)
    reopen_and_check(data_dir, trial)
    return trial


HEADERS = (
    "kind|trials|killed mid-run|acknowledged (median per trial)|lost|half-written|index/store disagreements|other "
    "failures|reopens that rebuilt / replayed the journal|Library reopen p50 / max, ms|service healthy p50 / max, s"
).split("|")


def clean_run_window(folder: Path, data_dir: Path) -> float:
    """How long a clean `lookalike index` runs from its first commit to its exit: the window to kill in."""
    watcher = StoreWatcher(data_dir)
    indexer = start_index(data_dir, folder, CHECKPOINT_SECONDS)
    wait_for_commits(indexer, watcher, 1)
    first_commit = time.perf_counter()
    watcher.close()
    if indexer.wait() != 0:
        raise RuntimeError(f"a clean run of index failed: {(data_dir.parent / 'index.log').read_text()[-2000:]}")
    return time.perf_counter() - first_commit


def summary_row(kind: str, trials: list[Trial]) -> list:
    def spread(values: list[float], unit: float, fmt: str) -> str:
        return f"{common.median(values) * unit:{fmt}} / {max(values) * unit:{fmt}}" if values else "-"

    acknowledged = [len(t.acknowledged) for t in trials]
    found = [sum(len(getattr(t.findings, name)) for t in trials) for name in FINDINGS]
    recovered = f"{sum('rebuilt' in t.recovery for t in trials)} / {sum('journal' in t.recovery for t in trials)}"
    reopen = spread([t.reopen_s for t in trials if t.reopen_s is not None], 1000, ".0f")
    healthy = spread([t.healthy_s for t in trials if t.healthy_s is not None], 1, ".2f")
    ack = f"{sum(acknowledged)} ({common.median(acknowledged):.0f})"
    return [kind, len(trials), sum(t.mid_run for t in trials), ack, *found, recovered, reopen, healthy]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="trials of each kind")
    parser.add_argument("--kinds", nargs="+", choices=["index", "service"], default=["index", "service"])
    parser.add_argument("--seed", type=int, default=common.SEED)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results: dict[str, list[Trial]] = {kind: [] for kind in args.kinds}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crash-trials-") as tmp:
        folder = make_gallery(Path(tmp, "gallery"), common.test_photos())
        images = [path.read_bytes() for path in sorted(folder.iterdir())]
        window = clean_run_window(folder, Path(tmp, "clean", "data"))
        # Kinds alternate, so that a change in the machine's load falls on both alike.
        for number, kind in itertools.product(range(args.trials), args.kinds):
            data_dir = Path(tmp, f"{kind}-{number}", "data")
            try:
                if kind == "index":
                    checkpoint_seconds = CHECKPOINT_SECONDS if number % 2 else 60.0
                    trial = index_trial(data_dir, folder, 1, rng.uniform(0, window), checkpoint_seconds)
                else:
                    trial = service_trial(data_dir, images, rng.uniform(0, BURST_SECONDS))
            except Exception as exc:  # one broken trial is a finding, not the end of the run
                trial = Trial(kind, findings=Findings(failures=[f"{type(exc).__name__}: {exc}"]))
            results[kind].append(trial)
            print(f"{kind} {number}: acknowledged {len(trial.acknowledged)}, {trial.findings.all()}", file=sys.stderr)
            shutil.rmtree(data_dir.parent, ignore_errors=True)

    seconds = time.perf_counter() - started
    print(f"## Crash trials: SIGKILL mid-write, reopen ({args.trials} per kind, seed {args.seed}, {seconds:.0f} s)\n")
    rows = [summary_row(kind, trials) for kind, trials in results.items()]
    print(common.table(HEADERS, rows))
    print(f"\nIndex kill window: up to {window:.2f} s after the first commit (a clean run's first commit to exit).")
    print(f"\n{common.machine_markdown()}")
    problems = {kind: [trial.findings.all() for trial in trials] for kind, trials in results.items()}
    summary = {"rows": [dict(zip(HEADERS, row)) for row in rows], "problems": problems, "kill_window_s": window}
    common.save_json("crash_trials", {"trials": args.trials, "seed": args.seed} | summary)


if __name__ == "__main__":
    main()
