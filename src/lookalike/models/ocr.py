"""Reading text in photos: PaddleOCR's PP-OCR networks (detection, text direction, recognition) run by
RapidOCR on ONNX Runtime.

The default model, PP-OCRv6 small (Chinese, English and 48 other Latin-script languages, Apache-2.0),
ships inside the rapidocr wheel and is loaded from there. Other sizes are downloaded on first use
through `fetch_weights`, pinned to the sha256s rapidocr 3.10.0 itself lists for them
(rapidocr/default_models.yaml); rapidocr's own downloader is never reached, since every file is
given to it by path and the recognisers carry their alphabet inside the ONNX file.

A photo is read in three steps: the detector finds text regions on the image scaled to at most
`detection_side` pixels (the step that costs most on photos without text, so its side is the knob),
each region is cut from the full image and turned upright (regions 1.5 times taller than wide are
turned a quarter, and the direction classifier turns upside-down ones), and the recogniser reads
the upright crops in batches. Nothing is recognised where nothing was detected.
"""

import importlib.util
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ModelUnavailable
from . import runtime
from .download import RemoteWeights, fetch_weights, is_verified

_RELEASE = "https://www.modelscope.cn/models/RapidAI/RapidOCR/resolve/v3.10.0/onnx"
SURE_DIRECTION = 0.9  # rapidocr's own: below it, "upside down or not" is settled by reading both ways
TALL_CROP = 1.5  # RapidOCR turns a crop this many times taller than wide a quarter (utils.get_rotate_crop_image)


@dataclass(frozen=True)
class OcrModel:
    """A detector and a recogniser that work together; the direction classifier is shared by all."""

    name: str
    detector: RemoteWeights
    recognizer: RemoteWeights


def _weights(name: str, path: str, sha256: str) -> RemoteWeights:
    return RemoteWeights(name, f"{_RELEASE}/{path}", sha256, f"ocr/{Path(path).name}")


DIRECTION = _weights(
    "ppocr-mobile-v2-cls", "PP-OCRv4/cls/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
)  # fmt: skip
OCR_MODELS = {
    model.name: model
    for model in [
        OcrModel(
            "pp-ocrv6-small",  # ships in the rapidocr wheel
            _weights("pp-ocrv6-det-small", "PP-OCRv6/det/PP-OCRv6_det_small.onnx",
                     "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f"),
            _weights("pp-ocrv6-rec-small", "PP-OCRv6/rec/PP-OCRv6_rec_small.onnx",
                     "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884"),
        ),
        OcrModel(
            "pp-ocrv6-medium",
            _weights("pp-ocrv6-det-medium", "PP-OCRv6/det/PP-OCRv6_det_medium.onnx",
                     "92078b7355007ccfffcd4c8cd441a3afd4538904d06881b29a155e1e679907c2"),
            _weights("pp-ocrv6-rec-medium", "PP-OCRv6/rec/PP-OCRv6_rec_medium.onnx",
                     "eef444829dbbe18d7fea59a3f6eb75647518d2b3a9568d27c92e42940204894b"),
        ),
    ]
}  # fmt: skip


@dataclass(frozen=True)
class ReadLine:
    text: str
    confidence: float
    corners: np.ndarray  # (4, 2) pixels: top left, top right, bottom right, bottom left of the text as it reads


@dataclass(frozen=True)
class Reading:
    lines: list[ReadLine]
    seconds: dict[str, float]  # wall time of each step: detection, direction, recognition


