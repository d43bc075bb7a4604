"""Caption generation: the decoding loop's own cost, ours on ONNX Runtime against transformers' generate
on the same model (the tiny random ViT-GPT2 of tests/test_captioning.py), greedy and beam search.

Both get the same pixels and produce the same tokens (the test checks that); each takes the images in
batches of BATCH, `max_new_tokens` 30, `no_repeat_ngram_size` 3, on 2 threads. Reported: seconds per
image, the median of REPEATS runs over IMAGES images, and ours / transformers.

Run: .venv/bin/python bench/caption_generation.py
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_captioning import SIDE, tiny_model, word_tokenizer  # noqa: E402

from lookalike.models.captioning import Captioner, export_captioner  # noqa: E402
from lookalike.models.runtime import set_threads  # noqa: E402

IMAGES = 24
BATCH = 8
REPEATS = 5
NEW_TOKENS = 30


def seconds_per_image(generate, pixels: np.ndarray) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        for start in range(0, len(pixels), BATCH):
            generate(pixels[start : start + BATCH])
        times.append((time.perf_counter() - started) / len(pixels))
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(2)
    set_threads(2)
    model = tiny_model()
    with tempfile.TemporaryDirectory() as folder:
        export_captioner(model, Path(folder), word_tokenizer(Path(folder) / "words.json"))
        captioner = Captioner(Path(folder))
        pixels = np.random.default_rng(0).normal(size=(IMAGES, 3, SIDE, SIDE)).astype(np.float32)
        rows = []
        for beams in (1, 3):

            def theirs(batch, beams=beams):
                with torch.no_grad():
                    model.generate(
                        pixel_values=torch.from_numpy(batch), num_beams=beams, do_sample=False,
                        max_new_tokens=NEW_TOKENS, no_repeat_ngram_size=3,
                    )  # fmt: skip

            def ours(batch, beams=beams):
                captioner.generate(batch, beams=beams, max_new_tokens=NEW_TOKENS, no_repeat_ngram=3)

            reference, mine = seconds_per_image(theirs, pixels), seconds_per_image(ours, pixels)
            search = "greedy" if beams == 1 else f"beam {beams}"
            rows.append([search, f"{reference * 1000:.1f}", f"{mine * 1000:.1f}", f"{mine / reference:.2f}"])
    print(f"## Caption generation, tiny ViT-GPT2 ({IMAGES} images, batches of {BATCH}, {NEW_TOKENS} new tokens)\n")
    print(common.table(["search", "transformers ms / image", "ours ms / image", "ours / transformers"], rows))
    print(f"\n{common.machine_markdown()}")


if __name__ == "__main__":
    main()
