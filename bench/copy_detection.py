"""Copy-detection quality on real photos: recall@1 per transform, phash, color and the neural engines.

Originals: the 46 test photos (scikit-image + interior) and the Machine Vision Toolbox photos
(common.mvtb_photos(): drawings, binary and sub-200-px images skipped), each encoded as JPEG q90
at its own size and added to a Library (phash + color) in a temp dir. Every transformed copy is made
from that stored JPEG, encoded as JPEG q90 (except jpeg-q30), and queried with
library.similar_to_image(engine, bytes, k=1); a hit is the original at rank 1.

Transforms: jpeg-q30 (re-encoded at quality 30); resize-1/4 (each side / 4); mirror; crop-10% and
crop-30% (that fraction of the area removed, centred crop of the same aspect); rotate-5 (5 degrees
counter-clockwise, same canvas, black corners); rotate-90; grey; text (one line of white text with
a black outline, ~90% of the width, across the middle); border-white / border-black (a band of 10%
of the width on the left and right and 10% of the height on top and bottom).

Also: for phash, the share of rank-1 hits within the default duplicate threshold (64 bits); and for
every engine the false-positive margin: the smallest distance from an original (queried as an
upload, so with phash's mirror variant and global's two 90-degree turns) to any *other* original.

Neural engines, in the same run on the same originals and copies: global features with
EfficientNet-Lite2 (the default) and image_text (imagenet-minilm) live in the same Library as phash
and color, so every original is decoded once for all four at 512 px as before (phash's and color's
numbers do not move); global with EfficientNet-Lite0 needs its own Library (["phash", "color",
"global"] with model="efficientnet-lite0", for the same 512-px decode of the originals). A query
decodes for its engine alone, as similar_to_image always does. Their share of rank-1 hits within
the engine's duplicate threshold (global 0.05, image_text 0.02, cosine distance) is reported too.
Models: LOOKALIKE_MODELS_DIR, else the engines' default models dir.

Run: LOOKALIKE_MODELS_DIR=/tmp/lk-models .venv/bin/python bench/copy_detection.py
"""

import io
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import common
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from lookalike.library import Library

ENGINES = ["phash", "color"]
# (column, library, engine): the neural engines' columns; "main" is the library of ENGINES.
NEURAL = [("global lite2", "main", "global"), ("global lite0", "lite0", "global"), ("image_text", "main", "image_text")]


def crop_area(image: Image.Image, removed: float) -> Image.Image:
    scale = (1 - removed) ** 0.5
    width, height = image.size
    w, h = round(width * scale), round(height * scale)
    left, top = (width - w) // 2, (height - h) // 2
    return image.crop((left, top, left + w, top + h))


