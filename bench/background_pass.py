"""The background pass: how soon a 1,000-photo library answers phash and global searches, before
(one pass, every engine) and after (the fast engines first, the slow ones later), and what the
slow engines' passes cost.

The folder: 1,000 gallery JPEGs (4000x3000 or 3000x4000, q90): the 200 files of
bench/index_throughput.py (the test photos in 5 variants) hard-linked under 5 sub-folders, so every
file is decoded and extracted anew. The engines are the CLI's defaults (phash, color, local, global,
image_text, tags, text: local and text are the slow ones); LOOKALIKE_MODELS_DIR should hold the
exported models (else each run exports them, and that is timed).

Each case is the real CLI or service as a subprocess on a fresh data dir, timed wall-clock:
- before: the previous commit (`--before DIR`, a checkout of it: PYTHONPATH=DIR/src, the same
  interpreter) runs `lookalike index`, then `lookalike serve`; the library answers once a phash and
  a global search of one of the photos (POST /engines/<engine>/search, k=1) both return it.
- after, deferred: this commit's `lookalike index --defer`, then `lookalike serve`, answered the same
  way; then GET /jobs is polled until the backlog is empty: the background pass's drain.
- after, two passes: `indexer.run` in a subprocess of this commit, each pass's start and end recorded
  (`on_start`): the fast pass's images/s, each slow engine's pass.
- the API, with `--api-files N` (default 200) photos of the folder: POST /images to a running
  service, two clients at once, with defer_slow=false and then true (fresh data dirs): until every
  add is answered.
Memory: the peak of the summed resident memory of the process and its children (psutil, sampled every
0.2 s).

Run: LOOKALIKE_MODELS_DIR=/tmp/lk-models .venv/bin/python bench/background_pass.py --before /tmp/prev
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
import httpx2 as httpx
import psutil
from index_throughput import index_folder

COPIES = 5


class PeakMemory:
    """The largest summed RSS of a process and its children, sampled on a thread."""

    def __init__(self, process: subprocess.Popen):
        self.peak = 0
        self._process = psutil.Process(process.pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                tree = [self._process, *self._process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def environment(before: Path | None) -> dict:
    env = dict(os.environ)
    if before is not None:
        env["PYTHONPATH"] = str(before / "src")
    return env


def run(command: list[str], env: dict) -> tuple[float, float, str]:
    """Seconds, peak MiB, and the output of a command run to its end."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = PeakMemory(process)
    out, _ = process.communicate()
    seconds, peak = time.perf_counter() - started, memory.stop()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{out}")
    return seconds, peak, out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """`lookalike serve` on a data dir, until closed."""

    def __init__(self, data_dir: Path, env: dict):
        self.port = free_port()
        command = [sys.executable, "-m", "lookalike", "serve", "--data-dir", str(data_dir), "--port", str(self.port)]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.memory = PeakMemory(self.process)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=600, trust_env=False)

    def wait_until_up(self) -> None:
        while True:
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                if self.process.poll() is not None:
                    raise SystemExit("the service exited") from None
            time.sleep(0.05)

    def finds(self, engine: str, photo: bytes, image_id: int | None = None) -> bool:
        answer = self.client.post(f"/engines/{engine}/search", files={"image": ("q.jpg", photo)}, data={"k": "1"})
        hits = answer.json() if answer.status_code == 200 else []
        return bool(hits) and (image_id is None or hits[0]["image_id"] == image_id)

    def close(self) -> float:
        self.client.close()
        self.process.terminate()
        self.process.wait()
        return self.memory.stop()


def backlog(jobs: dict) -> int:
    return sum(job["backlog"] for job in jobs.values())


