"""Trained templates for embedding indexes: PCA whitening and/or a compressed IVF-PQ index, learned
from the library and saved as an empty trained FAISS index.

The store keeps the raw vectors and the template's transform runs inside FAISS on every add and every
query, so a vector is whitened exactly once however often the index is rebuilt.
"""

import math
import uuid
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..features import FeatureSpec
from .files import read_index_file, write_index_file


@dataclass(frozen=True)
class Template:
    """A trained, empty index that an embedding index is built from; `token` names this training."""

    token: str
    whitened_dims: int | None
    compressed: bool
    trained_on: int
    index: object

    def fresh(self):
        return copy_index(self.index)

    def stats(self) -> dict:
        return {"whitened_dims": self.whitened_dims, "compressed": self.compressed, "trained_on": self.trained_on}


def train_template(spec: FeatureSpec, vectors: np.ndarray, whitened_dims: int | None, compressed: bool) -> Template:
    """Learn PCA whitening (to `whitened_dims`, then re-normalised) and/or an IVF-PQ index from `vectors`.

    Embeddings only: their vectors are unit length, as whitened ones are made again.
    """
    if not spec.is_embedding:
        raise ValueError(f"only embeddings can be whitened or compressed, not {spec.kind} {spec.metric}")
    dims = whitened_dims or spec.dim
    if compressed:
        inner = _compressed(dims, lists=max(1, int(math.sqrt(len(vectors)))))
    else:
        inner = faiss.IndexIDMap2(faiss.IndexFlatIP(dims))
    index = faiss.IndexPreTransform(inner)
    if whitened_dims:
        index.prepend_transform(faiss.NormalizationTransform(whitened_dims, 2.0))
        whitening = faiss.PCAMatrix(spec.dim, whitened_dims, -0.5)
        # Whitening divides by the square root of each eigenvalue: keep the tiniest from blowing up.
        whitening.epsilon = 1e-6
        index.prepend_transform(whitening)
    index.train(np.ascontiguousarray(vectors, np.float32))
    # The copy owns its parts outright (the Python wrappers above would otherwise have to outlive it).
    return Template(uuid.uuid4().hex, whitened_dims, compressed, len(vectors), copy_index(index))


def save_template(path: Path, spec: FeatureSpec, template: Template) -> None:
    header = {
        "token": template.token,
        "whitened_dims": template.whitened_dims,
        "compressed": template.compressed,
        "trained_on": template.trained_on,
    }
    write_index_file(path, spec, header, template.index)


def load_template(path: Path, spec: FeatureSpec) -> Template | None:
    loaded = read_index_file(path, spec, "float")
    if loaded is None:
        return None
    header, _, index = loaded
    return Template(header["token"], header["whitened_dims"], header["compressed"], header["trained_on"], index)


def _compressed(dims: int, lists: int):
    """IVF with 8-bit PQ codes of 4 (for wide vectors 8) dimensions each, 1/16 or 1/32 of the flat size;
    where neither divides the vector (tags: 998), 8-bit scalar codes, 1/4."""
    quantizer = faiss.IndexFlatIP(dims)
    for width, most in ((4, 128), (8, dims)):
        if dims % width == 0 and dims // width <= most:
            return faiss.IndexIVFPQ(quantizer, dims, lists, dims // width, 8, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexIVFScalarQuantizer(
        quantizer, dims, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )


def copy_index(index):
    # clone_index cannot copy a NormalizationTransform; a serialised round trip copies anything.
    return faiss.deserialize_index(faiss.serialize_index(index))