class TextReader:
    """One OCR pipeline; safe to call from several threads (ONNX Runtime sessions are)."""

    def __init__(self, model: OcrModel, models_dir: Path, detection_side: int):
        self.model = model
        self.models_dir = models_dir
        self.detection_side = detection_side

    @cached_property
    def _ocr(self):
        from rapidocr import RapidOCR  # imports OpenCV and OmegaConf: only when text is read

        paths = {step: model_file(weights, self.models_dir) for step, weights in self._files().items()}
        # Without its alphabet inside, rapidocr would download one. The wheel's recogniser has it (the sha256
        # pins it; tests/test_ocr_models.py checks); reading a downloaded one's metadata costs ~0.35 s a start.
        if paths["Rec"] != shipped_file(self.model.recognizer) and not _has_alphabet(paths["Rec"]):
            raise ModelUnavailable(f"the recogniser {paths['Rec']} does not carry its alphabet; it cannot be used")
        threads = runtime.threads() or -1  # rapidocr's "ONNX Runtime's default"
        ocr = RapidOCR(
            params={
                "Global.log_level": "error",  # it warns at every photo without text
                "Global.text_score": 0.0,  # the engine applies its own cutoff
                "Global.max_side_len": 1 << 16,  # the engine's decode already bounds the image
                "Det.model_path": str(paths["Det"]),
                "Det.limit_side_len": self.detection_side,
                "Det.limit_type": "max",
                "Cls.model_path": str(paths["Cls"]),
                "Cls.cls_thresh": SURE_DIRECTION,  # turns a crop over only when this sure (see `read`)
                "Rec.model_path": str(paths["Rec"]),
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )
        # RapidOCR loads each network on its first use; load them now, so that a broken file fails here.
        ocr._load_det_model(), ocr._load_cls_model(), ocr._load_rec_model()
        return ocr

    def _files(self) -> dict[str, RemoteWeights]:
        return {"Det": self.model.detector, "Cls": DIRECTION, "Rec": self.model.recognizer}

    def load(self) -> None:
        self._ocr

    def read(self, image: Image.Image) -> Reading:
        """The lines of text in an RGB image, in reading order, each with its recogniser's confidence."""
        from rapidocr.main import RapidOCRError
        from rapidocr.utils.process_img import map_boxes_to_original

        ocr = self._ocr
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])  # PP-OCR was trained on BGR
        scaled, record = ocr.preprocess_img(pixels)
        started = time.perf_counter()
        try:
            crops, detected = ocr.detect_and_crop(scaled, record)
        except RapidOCRError:  # nothing detected: nothing to recognise
            return Reading([], {"detection": time.perf_counter() - started, "direction": 0.0, "recognition": 0.0})
        upright, directions = ocr.cls_and_rotate(crops)
        # Where the direction classifier is unsure, the crop is also read turned over; the recogniser's
        # confidence picks the reading (bench/ocr_recall.py: following the label alone misread upright
        # lines of a printed page, keeping it alone left upside-down words unread).
        turned = [label == "180" and score >= SURE_DIRECTION for label, score in directions.cls_res]
        unsure = [i for i, (_, score) in enumerate(directions.cls_res) if score < SURE_DIRECTION]
        recognised = ocr.recognize_txt(upright + [np.rot90(upright[i], 2) for i in unsure])
        texts, scores = list(recognised.txts[: len(crops)]), list(recognised.scores[: len(crops)])
        for i, text, score in zip(unsure, recognised.txts[len(crops) :], recognised.scores[len(crops) :]):
            if score > scores[i]:
                texts[i], scores[i], turned[i] = text, score, not turned[i]
        seconds = {"detection": detected.elapse, "direction": directions.elapse, "recognition": recognised.elapse}
        boxes = map_boxes_to_original(detected.boxes.astype(np.float32), record, *pixels.shape[:2])
        lines = [
            ReadLine(text.strip(), float(score), reading_corners(box, upside_down))
            for box, upside_down, text, score in zip(boxes, turned, texts, scores)
            if text.strip()
        ]
        return Reading(lines, seconds)


def reading_corners(box: np.ndarray, upside_down: bool) -> np.ndarray:
    """A detected box's corners (clockwise from the top left of the image) from the top left of the text
    as it reads: the crop was turned a quarter anticlockwise if tall, then a half if read upside down."""
    width = max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3]))
    height = max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2]))
    turns = (1 if height >= TALL_CROP * max(width, 1.0) else 0) + (2 if upside_down else 0)
    return np.roll(box, -turns, axis=0)


def model_file(weights: RemoteWeights, models_dir: Path) -> Path:
    """The verified file: the one inside the rapidocr wheel where it ships there, else downloaded once."""
    shipped = shipped_file(weights)
    return shipped if is_verified(shipped, weights.sha256) else fetch_weights(weights, models_dir)


def shipped_file(weights: RemoteWeights) -> Path:
    """Where the rapidocr wheel would hold this file (it holds the small models and the classifier)."""
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("the text engine needs the rapidocr package: pip install rapidocr==3.10.0")
    return Path(spec.submodule_search_locations[0]) / "models" / Path(weights.filename).name


def _has_alphabet(path: Path) -> bool:
    """Whether an ONNX file carries a recogniser's characters (PP-OCR exports keep them in metadata)."""
    import onnx

    return any(prop.key == "character" for prop in onnx.load_model(str(path), load_external_data=False).metadata_props)
