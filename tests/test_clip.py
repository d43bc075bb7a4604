"""CLIP in Immich's ONNX layout, end to end against a tiny CLIP made here and served over local HTTP: first use
downloads and verifies the files, preprocessing and tokenising feed the ONNX encoders as the torch modules
expect, and a bad checksum or no network fails with a message that says what to do."""

import hashlib
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from photos import encode
from PIL import Image
from test_models import Server, closed_port, files_in

from lookalike.errors import ModelUnavailable
from lookalike.features import FeatureSpec
from lookalike.library import Library
from lookalike.models.clip import CLIP_MODELS, OPENAI_MEAN, OPENAI_STD, ClipWeights, load_clip
from lookalike.models.download import RemoteWeights

torch = pytest.importorskip("torch")

DIM = 8
SIDE = 32  # small images keep the test light; the code path is the one for 224
CONTEXT = 77
START, END = "<|startoftext|>", "<|endoftext|>"
SENTENCES = [
    "a photo of a cat",
    "a photo of a dog on the grass",
    "an astronaut in a white suit",
    "a cup of coffee on a table",
    "a rocket launching into the sky",
    "the interior of a living room with a sofa",
]


class TinyVisual(torch.nn.Module):
    """A conv, a 2x2 pool (so where things are in the crop matters) and a projection, normalised like
    Immich's export (encode_image(normalize=True))."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.pool = torch.nn.AdaptiveAvgPool2d(2)
        self.proj = torch.nn.Linear(32, DIM)

    def forward(self, image):
        features = self.pool(torch.relu(self.conv(image))).flatten(1)
        return torch.nn.functional.normalize(self.proj(features), dim=-1)


class TinyTextual(torch.nn.Module):
    """Token embeddings summed causally and read at the end token, found as CLIP does (the highest id, its
    first occurrence), so the start token, the text and where the end token lands all change the result."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, 16)
        self.proj = torch.nn.Linear(16, DIM)

    def forward(self, text):
        hidden = self.embed(text.long()).cumsum(dim=1)
        end = text.argmax(dim=-1)
        pooled = hidden.gather(1, end[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1)
        return torch.nn.functional.normalize(self.proj(pooled), dim=-1)


def train_tokenizer():
    """A BPE tokenizer.json shaped like CLIP's: lower-casing normaliser, end-of-word suffix, start and end
    tokens added by the post-processor, and the end token the highest id (as 49407 is in CLIP's)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(SENTENCES, trainers.BpeTrainer(vocab_size=120, end_of_word_suffix="</w>"))
    tokenizer.add_special_tokens([START, END])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START} $A {END}",
        special_tokens=[(START, tokenizer.token_to_id(START)), (END, tokenizer.token_to_id(END))],
    )
    return tokenizer


class TinyClip:
    """The tiny model's files in a folder, and the torch modules they were exported from."""

    def __init__(self, root: Path):
        torch.manual_seed(0)
        self.root = root
        self.tokenizer = train_tokenizer()
        self.tokenizer.save(str(root / "tokenizer.json"))
        self.visual, self.textual = TinyVisual().eval(), TinyTextual(self.tokenizer.get_vocab_size()).eval()
        # As Immich exports: "image" float32 with the batch fixed at 1 (its current exporter), "text" int32
        # with a dynamic batch (its older one), so both ways of batching are exercised. The TorchScript
        # exporter on purpose (Immich's), so its deprecation warning is noise here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self._export(root)

    def _export(self, root: Path) -> None:
        torch.onnx.export(
            self.visual,
            (torch.randn(1, 3, SIDE, SIDE),),
            str(root / "visual.onnx"),
            input_names=["image"],
            output_names=["embedding"],
            opset_version=17,
            dynamo=False,
        )
        torch.onnx.export(
            self.textual,
            (torch.ones(1, CONTEXT, dtype=torch.int32),),
            str(root / "textual.onnx"),
            input_names=["text"],
            output_names=["embedding"],
            dynamic_axes={"text": {0: "batch_size"}},
            opset_version=17,
            dynamo=False,
        )

    def weights(self, server_url, **sha256s: str) -> ClipWeights:
        def remote(part: str, served: str, filename: str) -> RemoteWeights:
            sha256 = sha256s.get(part) or hashlib.sha256((self.root / served).read_bytes()).hexdigest()
            return RemoteWeights(f"clip-tiny {part}", server_url(served), sha256, f"clip-tiny/{filename}")

        return ClipWeights(
            name="clip-tiny",
            dim=DIM,
            visual=remote("visual", "visual.onnx", "visual.onnx"),
            textual=remote("textual", "textual.onnx", "textual.onnx"),
            tokenizer=remote("tokenizer", "tokenizer.json", "tokenizer.json"),
            image_size=SIDE,
        )


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyClip:
    return TinyClip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture
def server(tiny):
    server = Server(tiny.root)
    yield server
    server.close()


def reference_preprocess(image: Image.Image, resized: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Immich's steps with the sizes worked out by hand."""
    pixels = np.asarray(image.resize(resized, Image.Resampling.BICUBIC).crop(box), dtype=np.float32) / 255
    return ((pixels - np.array(OPENAI_MEAN, np.float32)) / np.array(OPENAI_STD, np.float32)).transpose(2, 0, 1)


def test_load_clip_downloads_once_and_embeds_like_the_torch_model(tiny, server, tmp_path, photos):
    weights = tiny.weights(server.url)
    models_dir = tmp_path / "models"

    model = load_clip(weights, models_dir, progress=False)
    assert sorted(server.requests) == ["/textual.onnx", "/tokenizer.json", "/visual.onnx"]
    assert files_in(models_dir) == ["clip-tiny/textual.onnx", "clip-tiny/tokenizer.json", "clip-tiny/visual.onnx"]
    assert model.dim == DIM

    # Images: real photos, landscape, portrait, square and grey.
    chelsea = photos["chelsea"]  # 451 x 300
    portrait = chelsea.transpose(Image.Transpose.ROTATE_90)
    images = [chelsea, portrait, photos["astronaut"], photos["coffee"], chelsea.convert("L")]
    embeddings = model.embed_images(images)
    assert embeddings.shape == (len(images), DIM) and embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    assert np.array_equal(model.embed_images([chelsea])[0], embeddings[0])
    assert len(np.unique(embeddings.round(4), axis=0)) == len(images)
    assert model.embed_images([]).shape == (0, DIM)

    # The shortest side to SIDE (Immich truncates: 451 / 300 * 32 = 48.1 -> 48), then the centre square.
    assert np.allclose(model.preprocess(chelsea), reference_preprocess(chelsea, (48, 32), (8, 0, 40, 32)), atol=1e-6)
    assert np.allclose(model.preprocess(portrait), reference_preprocess(portrait, (32, 48), (0, 8, 32, 40)), atol=1e-6)
    with torch.inference_mode():
        expected = tiny.visual(torch.from_numpy(np.stack([model.preprocess(image) for image in images]))).numpy()
    assert np.allclose(embeddings, expected, atol=1e-5)

    # Texts: the tokenizer's own lower-casing, Immich's whitespace cleaning, padding with the end token.
    texts = ["a photo of a cat", "an astronaut in a white suit", "  A PHOTO of a\tcat "]
    text_embeddings = model.embed_texts(texts)
    assert text_embeddings.shape == (3, DIM) and text_embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(text_embeddings, axis=1), 1, atol=1e-5)
    assert np.allclose(text_embeddings[0], text_embeddings[2], atol=1e-6)
    assert not np.allclose(text_embeddings[0], text_embeddings[1], atol=1e-2)
    assert model.embed_texts([]).shape == (0, DIM)

    tokens = model.tokenize(texts)
    start, end = tiny.tokenizer.token_to_id(START), tiny.tokenizer.token_to_id(END)
    ids = tiny.tokenizer.encode("a photo of a cat").ids  # start and end added by the post-processor
    assert tokens.dtype == np.int32  # what the exported "text" input takes
    assert tokens[0].tolist() == ids + [end] * (CONTEXT - len(ids)) and ids[0] == start and ids[-1] == end
    with torch.inference_mode():
        expected = tiny.textual(torch.from_numpy(tokens)).numpy()
    assert np.allclose(text_embeddings, expected, atol=1e-5)

    long = model.tokenize(["a photo of a cat " * 50])  # far past the context: truncated, end token kept
    assert long.shape == (1, CONTEXT) and long[0, 0] == start and long[0, -1] == end

    many = [f"a photo of {n} cats" for n in range(20)]  # more than one batch of the dynamic-batch encoder
    assert np.allclose(model.embed_texts(many), np.concatenate([model.embed_texts([text]) for text in many]), atol=1e-6)

    # A second load finds the verified files and downloads nothing.
    again = load_clip(weights, models_dir, progress=False)
    assert len(server.requests) == 3
    assert np.array_equal(again.embed_images([chelsea]), embeddings[:1])


def test_checksum_mismatch_names_the_model_and_leaves_nothing(tiny, server, tmp_path):
    weights = tiny.weights(server.url, visual="0" * 64)
    models_dir = tmp_path / "models"

    with pytest.raises(ModelUnavailable) as raised:
        load_clip(weights, models_dir, progress=False)
    message = raised.value.message
    assert "clip-tiny" in message and "sha256" in message and "0" * 64 in message
    assert raised.value.status == 503
    assert files_in(models_dir) == []


def test_offline_names_the_model_and_the_url(tiny, tmp_path):
    port = closed_port()
    weights = tiny.weights(lambda name: f"http://127.0.0.1:{port}/{name}")
    models_dir = tmp_path / "models"

    with pytest.raises(ModelUnavailable) as raised:
        load_clip(weights, models_dir, progress=False)
    message = raised.value.message
    assert "clip-tiny" in message and weights.visual.url in message
    assert str(models_dir / "clip-tiny" / "visual.onnx") in message
    assert files_in(models_dir) == []


def test_a_missing_hash_is_refused_before_any_download(tiny, server, tmp_path):
    weights = replace(tiny.weights(server.url), textual=replace(tiny.weights(server.url).textual, sha256=""))

    with pytest.raises(ModelUnavailable, match="clip-tiny textual"):
        load_clip(weights, tmp_path / "models", progress=False)


def test_the_immich_vit_b32_entry_is_pinned():
    weights = CLIP_MODELS["clip-vit-b32"]
    assert weights.dim == 512 and weights.image_size == 224 and weights.context_length == 77
    parts = [weights.visual, weights.textual, weights.tokenizer]
    for part in parts:
        assert re.fullmatch(r"[0-9a-f]{64}", part.sha256), part
        assert re.fullmatch(r"https://huggingface\.co/immich-app/ViT-B-32__openai/resolve/[0-9a-f]{40}/.+", part.url)
    assert [part.url.rsplit("/", 2)[-2:] for part in parts] == [
        ["visual", "model.onnx"],
        ["textual", "model.onnx"],
        ["textual", "tokenizer.json"],
    ]
    assert len({part.filename for part in parts}) == 3


def test_the_image_text_engine_serves_a_downloaded_clip(tiny, server, tmp_path, photos, monkeypatch):
    """The engine path a user takes with LOOKALIKE_IMAGE_TEXT_MODEL=clip-vit-b32, through the tiny model."""
    monkeypatch.setitem(CLIP_MODELS, "clip-tiny", tiny.weights(server.url))
    options = {"image_text": {"model": "clip-tiny", "models_dir": tmp_path / "models"}}
    with Library(tmp_path / "data", ["image_text"], engine_options=options) as library:
        library.prepare()  # downloads here, before any image
        assert sorted(server.requests) == ["/textual.onnx", "/tokenizer.json", "/visual.onnx"]
        assert library.engine("image_text").spec == FeatureSpec("float", DIM, "ip", model="clip-tiny")
        for image_id, name in enumerate(["chelsea", "coffee", "astronaut"]):
            library.add(image_id, encode(photos[name]), name)
        assert library.similar_to_image("image_text", encode(photos["coffee"]), k=1)[0].file_name == "coffee"
        found = library.similar_to_text("image_text", "a photo of a cat", k=3)
    # A random tiny model ranks nothing meaningfully: the text query is searched in the image index.
    assert len(found) == 3 and all(-1e-6 <= m.score <= 2 + 1e-6 for m in found)
