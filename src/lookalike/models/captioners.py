"""Caption models downloaded on first use: their files pinned by sha256, turned into ONNX once by
`captioning.export_captioner`, then run by `captioning.Captioner`.

No captioning weights ship in any package reachable here, so each model is a download (or, on a server
without internet, `lookalike models install NAME --from DIR`)."""

import os
import shutil
import threading
import weakref
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image

from ..errors import ModelUnavailable
from .captioning import SETTINGS_FILE, Captioner, export_captioner
from .download import RemoteWeights, described, fetch_weights, is_verified, locked
from .runtime import quietly


@dataclass(frozen=True)
class CaptionWeights:
    """A captioner as transformers saves it: its weights, its config.json (which names its class) and
    its tokenizer.json, in one folder of the models directory."""

    name: str
    side: int  # the square its encoder sees an image squashed to
    checkpoint: RemoteWeights  # pytorch_model.bin
    config: RemoteWeights
    tokenizer: RemoteWeights

    @property
    def files(self) -> tuple[RemoteWeights, ...]:
        return self.checkpoint, self.config, self.tokenizer


# Salesforce's BLIP base captioner (BSD-3-Clause), at a fixed revision. The hub publishes each file's
# sha256 in its Git LFS pointer, which cannot be read from here (no network): these are the sha256s and
# sizes that a BLIP captioning pipeline's weights manifest pins for this revision
# (kurtvalcorza/blip-captioning-pipeline, weights/blip-image-captioning-base/dimer-base-manifest.json),
# the checkpoint's also pinned by two other projects, the tokenizer's that of BERT's uncased
# tokenizer.json, which it is. Unverified here: a wrong one fails the first download with expected vs got.
_BLIP_BASE = (
    "https://huggingface.co/Salesforce/blip-image-captioning-base/resolve/82a37760796d32b1411fe092ab5d4e227313294b"
)

CAPTION_MODELS = {
    weights.name: weights
    for weights in [
        CaptionWeights(
            "blip-base", 384,
            RemoteWeights(
                "blip-base weights", f"{_BLIP_BASE}/pytorch_model.bin",
                "d6638651a5526cc2ede56f2b5104d6851b0755816d220e5e046870430180c767",
                "blip-base/pytorch_model.bin", 989_820_849,
            ),
            RemoteWeights(
                "blip-base config", f"{_BLIP_BASE}/config.json",
                "f7846f82f4e2c4a2ccbab9ae8b0e44873540a271a76a1288effd078180c13a82", "blip-base/config.json", 4_563,
            ),
            RemoteWeights(
                "blip-base tokenizer", f"{_BLIP_BASE}/tokenizer.json",
                "d241a60d5e8f04cc1b2b3e9ef7a4921b27bf526d9f6050ab90f9267a1f9e5c66", "blip-base/tokenizer.json", 711_396,
            ),
        ),
    ]
}  # fmt: skip


def load_captioner(weights: CaptionWeights, models_dir: Path, progress: bool = True) -> Captioner:
    """The captioner, its files downloaded into models_dir and verified, and exported to ONNX the first
    time (into a folder named after the checkpoint's hash: a new checkpoint is exported anew)."""
    models_dir = Path(models_dir)
    folder = models_dir / f"{weights.name}-{weights.checkpoint.sha256[:12]}"
    if not (folder / SETTINGS_FILE).exists():
        paths = _fetched(weights, models_dir, progress)  # before the lock
        with locked(models_dir / ".lock"):
            if not (folder / SETTINGS_FILE).exists():  # another process exported it while we waited
                _export(paths[0].parent, paths[2], folder)
    return Captioner(folder)


def _fetched(weights: CaptionWeights, models_dir: Path, progress: bool) -> list[Path]:
    """The model's files, verified (downloaded where missing); where that fails, the error names every
    file still missing, and how to install them from a folder."""
    try:
        return [fetch_weights(file, models_dir, progress) for file in weights.files]
    except ModelUnavailable as exc:
        missing = [file for file in weights.files if not is_verified(models_dir / file.filename, file.sha256)]
        raise ModelUnavailable(
            f"caption model {weights.name!r} is not installed, and it could not be downloaded. Download its "
            f"{len(missing)} missing file(s) on a machine that can: {'; '.join(map(described, missing))}; copy "
            f"them into a folder DIR here and run `lookalike models install {weights.name} --from DIR`. "
            f"(The download said: {exc.message})"
        ) from exc


class SharedCaptions:
    """One captioner for a library's engines: the captions engine and the caption embedding engine
    caption the same decoded image (one after the other, or side by side), so the first runs the model
    and the other reuses its captions, remembered for as long as the image objects themselves live.
    The model runs outside the lock: threads captioning other images run side by side."""

    def __init__(self, captioner: Captioner):
        self.captioner = captioner
        self._remembered: list[tuple[weakref.ref, str]] = []
        self._lock = threading.Lock()

    def caption(self, images: list[Image.Image]) -> list[str]:
        known = [self._recall(image) for image in images]
        missing = [image for image, text in zip(images, known) if text is None]
        made = self.captioner.caption(missing) if missing else []
        fresh = iter(made)
        with self._lock:
            alive = [(ref, text) for ref, text in self._remembered if ref() is not None]
            self._remembered = alive + [(weakref.ref(image), text) for image, text in zip(missing, made)]
        return [text if text is not None else next(fresh) for text in known]

    def _recall(self, image: Image.Image) -> str | None:
        with self._lock:
            return next((text for ref, text in self._remembered if ref() is image), None)


@cache
def shared_captioner(name: str, models_dir: Path) -> SharedCaptions:
    """The caption model called `name`, loaded (downloaded and exported first, where needed) once per process."""
    return SharedCaptions(load_captioner(CAPTION_MODELS[name], Path(models_dir)))


def _export(saved: Path, tokenizer: Path, folder: Path) -> None:
    """Load the model transformers saved in `saved` (no network) and export it into a folder beside
    `folder`, renamed to it once every file is on disk: `folder` is complete or absent."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(saved, local_files_only=True)
        model_class = getattr(transformers, config.architectures[0])
        model = model_class.from_pretrained(saved, local_files_only=True)
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ModelUnavailable(f"the caption model in {saved} cannot be loaded: {exc}") from exc
    temporary = folder.with_name(f".{folder.name}.part")
    for leftover in (temporary, folder):  # a crash's half-written export
        shutil.rmtree(leftover, ignore_errors=True)
    with quietly():
        export_captioner(model, temporary, tokenizer)
    for path in temporary.iterdir():
        with path.open("rb") as file:
            os.fsync(file.fileno())
    os.replace(temporary, folder)
