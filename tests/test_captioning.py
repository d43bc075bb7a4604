"""Caption generation on ONNX Runtime against transformers' own `generate`: tiny random models of the
captioners' architectures (ViT-GPT2, as nlpconnect's vit-gpt2 captioner; BLIP, as Salesforce's BLIP),
exported by the project's export code, give exactly the token ids transformers gives, by greedy and by
beam search, and real photos are prepared as transformers' image processors prepare them."""

import hashlib

import numpy as np
import pytest
import torch
from photos import photos
from test_models import Server
from tiny_captioner import END, SIDE, START, VOCABULARY, tiny_blip, word_tokenizer
from transformers import (
    GPT2Config,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from lookalike.errors import ModelUnavailable
from lookalike.models import RemoteWeights, registry
from lookalike.models.captioners import CaptionWeights, load_captioner
from lookalike.models.captioning import Captioner, export_captioner

# Each architecture: its tiny model, and the image processor its captioner uses.
ARCHITECTURES = {"vit-gpt2": ("tiny_model", ViTImageProcessorPil), "blip": ("tiny_blip", BlipImageProcessorPil)}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def tiny(request, tmp_path_factory):
    model = globals()[ARCHITECTURES[request.param][0]]()
    model.processor = ARCHITECTURES[request.param][1]
    folder = tmp_path_factory.mktemp("captioner")
    export_captioner(model, folder, word_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"))
    return model, Captioner(folder)


def tiny_model() -> VisionEncoderDecoderModel:
    """A random ViT-GPT2 of two layers each (also what bench/caption_generation.py times)."""
    torch.manual_seed(0)
    # Wide initial weights, so that the random model's next-token choices are far apart and vary.
    encoder = ViTConfig(
        image_size=SIDE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, initializer_range=0.5,
    )  # fmt: skip
    decoder = GPT2Config(
        vocab_size=VOCABULARY, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=START, eos_token_id=END,
        add_cross_attention=True, is_decoder=True, initializer_range=0.5,
    )  # fmt: skip
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = START, END, END
    model = VisionEncoderDecoderModel(config=config).eval()
    with torch.no_grad():  # a longer end token's embedding (tied to its output row), so some captions end early
        model.decoder.transformer.wte.weight[END] *= 2.5
    return model


def until_end(tokens: list[int]) -> list[int]:
    """transformers pads a finished caption with the end token: keep it up to the first."""
    return tokens[: tokens.index(END, 1) + 1] if END in tokens[1:] else tokens


@pytest.mark.parametrize("beams", [1, 3])
def test_the_same_tokens_as_transformers_generate(tiny, beams):
    model, captioner = tiny
    pixels = np.random.default_rng(beams).normal(size=(6, 3, SIDE, SIDE)).astype(np.float32)
    options = {"max_new_tokens": 12, "no_repeat_ngram_size": 3}
    with torch.no_grad():
        expected = model.generate(pixel_values=torch.from_numpy(pixels), num_beams=beams, do_sample=False, **options)
    found = captioner.generate(pixels, beams=beams, max_new_tokens=12, no_repeat_ngram=3)
    assert found == [until_end(row) for row in expected.tolist()]
    assert len({token for row in found for token in row}) > 5, found  # the random model does not say one thing
    assert any(row[-1] == END and len(row) < 13 for row in found), found  # some end before 12 new tokens
    assert any(len(row) == 13 for row in found), found  # and some are cut there
    for row in found:  # no three tokens twice
        trigrams = list(zip(row, row[1:], row[2:]))
        assert len(trigrams) == len(set(trigrams)), row


def test_without_the_no_repeat_rule_a_caption_repeats(tiny):
    model, captioner = tiny
    pixels = np.random.default_rng(7).normal(size=(6, 3, SIDE, SIDE)).astype(np.float32)
    with torch.no_grad():
        expected = model.generate(
            pixel_values=torch.from_numpy(pixels), num_beams=1, do_sample=False, max_new_tokens=12
        )
    found = captioner.generate(pixels, beams=1, max_new_tokens=12, no_repeat_ngram=0)
    assert found == [until_end(row) for row in expected.tolist()]
    assert any(len(set(zip(row, row[1:], row[2:]))) < len(row) - 2 for row in found), found


def test_photos_are_prepared_as_transformers_prepares_them_and_captioned(tiny):
    model, captioner = tiny
    images = [photos()[name] for name in ("astronaut", "chelsea", "coffee")]
    reference = model.processor(size={"height": SIDE, "width": SIDE})(images, return_tensors="np")
    pixels = captioner.pixels(images)
    assert pixels.shape == (3, 3, SIDE, SIDE)
    assert np.abs(pixels - reference["pixel_values"]).max() < 1e-5
    with torch.no_grad():
        expected = model.generate(pixel_values=torch.from_numpy(pixels), num_beams=3, max_new_tokens=8,
                                  no_repeat_ngram_size=3, do_sample=False)  # fmt: skip
    words = [" ".join(f"w{t}" for t in until_end(row) if t not in (START, END)) for row in expected.tolist()]
    assert captioner.caption(images, max_new_tokens=8) == words


def test_a_caption_model_downloaded_or_installed_from_a_folder_captions_as_transformers(tmp_path, monkeypatch):
    """The tiny BLIP as transformers saves it, served from a local HTTP server: downloaded, checked,
    exported once, it captions photos as transformers does; installed from a folder instead, the
    same, without the server; a tampered file is refused."""
    model = tiny_blip()
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    word_tokenizer(saved / "tokenizer.json")
    names = ("model.safetensors", "config.json", "tokenizer.json")
    server = Server(saved)
    files = [
        RemoteWeights(f"tiny {name}", server.url(name), sha256_of(saved / name), f"tiny-blip/{name}") for name in names
    ]
    weights = CaptionWeights("tiny-blip", SIDE, *files)
    monkeypatch.setitem(registry.MODELS, "tiny-blip", weights.files)
    images = [photos()[name] for name in ("astronaut", "rocket", "coffee")]
    try:
        captioner = load_captioner(weights, tmp_path / "downloaded", progress=False)
    finally:
        server.close()
    assert sorted(server.requests) == sorted(f"/{name}" for name in names)
    with torch.no_grad():
        expected = model.generate(pixel_values=torch.from_numpy(captioner.pixels(images)), num_beams=3,
                                  max_new_tokens=8, no_repeat_ngram_size=3, do_sample=False)  # fmt: skip
    words = [" ".join(f"w{t}" for t in until_end(row) if t not in (START, END)) for row in expected.tolist()]
    assert captioner.caption(images, max_new_tokens=8) == words
    assert load_captioner(weights, tmp_path / "downloaded").caption(images, max_new_tokens=8) == words  # reused

    registry.install_model("tiny-blip", saved, tmp_path / "installed")  # the server is gone: no download
    assert load_captioner(weights, tmp_path / "installed").caption(images, max_new_tokens=8) == words

    (saved / "config.json").write_text((saved / "config.json").read_text() + " ")
    with pytest.raises(ModelUnavailable, match="wrong sha256"):
        registry.install_model("tiny-blip", saved, tmp_path / "tampered")


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
