"""Every model whose files are downloaded on first use, by name: what `lookalike models` lists, and
installs from a folder on a server that cannot download them."""

from pathlib import Path

from ..errors import InvalidRequest, ModelUnavailable
from .captioners import CAPTION_MODELS
from .clip import CLIP_MODELS
from .download import RemoteWeights, described, install_file, is_verified
from .ocr import DIRECTION, OCR_MODELS, shipped_file
from .places import PLACES365

# kornia also mirrors the file at https://huggingface.co/kornia/hardnet/resolve/main/hardnet8v2.pt
HARDNET8_WEIGHTS = RemoteWeights(
    name="hardnet8v2",
    url="https://cmp.felk.cvut.cz/~mishkdmy/hardnet8v2.pt",
    # The authors publish no checksum; this one is from a third-party weights manifest (34.49 MB file),
    # unverified here (no network). A wrong one fails the first download with expected vs got.
    sha256="5982f6d2c647545f13e74e8b011110fea2408130015a1496713253d9c00a941b",
    filename="hardnet8v2.pt",
)

MODELS: dict[str, tuple[RemoteWeights, ...]] = {
    **{name: (clip.visual, clip.textual, clip.tokenizer) for name, clip in CLIP_MODELS.items()},
    PLACES365.name: (PLACES365.checkpoint, PLACES365.categories, PLACES365.indoor_outdoor),
    HARDNET8_WEIGHTS.name: (HARDNET8_WEIGHTS,),
    # The small OCR model and the direction classifier ship in the rapidocr wheel: listed, never fetched.
    **{name: (ocr.detector, ocr.recognizer, DIRECTION) for name, ocr in OCR_MODELS.items()},
    **{name: captioner.files for name, captioner in CAPTION_MODELS.items()},
}


def models_holding(weights: RemoteWeights) -> list[str]:
    return [name for name, files in MODELS.items() if weights in files]


def installed(weights: RemoteWeights, models_dir: Path) -> bool:
    """Whether the file is in models_dir (or, for OCR, in the rapidocr wheel) with its sha256."""
    return is_verified(models_dir / weights.filename, weights.sha256) or is_verified(
        shipped_file(weights), weights.sha256
    )


def install_model(name: str, folder: Path, models_dir: Path) -> list[Path]:
    """Install model `name`'s files from `folder` into models_dir, each checked against its sha256: all of
    them, or (when any is missing from the folder) none."""
    if name not in MODELS:
        raise InvalidRequest(f"no model named {name!r}; the models that are downloaded are: {', '.join(MODELS)}")
    if not folder.is_dir():
        raise InvalidRequest(f"{folder} is not a folder")
    wanted = [weights for weights in MODELS[name] if not installed(weights, models_dir)]
    found = {weights: _find(weights, folder) for weights in wanted}
    missing = [weights for weights, source in found.items() if source is None]
    if missing:
        files = "; ".join(map(described, missing))
        raise ModelUnavailable(f"{folder} lacks {len(missing)} of model {name!r}'s files: {files}")
    return [install_file(weights, source, models_dir) for weights, source in found.items()]


def _find(weights: RemoteWeights, folder: Path) -> Path | None:
    return next((folder / name for name in weights.looked_for() if (folder / name).is_file()), None)
