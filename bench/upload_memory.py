"""Peak memory of the service while several huge-but-allowed images are uploaded at once.

A 14000x14000 PNG (or JPEG; a few MB, 196 M pixels, under the default 200 M pixel limit) is posted N times
concurrently to `POST /images` of a freshly started `lookalike serve`; the server's RSS is sampled every
10 ms. Give `--src DIR` (repeatable) to run the same load against other checkouts' `src/` in the same
session, e.g. the previous commit's, for a ratio that holds on a shared machine.

    .venv/bin/python bench/upload_memory.py --uploads 8 --src /tmp/prev/src --src src
"""

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import psutil
from PIL import Image

SIDE = 14_000


def huge_image(fmt: str, mode: str) -> bytes:
    # A small random pattern blown up with nearest neighbour: real colours, compresses to a few MB.
    rng = np.random.default_rng(7)
    small = Image.fromarray(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)).resize((SIDE, SIDE), Image.NEAREST)
    image = small.convert(mode) if mode != "RGB" else small
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 90}))
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(src: str, data: bytes, uploads: int, engines: str) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(src).resolve()),
            "LOOKALIKE_DATA_DIR": data_dir,
            "LOOKALIKE_PORT": str(port),
            "LOOKALIKE_ENGINES": json.dumps(engines.split(",")),
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "lookalike", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"service did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
            process = psutil.Process(server.pid)
            baseline = process.memory_info().rss
            peak, sampling = baseline, True

            def sample():
                nonlocal peak
                while sampling:
                    peak = max(peak, process.memory_info().rss)
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample)
            sampler.start()
            statuses = [None] * uploads

            def post(i: int):
                files = {"image": ("huge", data, "application/octet-stream")}
                response = httpx.post(f"{url}/images", files=files, data={"image_id": str(i)}, timeout=600)
                statuses[i] = response.status_code

            started = time.monotonic()
            clients = [threading.Thread(target=post, args=(i,)) for i in range(uploads)]
            for client in clients:
                client.start()
            for client in clients:
                client.join()
            elapsed = time.monotonic() - started
            time.sleep(0.5)
            sampling = False
            sampler.join()
            after = process.memory_info().rss
        finally:
            server.terminate()
            server.wait(30)
    mib = 2**20
    return {
        "src": src,
        "baseline_mib": baseline / mib,
        "peak_mib": peak / mib,
        "after_mib": after / mib,
        "seconds": elapsed,
        "statuses": statuses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=8)
    parser.add_argument("--format", default="PNG", help="PNG or JPEG")
    parser.add_argument("--mode", default="RGB", help="colour mode: RGB, L, P, RGBA (PNG)")
    parser.add_argument("--engines", default="phash,color,local,global,image_text,tags")
    parser.add_argument("--src", action="append", help="a checkout's src/ to run (repeatable) [default: src]")
    args = parser.parse_args()
    data = huge_image(args.format, args.mode)
    print(
        f"{SIDE}x{SIDE} {args.mode} {args.format}, {len(data) / 2**20:.1f} MiB, {args.uploads} concurrent uploads, "
        f"engines {args.engines}, {os.cpu_count()} cores"
    )
    print("| src | RSS before (MiB) | peak (MiB) | peak - before | after | seconds | statuses |")
    print("|---|---|---|---|---|---|---|")
    for src in args.src or ["src"]:
        r = run(src, data, args.uploads, args.engines)
        print(
            f"| {r['src']} | {r['baseline_mib']:.0f} | {r['peak_mib']:.0f} | {r['peak_mib'] - r['baseline_mib']:.0f} "
            f"| {r['after_mib']:.0f} | {r['seconds']:.1f} | {sorted(r['statuses'])} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
