"""CLIP as Immich publishes it for its machine-learning service: separate visual and textual ONNX encoders
plus a Hugging Face tokenizer.json, so image and text embeddings land in one space and match Immich's own.

The files follow Immich's exporter (machine-learning/export/immich_model_exporter/exporters/onnx/models/
openclip.py) and its reader (machine-learning/immich_ml/models/clip/): the visual input
"image" is float32 (batch, 3, side, side), the textual input "text" is int32 (batch, context length), and
the one output is the embedding, L2-normalised in the graph. Recent exports fix the batch at 1 and name
the output "embedding"; older ones had a dynamic batch and "image_embedding"/"text_embedding". Names,
dtypes and batch come from the session, so both kinds load."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ModelUnavailable
from .download import RemoteWeights, fetch_weights
from .runtime import open_session, unit_rows

# OpenAI CLIP's normalisation (visual/preprocess_cfg.json of every *__openai model).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

BATCH = 16  # images or texts per run when the model takes any batch: bounds the memory of a long list


@dataclass(frozen=True)
class ClipWeights:
    """A CLIP model's files and the preprocessing its preprocess_cfg.json and config.json describe."""

    name: str
    dim: int
    visual: RemoteWeights
    textual: RemoteWeights
    tokenizer: RemoteWeights
    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    context_length: int = 77
    pad_token: str = "<|endoftext|>"  # textual/tokenizer_config.json's, as Immich pads


# Pinned to a revision, not main: the sha256s are of these files, and a re-export on main would otherwise
# turn every first start into a checksum error. The revision and sha256s are the ones several independent
# projects that download these files pin (sizes: visual 351,613,724 B, textual 254,193,396 B, tokenizer
# 3,642,073 B, the openai/clip-vit-base-patch32 tokenizer.json).
_VIT_B_32 = "https://huggingface.co/immich-app/ViT-B-32__openai/resolve/a857c8de2c07bbcfa6646adfcf31b798845afa1e"

CLIP_MODELS: dict[str, ClipWeights] = {
    "clip-vit-b32": ClipWeights(
        name="clip-vit-b32",
        dim=512,
        visual=RemoteWeights(
            "clip-vit-b32 visual encoder",
            f"{_VIT_B_32}/visual/model.onnx",
            "33a3df41ceef21acdf371af00f6dd0456ec1f9eba24d03a7720f9c3734e40859",
            "clip-vit-b32/visual.onnx",
            351_613_724,
        ),
        textual=RemoteWeights(
            "clip-vit-b32 text encoder",
            f"{_VIT_B_32}/textual/model.onnx",
            "b80cf0af751533a6712d92247f0ddc0c95208748bc59a1a27f33e67be6864e3b",
            "clip-vit-b32/textual.onnx",
            254_193_396,
        ),
        tokenizer=RemoteWeights(
            "clip-vit-b32 tokenizer",
            f"{_VIT_B_32}/textual/tokenizer.json",
            "6d9109cc838977f3ca94a379eec36aecc7c807e1785cd729660ca2fc0171fb35",
            "clip-vit-b32/tokenizer.json",
            3_642_073,
        ),
    ),
}


class ClipModel:
    """Image and text embeddings, (n, dim) float32 with unit rows, from a CLIP model's local files."""

    def __init__(self, visual: Path, textual: Path, tokenizer: Path, weights: ClipWeights):
        from tokenizers import Tokenizer

        self.weights = weights
        self.dim = weights.dim
        self._visual = open_session(visual)
        self._textual = open_session(textual)
        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer))
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            raise ModelUnavailable(f"could not load the tokenizer {tokenizer} of {weights.name!r}: {exc}") from exc
        pad_id = self._tokenizer.token_to_id(weights.pad_token)
        if pad_id is None:
            raise ModelUnavailable(f"the tokenizer {tokenizer} of {weights.name!r} has no {weights.pad_token!r}")
        # As Immich does: the tokenizer's own post-processor adds the start and end tokens, and truncation
        # keeps room for them, so a long text still ends with the end token the model pools at.
        self._tokenizer.enable_padding(length=weights.context_length, pad_id=pad_id, pad_token=weights.pad_token)
        self._tokenizer.enable_truncation(max_length=weights.context_length)
        image_type, text_type = self._visual.get_inputs()[0].type, self._textual.get_inputs()[0].type
        if image_type != "tensor(float)" or text_type not in _INT_TYPES:
            raise ModelUnavailable(f"{weights.name!r} takes {image_type} images and {text_type} texts, not CLIP's")
        self._text_dtype = _INT_TYPES[text_type]  # Immich's exports take int32, open_clip's own int64
        for session in (self._visual, self._textual):
            width = session.get_outputs()[0].shape[-1]
            if isinstance(width, int) and width != weights.dim:
                raise ModelUnavailable(f"{weights.name!r} embeds into {width} dimensions, not {weights.dim}")

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self._embed(self._visual, images, lambda chunk: np.stack([self.preprocess(image) for image in chunk]))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self._embed(self._textual, texts, self.tokenize)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """(3, side, side) float32, as Immich's OpenClipVisualEncoder: shortest side to `side` (bicubic),
        centre square, [0, 1], CLIP's mean and std."""
        side = self.weights.image_size
        image = image.convert("RGB")
        width, height = image.size
        if width < height:  # Immich's rounding (int), so the embeddings match its own
            image = image.resize((side, int(height / width * side)), Image.Resampling.BICUBIC)
        else:
            image = image.resize((int(width / height * side), side), Image.Resampling.BICUBIC)
        left, top = int(image.width / 2 - side / 2), int(image.height / 2 - side / 2)
        image = image.crop((left, top, left + side, top + side))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - np.array(self.weights.mean, np.float32)) / np.array(self.weights.std, np.float32)
        return pixels.transpose(2, 0, 1)

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """(n, context length) token ids: start token, the text, end token, padding."""
        # Immich's clean_text: whitespace runs to one space; the tokenizer's normaliser does the rest.
        encodings = self._tokenizer.encode_batch([" ".join(text.split()) for text in texts])
        return np.array([encoding.ids for encoding in encodings], dtype=self._text_dtype).reshape(len(texts), -1)

    def _embed(self, session, items: list, prepare) -> np.ndarray:
        """The first output for the prepared items, in batches the model takes, with unit rows."""
        model_input = session.get_inputs()[0]
        step = 1 if isinstance(model_input.shape[0], int) else BATCH  # Immich's current exports fix it at 1
        outputs = [
            session.run(None, {model_input.name: prepare(items[i : i + step])})[0] for i in range(0, len(items), step)
        ]
        out = np.concatenate(outputs).astype(np.float32, copy=False) if outputs else np.zeros((0, self.dim), np.float32)
        # The exports normalise already; doing it again is cheap and keeps cosine = dot for any export.
        return unit_rows(out)


_INT_TYPES = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}


def load_clip(weights: ClipWeights, models_dir: Path, progress: bool = True) -> ClipModel:
    """The model, its files downloaded into models_dir and verified first if they are missing."""
    paths = [
        fetch_weights(remote, models_dir, progress) for remote in (weights.visual, weights.textual, weights.tokenizer)
    ]
    return ClipModel(*paths, weights)
