"""Text-to-image search: recall@1 and recall@5 of hand-written captions over their 99 photos.

Photos and captions: bench/captions.tsv (bench/captions.py): 99 real photos (scikit-image,
scikit-learn's samples, the interior photos, mvtb and OpenCV samples), one hand-written caption
each. Every photo is added as JPEG q90 at its own size to one Library(tmp, ["image_text", "tags"])
(the offline space "imagenet-minilm": EfficientNet-Lite2's ImageNet probabilities mixed over
all-MiniLM-L6-v2 embeddings of the class names and descriptions). Each caption is a query,
library.similar_to_text("image_text", caption, k=99): the rank of its photo gives recall@1 and
recall@5 (the top 5 are those of k=5). Per source, and the failures (photo beyond rank 5) with what
ranked first and the photo's tags (library.tags_of_id).

Ablation, computed beside the engine with its own parts (nothing in src changes): the classifier's
probabilities of each stored photo (image_classifier(...).classify on library.decode(...), the
engine's decode), mixed as the engine does, unit_rows(p @ class_vectors), against the caption's
MiniLM embedding (text_encoder(...).embed). Class texts: "a photo of a {name}" only, the description
only, or both embeddings summed (the engine's default; checked to reproduce its ranks). Probability
temperature: p ** T renormalised, T = 1 (the engine), 0.5, 0.25.

Tags: the tags engine answers a tag name, not a sentence. For the captions that literally contain an
ImageNet class name (whole words, case aside, a plural "s"/"es" allowed; the longest such name),
that name is queried with library.similar_to_text("tags", name, k=99), beside image_text's answer to
the whole caption on the same captions. The name is found mechanically, not chosen by hand.

Run: LOOKALIKE_MODELS_DIR=/tmp/lk-models .venv/bin/python bench/text_search_recall.py
"""

import re
import tempfile
from pathlib import Path

import common
import numpy as np
from captions import load_captioned_photos
from global_retrieval import models_dir

from lookalike.engines.image_text import CLASSIFIER
from lookalike.library import Library
from lookalike.models.classifier import image_classifier, imagenet_class_texts
from lookalike.models.runtime import unit_rows  # what the engine normalises its mixed vectors with
from lookalike.models.text import text_encoder

CACHE = Path.home() / ".cache/lookalike/bench/text_search"
# Captions where the class name found mechanically does not name the photo's object (judged by hand,
# after the fact; reported separately, not dropped).
OTHER_SENSE = {
    "skimage:astronaut": "orange: a colour (orange spacesuit)",
    "sklearn:flower.jpg": "orange: a colour (orange dahlia)",
    "interior:pexels-36179987.jpg": "orange: a colour (orange flowers)",
    "mvtb:flowers7.png": "orange: a colour (orange wallflowers)",
    "opencv:rubberwhale1.png": "orange: a colour (an orange wheel)",
    "interior:pexels-7193656.jpg": "desk: part of 'desk lamp'",
    "mvtb:castle.png": "castle: a word on the sign photographed",
    "mvtb:penguins.png": "mountain: 'Table Mountain' on the sign photographed",
}
POWERS = [1.0, 0.5, 0.25]


def rank_of(ranking: list[int], wanted: int) -> int:
    return ranking.index(wanted) + 1 if wanted in ranking else len(ranking) + 1


def recall_at(ranks, k: int) -> float:
    return float(np.mean([r <= k for r in ranks])) if len(ranks) else float("nan")