def text_overlay(image: Image.Image) -> Image.Image:
    image = image.copy()
    draw = ImageDraw.Draw(image)
    text = "COPYRIGHT 2024"
    probe = ImageFont.load_default(size=100)
    size = max(8, int(100 * 0.9 * image.width / draw.textlength(text, font=probe)))
    font = ImageFont.load_default(size=size)
    draw.text(
        (image.width / 2, image.height / 2),
        text,
        font=font,
        fill="white",
        anchor="mm",
        stroke_width=max(1, size // 15),
        stroke_fill="black",
    )
    return image


def border(image: Image.Image, colour: str) -> Image.Image:
    dx, dy = round(image.width * 0.1), round(image.height * 0.1)
    return ImageOps.expand(image, (dx, dy, dx, dy), fill=colour)


TRANSFORMS = {
    "jpeg-q30": lambda im: im,
    "resize-1/4": lambda im: im.resize((max(1, im.width // 4), max(1, im.height // 4)), Image.Resampling.LANCZOS),
    "mirror": ImageOps.mirror,
    "crop-10%": lambda im: crop_area(im, 0.10),
    "crop-30%": lambda im: crop_area(im, 0.30),
    "rotate-5": lambda im: im.rotate(5, Image.Resampling.BICUBIC, expand=False, fillcolor="black"),
    "rotate-90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "grey": lambda im: im.convert("L"),
    "text": text_overlay,
    "border-white": lambda im: border(im, "white"),
    "border-black": lambda im: border(im, "black"),
}


def copies(data: bytes) -> dict[str, bytes]:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return {name: common.jpeg(fn(image), 30 if name == "jpeg-q30" else 90) for name, fn in TRANSFORMS.items()}


def models_options(model: str) -> dict:
    models_dir = os.environ.get("LOOKALIKE_MODELS_DIR")
    options = {"global": {"model": model}, "image_text": {}}
    return {name: {**o, "models_dir": models_dir} if models_dir else o for name, o in options.items()}


def main() -> None:
    photos = {**common.test_photos(), **common.mvtb_photos()}
    names = list(photos)
    originals = [common.jpeg(image) for image in photos.values()]
    del photos
    with ProcessPoolExecutor() as pool:
        transformed = list(pool.map(copies, originals, chunksize=4))

    hits = {(t, e): [] for t in TRANSFORMS for e in ENGINES}  # rank-1 distance if a hit, else None
    hits |= {(t, column): [] for t in TRANSFORMS for column, _, _ in NEURAL}
    margin = {}
    with tempfile.TemporaryDirectory() as tmp:
        libraries = {
            "main": Library(
                Path(tmp, "main"),
                [*ENGINES, "global", "image_text"],
                engine_options=models_options("efficientnet-lite2"),
            ),
            "lite0": Library(
                Path(tmp, "lite0"), [*ENGINES, "global"], engine_options=models_options("efficientnet-lite0")
            ),
        }
        library = libraries["main"]
        columns = [(e, library, e) for e in ENGINES] + [(c, libraries[lib], e) for c, lib, e in NEURAL]
        for image_id, (name, data) in enumerate(zip(names, originals)):
            for each in libraries.values():
                each.add(image_id, data, name)
        for image_id, queries in enumerate(transformed):
            for transform, data in queries.items():
                for column, each, engine in columns:
                    (match,) = each.similar_to_image(engine, data, k=1)
                    hits[transform, column].append(match.score if match.image_id == image_id else None)
        for column, each, engine in columns:
            nearest = []
            for image_id, data in enumerate(originals):
                other = [m for m in each.similar_to_image(engine, data, k=2) if m.image_id != image_id][0]
                nearest.append((other.score, names[image_id], other.file_name))
            margin[column] = sorted(nearest)
        threshold = library.engines["phash"].duplicate_threshold
        neural_thresholds = {c: libraries[lib].engines[e].duplicate_threshold for c, lib, e in NEURAL}
        for each in libraries.values():
            each.close()

    rows, results = [], {}
    for transform in TRANSFORMS:
        row = [transform]
        for engine in ENGINES:
            found = [d for d in hits[transform, engine] if d is not None]
            recall = len(found) / len(originals)
            median = f"{np.median(found):.3g}" if found else "-"
            row += [f"{recall:.2f}", median]
            if engine == "phash":
                within = sum(d <= threshold for d in found) / len(found) if found else 0.0
                row.append(f"{within:.2f}")
            results[f"{transform}/{engine}"] = {"recall_at_1": recall, "hit_distances": found}
        rows.append(row)
    mean = ["mean"]
    for engine in ENGINES:
        mean += [f"{np.mean([results[f'{t}/{engine}']['recall_at_1'] for t in TRANSFORMS]):.2f}", ""]
        if engine == "phash":
            mean.append("")
    rows.append(mean)

    print(
        f"## Copy detection, recall@1 ({len(originals)} originals: 46 test photos + "
        f"{len(originals) - 46} mvtb photos; one query per original and transform)\n"
    )
    print(
        common.table(
            [
                "transform",
                "phash recall@1",
                "phash median distance of hits (bits)",
                f"phash hits <= {threshold:g} bits",
                "color recall@1",
                "color median distance of hits (L1)",
            ],
            rows,
        )
    )
    neural_rows = []
    for transform in TRANSFORMS:
        row = [transform]
        for column, _, _ in NEURAL:
            found = [d for d in hits[transform, column] if d is not None]
            recall = len(found) / len(originals)
            within = sum(d <= neural_thresholds[column] for d in found) / len(found) if found else 0.0
            row += [f"{recall:.2f}", f"{np.median(found):.3g}" if found else "-", f"{within:.2f}"]
            results[f"{transform}/{column}"] = {"recall_at_1": recall, "hit_distances": found}
        neural_rows.append(row)
    mean = ["mean"]
    for column, _, _ in NEURAL:
        mean += [f"{np.mean([results[f'{t}/{column}']['recall_at_1'] for t in TRANSFORMS]):.2f}", "", ""]
    neural_rows.append(mean)
    print(
        "\nNeural engines, same originals and copies (distance = cosine distance; global queries also search "
        "the copy turned 90 degrees either way):\n"
    )
    headers = ["transform"]
    for column, _, _ in NEURAL:
        headers += [
            f"{column} recall@1",
            f"{column} median distance of hits",
            f"{column} hits <= {neural_thresholds[column]:g}",
        ]
    print(common.table(headers, neural_rows))
    print("\nFalse-positive margin (each original queried as an upload; nearest *other* original):\n")
    margin_rows = []
    for engine in [*ENGINES, *(c for c, _, _ in NEURAL)]:
        distances = [d for d, _, _ in margin[engine]]
        d, a, b = margin[engine][0]
        margin_rows.append(
            [engine, f"{d:.3g}", f"{a} / {b}", f"{np.percentile(distances, 5):.3g}", f"{np.median(distances):.3g}"]
        )
    print(common.table(["engine", "smallest", "closest pair", "5th percentile", "median"], margin_rows))
    pairs = {}
    for d, a, b in margin["phash"]:
        pairs.setdefault(tuple(sorted((a, b))), d)
    closest = ", ".join(f"{d:.0f} ({a} / {b})" for (a, b), d in list(pairs.items())[:5])
    print(f"\nphash, the 5 closest pairs: {closest}.")
    print(f"\n{common.machine_markdown()}")
    common.save_json(
        "copy_detection",
        {
            "originals": names,
            "results": results,
            "margin": {e: [{"distance": d, "original": a, "nearest": b} for d, a, b in m] for e, m in margin.items()},
        },
    )


if __name__ == "__main__":
    main()