def index_then_answer(folder: Path, data_dir: Path, env: dict, query: bytes, defer: bool) -> dict:
    command = [sys.executable, "-m", "lookalike", "index", str(folder), "--data-dir", str(data_dir)]
    started = time.perf_counter()
    indexed, index_peak, out = run(command + (["--defer"] if defer else []), env)
    assert "failed 0" in " ".join(out.split()), out
    service = Service(data_dir, env)
    service.wait_until_up()
    assert service.finds("phash", query) and service.finds("global", query)
    answered = time.perf_counter() - started
    result = {"index_s": round(indexed, 1), "answers_s": round(answered, 1), "index_peak_mib": round(index_peak)}
    if defer:
        drained_from = time.perf_counter()
        rates = []
        while backlog(jobs := service.client.get("/jobs").json()):
            rates.append({name: job["per_second"] for name, job in jobs.items()})
            time.sleep(2)
        result["drain_s"] = round(time.perf_counter() - drained_from, 1)
        result["drain_rates"] = rates[-1] if rates else {}
        assert service.finds("local", query)
    result["service_peak_mib"] = round(service.close())
    return result


TWO_PASSES = """
import json, sys, time
from pathlib import Path
from lookalike import indexer
from lookalike.config import Settings
from lookalike.library import Library
stages = []
settings = Settings(data_dir=Path(sys.argv[2]))
with Library.from_settings(settings) as library:
    library.prepare()
    started = time.perf_counter()
    report = indexer.run(library, Path(sys.argv[1]), on_start=lambda stage, total: stages.append(
        [stage, total, time.perf_counter() - started]))
    stages.append(["end", 0, time.perf_counter() - started])
print(json.dumps({"stages": stages, "indexed": report.indexed, "failed": len(report.failed)}))
"""


def two_passes(folder: Path, data_dir: Path, env: dict) -> dict:
    seconds, peak, out = run([sys.executable, "-c", TWO_PASSES, str(folder), str(data_dir)], env)
    found = json.loads(out.strip().splitlines()[-1])
    stages = found["stages"]
    passes = {
        stage: {"images": total, "seconds": round(end - start, 1), "images_per_s": round(total / (end - start), 2)}
        for (stage, total, start), (_, _, end) in zip(stages, stages[1:])
    }
    return {"passes": passes, "total_s": round(seconds, 1), "peak_mib": round(peak)}


def api_adds(photos: list[bytes], data_dir: Path, env: dict, defer: bool) -> dict:
    service = Service(data_dir, env)
    service.wait_until_up()

    def add(item: tuple[int, bytes]) -> None:
        image_id, data = item
        answer = service.client.post(
            "/images", files={"image": ("p.jpg", data)}, data={"image_id": str(image_id), "defer_slow": str(defer)}
        )
        assert answer.status_code == 201, answer.text

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(add, enumerate(photos)))
    added = time.perf_counter() - started
    result = {"added_s": round(added, 1), "adds_per_s": round(len(photos) / added, 2)}
    if defer:
        while backlog(service.client.get("/jobs").json()):
            time.sleep(1)
        result["complete_s"] = round(time.perf_counter() - started, 1)
    result["service_peak_mib"] = round(service.close())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the previous commit")
    parser.add_argument("--api-files", type=int, default=200)
    args = parser.parse_args()
    source = index_folder(200)
    paths = sorted(source.glob("*.jpg"))
    query = paths[7].read_bytes()
    results = {"machine": common.machine()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "library")
        for copy in range(COPIES):
            Path(folder, str(copy)).mkdir(parents=True)
            for path in paths:
                os.link(path, folder / str(copy) / path.name)
        for path in paths:  # the page cache: this measures CPU, not the disk
            path.read_bytes()
        if args.before:
            results["before"] = index_then_answer(folder, Path(tmp, "before"), environment(args.before), query, False)
            print("before", results["before"], flush=True)
        env = environment(None)
        results["deferred"] = index_then_answer(folder, Path(tmp, "deferred"), env, query, True)
        print("deferred", results["deferred"], flush=True)
        results["two_passes"] = two_passes(folder, Path(tmp, "two"), env)
        print("two passes", results["two_passes"], flush=True)
        photos = [path.read_bytes() for path in paths[: args.api_files]]
        results["api_at_once"] = api_adds(photos, Path(tmp, "api-at-once"), env, False)
        print("api, at once", results["api_at_once"], flush=True)
        results["api_deferred"] = api_adds(photos, Path(tmp, "api-deferred"), env, True)
        print("api, deferred", results["api_deferred"], flush=True)
    print(f"saved {common.save_json('background_pass', results)}")


if __name__ == "__main__":
    main()
