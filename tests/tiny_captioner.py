"""A tiny random BLIP (two layers, a 40-word vocabulary of "w2".."w39"), the captioner the tests run:
no captioning weights can be downloaded here, so the engines' code runs on this model of BLIP's
architecture, built with transformers, exported and loaded by the project's own code. What its
captions say means nothing; that they are what the exported model generates is what it tests."""

import hashlib
from pathlib import Path

from tokenizers import Tokenizer, models

from lookalike.models import RemoteWeights
from lookalike.models.captioners import CAPTION_MODELS, CaptionWeights
from lookalike.models.download import install_file

START, END = 0, 1
SIDE = 32
VOCABULARY = 40
NAME = "tiny-blip"
FILES = ("model.safetensors", "config.json", "tokenizer.json")


def tiny_blip():
    """A random BLIP of two layers each; its decoder starts from bos and ends at sep, as BLIP's does."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration

    torch.manual_seed(0)
    config = BlipConfig(
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": SIDE, "patch_size": 8, "initializer_range": 0.5,
        },
        text_config={
            "vocab_size": VOCABULARY, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 64, "encoder_hidden_size": 32,
            "bos_token_id": START, "sep_token_id": END, "pad_token_id": 2, "eos_token_id": 3,
            "initializer_range": 0.5,
        },
    )  # fmt: skip
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():  # some captions end early
        model.text_decoder.cls.predictions.bias[END] += 1.5
    return model


def word_tokenizer(path: Path) -> Path:
    """A tokenizer of the tiny vocabulary: the start and end tokens, then words w2, w3, ..."""
    words = {"[START]": START, "[END]": END} | {f"w{i}": i for i in range(2, VOCABULARY)}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="w2"))
    tokenizer.add_special_tokens(["[START]", "[END]"])
    tokenizer.save(str(path))
    return path


def saved_tiny_blip(folder: Path) -> Path:
    """The tiny BLIP as transformers saves it (what a download of a captioner's repository holds)."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_blip().save_pretrained(folder)
    word_tokenizer(folder / "tokenizer.json")
    return folder


def weights_of(saved: Path, url_of=lambda name: f"http://127.0.0.1:9/{name}") -> CaptionWeights:
    """Registry entries for the saved files, served at `url_of(name)` (by default, nowhere)."""
    files = [
        RemoteWeights(f"{NAME} {name}", url_of(name), hashlib.sha256((saved / name).read_bytes()).hexdigest(),
                      f"{NAME}/{name}", (saved / name).stat().st_size)
        for name in FILES
    ]  # fmt: skip
    return CaptionWeights(NAME, SIDE, *files)


def install_tiny_captioner(saved: Path, models_dir: Path) -> str:
    """Register the tiny BLIP as caption model NAME, its files installed in models_dir; its name."""
    weights = weights_of(saved)
    for file in weights.files:
        install_file(file, saved / Path(file.filename).name, models_dir)
    CAPTION_MODELS[NAME] = weights
    return NAME