def class_vectors(encoder) -> dict[str, np.ndarray]:
    """Sentence embeddings of the 1,000 classes: names ("a photo of a {name}") and descriptions; cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    found = {}
    names, descriptions = imagenet_class_texts()
    for kind, texts in [("name", [f"a photo of a {n}" for n in names]), ("description", descriptions)]:
        path = CACHE / f"classes-{kind}-{encoder.name}.npy"
        if not path.exists():
            vectors = np.vstack([encoder.embed(texts[i : i + 32]) for i in range(0, len(texts), 32)])
            np.save(path, vectors)
        found[kind] = np.load(path)
    found["both"] = found["name"] + found["description"]
    return found


def class_name_in(caption: str, names: list[str]) -> str | None:
    """The longest ImageNet class name that occurs in the caption as whole words (plural allowed)."""
    text = caption.lower()
    found = [n for n in set(names) if re.search(rf"\b{re.escape(n.lower())}(s|es)?\b", text)]
    return max(found, key=len) if found else None


def main() -> None:
    photos = load_captioned_photos()
    ids = list(range(len(photos)))
    options = {name: {"models_dir": models_dir()} for name in ("image_text", "tags")}
    jpegs = [common.jpeg(image) for _, image, _ in photos]
    classifier = image_classifier(CLASSIFIER, models_dir())
    encoder = text_encoder(models_dir())
    with (
        tempfile.TemporaryDirectory() as tmp,
        Library(Path(tmp), ["image_text", "tags"], engine_options=options) as lib,
    ):
        for image_id, data, (photo_id, _, _) in zip(ids, jpegs, photos):
            lib.add(image_id, data, photo_id)
        ranks, first, tags = [], [], []
        for image_id, (_, _, caption) in zip(ids, photos):
            ranking = [m.image_id for m in lib.similar_to_text("image_text", caption, k=len(ids))]
            ranks.append(rank_of(ranking, image_id))
            first.append(ranking[0])
            tags.append(lib.tags_of_id(image_id))
        images = [lib.decode(d, ["image_text"])["image_text"] for d in jpegs]
        probabilities = np.vstack([classifier.classify([image]).probabilities for image in images])
        stored = np.vstack([lib.store.feature("image_text", i) for i in ids])
        names = lib.engines["tags"].names
        tag_rows = []
        for image_id, (_, _, caption) in zip(ids, photos):
            name = class_name_in(caption, names)
            if name:
                ranking = [m.image_id for m in lib.similar_to_text("tags", name, k=len(ids))]
                tag_rows.append((image_id, name, rank_of(ranking, image_id), ranks[image_id]))

    sources = [photo_id.split(":", 1)[0] for photo_id, _, _ in photos]
    captions = [caption for _, _, caption in photos]
    photo_ids = [photo_id for photo_id, _, _ in photos]

    # Ablation: the engine's mixing, recomputed with other class texts and temperatures.
    vectors = class_vectors(encoder)
    queries = encoder.embed(captions)
    ablation = {}
    for kind in ("name", "description", "both"):
        for power in POWERS:
            p = probabilities**power
            p /= p.sum(axis=1, keepdims=True)
            images = unit_rows(p @ vectors[kind])
            similarity = queries @ images.T
            order = np.argsort(-similarity, axis=1, kind="stable")
            ablation[kind, power] = [int(np.flatnonzero(order[i] == i)[0]) + 1 for i in ids]
    reproduced = float(np.abs(unit_rows(probabilities @ vectors["both"]) - stored).max())

    results = {
        "photos": photo_ids,
        "ranks": ranks,
        "recall_at_1": recall_at(ranks, 1),
        "recall_at_5": recall_at(ranks, 5),
        "ablation": {f"{k}|{p}": r for (k, p), r in ablation.items()},
        "engine_vectors_reproduced_max_abs_diff": reproduced,
        "tags": [{"photo": photo_ids[i], "name": n, "tags_rank": t, "image_text_rank": r} for i, n, t, r in tag_rows],
    }
    common.save_json("text_search_recall", results)

    print(f"## Text-to-image search ({len(ids)} captioned photos, image_text = imagenet-minilm)\n")
    rows = [["all", len(ids), f"{recall_at(ranks, 1):.2f}", f"{recall_at(ranks, 5):.2f}", f"{np.median(ranks):.0f}"]]
    for source in dict.fromkeys(sources):
        chosen = [r for r, s in zip(ranks, sources) if s == source]
        rows.append(
            [
                source,
                len(chosen),
                f"{recall_at(chosen, 1):.2f}",
                f"{recall_at(chosen, 5):.2f}",
                f"{np.median(chosen):.0f}",
            ]
        )
    print(common.table(["photos", "n", "recall@1", "recall@5", "median rank"], rows))

    print(
        "\nAblation (recomputed beside the engine; 'both, T=1' is the engine: its vectors reproduced to "
        f"{reproduced:.1e}):\n"
    )
    rows = []
    for (kind, power), found in ablation.items():
        rows.append(
            [
                kind,
                f"{power:g}",
                f"{recall_at(found, 1):.2f}",
                f"{recall_at(found, 5):.2f}",
                f"{np.median(found):.0f}",
                f"{np.mean(found):.1f}",
            ]
        )
    print(common.table(["class text", "T (p**T)", "recall@1", "recall@5", "median rank", "mean rank"], rows))
    same = ablation["both", 1.0] == ranks
    print(f"\n'both, T=1' gives the engine's ranks exactly: {same}.")

    failures = sorted((r, i) for i, r in enumerate(ranks) if r > 5)
    print(f"\nFailures: {len(failures)} captions whose photo ranks beyond 5 (worst first):\n")
    print(
        common.table(
            ["rank", "photo", "caption", "its tags", "ranked first"],
            [
                [r, photo_ids[i], captions[i], ", ".join(tags[i]) or "(none >= 0.2)", photo_ids[first[i]]]
                for r, i in sorted(failures, reverse=True)
            ],
        )
    )

    if tag_rows:
        table_rows = []
        same_sense = [row for row in tag_rows if photo_ids[row[0]] not in OTHER_SENSE]
        for label, chosen in [("all matches", tag_rows), ("the name is the photo's object", same_sense)]:
            t_ranks, i_ranks = [t for *_, t, _ in chosen], [r for *_, r in chosen]
            for engine, found in [("tags (the class name)", t_ranks), ("image_text (the whole caption)", i_ranks)]:
                table_rows.append(
                    [
                        label,
                        engine,
                        len(found),
                        f"{recall_at(found, 1):.2f}",
                        f"{recall_at(found, 5):.2f}",
                        f"{np.median(found):.0f}",
                    ]
                )
        print(
            f"\nTags engine: {len(tag_rows)} captions contain an ImageNet class name; that name queried "
            'with similar_to_text("tags", name):\n'
        )
        print(common.table(["captions", "engine (query)", "n", "recall@1", "recall@5", "median rank"], table_rows))
        print("\nOther sense (judged by hand): " + "; ".join(f"{k}: {v}" for k, v in OTHER_SENSE.items()) + ".")
        print("\n" + "; ".join(f"{photo_ids[i]}: {n!r} -> {t} (image_text {r})" for i, n, t, r in tag_rows))
    print(f"\n{common.machine_markdown()}")


if __name__ == "__main__":
    main()
