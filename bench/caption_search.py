"""Text search with captions: recall@1, recall@5 and MRR of bench/captions.tsv's hand-written captions as
queries over their 99 photos, by the image-text engine alone, by the captions engines alone, and by
the fused text search (`gateway.text_search`: the better of the two cosine similarities), with
reciprocal rank fusion of the same two lists beside it for comparison.

Every photo is added as JPEG q90 at its own size to one Library(tmp, ["image_text", "captions",
"caption_embedding"]); each hand-written caption is a query: `similar_to_text` of each engine with
k=99, and `text_search(library, caption, k=99)`. The captioner is `--model` (default blip-base: its
files must be installed, `lookalike models install blip-base --from DIR`, or downloadable). `--model
tiny` runs the tests' tiny random BLIP instead: a check that the bench runs, whose captions mean
nothing, so its numbers say only what fusing with a captioner that knows nothing does.

Run: LOOKALIKE_MODELS_DIR=/tmp/lk-models .venv/bin/python bench/caption_search.py [--model blip-base]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import common
import numpy as np
from captions import load_captioned_photos
from global_retrieval import models_dir

from lookalike.gateway import text_search
from lookalike.library import Library

ENGINES = ["image_text", "captions", "caption_embedding"]
RRF_K = 60  # reciprocal rank fusion's constant, as Cormack et al. (2009) set it


def summary(ranks: list[int]) -> list[str]:
    ranks = np.array(ranks)
    return [f"{np.mean(ranks <= 1):.3f}", f"{np.mean(ranks <= 5):.3f}", f"{np.mean(1 / ranks):.3f}"]


def rank_of(ranking: list[int], wanted: int, total: int) -> int:
    return ranking.index(wanted) + 1 if wanted in ranking else total + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="blip-base")
    args = parser.parse_args()
    model = args.model
    if model == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_captioner import install_tiny_captioner, saved_tiny_blip

        model = install_tiny_captioner(saved_tiny_blip(Path(tempfile.mkdtemp())), models_dir())
    photos = load_captioned_photos()
    total = len(photos)
    options = {name: {"models_dir": models_dir()} for name in ENGINES}
    options["captions"]["model"] = options["caption_embedding"]["model"] = model
    ranks: dict[str, list[int]] = {name: [] for name in ["image_text", "caption_embedding", "captions", "fused", "rrf"]}
    with tempfile.TemporaryDirectory() as tmp, Library(Path(tmp), ENGINES, engine_options=options) as library:
        library.prepare()
        for image_id, (photo_id, image, _) in enumerate(photos):
            library.add(image_id, common.jpeg(image), photo_id)
        written = [library.feature_of_id("captions", i).text for i in range(total)]
        for image_id, (_, _, caption) in enumerate(photos):
            lists = {
                name: [hit.image_id for hit in library.similar_to_text(name, caption, k=total)] for name in ENGINES
            }
            for name, ranking in lists.items():
                ranks[name].append(rank_of(ranking, image_id, total))
            fused = [hit.image_id for hit in text_search(library, caption, k=total).hits]
            ranks["fused"].append(rank_of(fused, image_id, total))
            rrf: dict[int, float] = {}
            for name in ("image_text", "caption_embedding"):
                for rank, found in enumerate(lists[name], 1):
                    rrf[found] = rrf.get(found, 0.0) + 1 / (RRF_K + rank)
            ranking = sorted(rrf, key=lambda i: (-rrf[i], i))
            ranks["rrf"].append(rank_of(ranking, image_id, total))
    labels = {
        "image_text": "image_text alone",
        "caption_embedding": "caption_embedding alone (the caption's meaning)",
        "captions": "captions alone (the caption's words)",
        "fused": "text search: the better of image_text and caption_embedding",
        "rrf": "reciprocal rank fusion of image_text and caption_embedding (for comparison)",
    }
    print(f"## Text search with captions ({total} photos of bench/captions.tsv; captioner {args.model})\n")
    print(
        common.table(["ranking", "recall@1", "recall@5", "MRR"], [[labels[n], *summary(r)] for n, r in ranks.items()])
    )
    print("\nCaptions written (first 5):")
    for (photo_id, _, caption), text in list(zip(photos, written))[:5]:
        print(f"- {photo_id}: {text!r} (by hand: {caption!r})")
    common.save_json(f"caption_search_{args.model}", {"ranks": ranks, "captions": written})


if __name__ == "__main__":
    main()
