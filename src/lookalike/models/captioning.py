"""Captions on ONNX Runtime: a vision encoder run once per image, then a text decoder run token by token
on its own cached keys and values, by greedy or beam search.

`export_captioner` writes a transformers `VisionEncoderDecoderModel` (a ViT-like encoder and a GPT-2-like
decoder with cross-attention, as nlpconnect's vit-gpt2 captioner is) or a `BlipForConditionalGeneration`
(a ViT and a BERT-like decoder with cross-attention, as Salesforce's BLIP captioners are) as two graphs:
- encoder.onnx: pixel_values (n, 3, side, side) -> last_hidden_state (n, patches, width);
- decoder.onnx: input_ids and position_ids (n, t), encoder_hidden_states, and each layer's past
  self-attention keys and values (n, heads, p, head width) -> logits (n, t, vocabulary) and the
  present keys and values (n, heads, p + t, head width). Positions are inputs, since a traced graph
  would keep the ones it was traced with; the cross-attention's keys and values are computed again
  each step from encoder_hidden_states, which keeps the graph to one kind of cache.

The search follows transformers' `generate` (5.x) step for step, so that the same model gives the same
tokens: greedy takes the best token after the logits processors; beam search keeps, per image, the
2 x beams best continuations of the running beams' summed log probabilities, finishes those that end
with the end token among the first `beams` (their score divided by their length), continues the best
`beams` others, and stops once no running beam can beat the worst finished one; no n-gram of
`no_repeat_ngram` tokens repeats.
"""

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .clip import OPENAI_MEAN, OPENAI_STD
from .runtime import open_session

SETTINGS_FILE = "captioner.json"
TOKENIZER_FILE = "tokenizer.json"
UNREACHABLE = -1.0e9  # transformers' score for beams that may not be chosen


@dataclass(frozen=True)
class CaptionerSettings:
    """What the search needs to know of the decoder graph and its vocabulary, and how images are
    prepared for the encoder (as transformers' image processors do: squashed to side x side, scaled
    to [0, 1], normalised)."""

    layers: int
    heads: int
    head_width: int
    start_id: int  # the token every caption starts from
    end_id: int
    pad_id: int
    side: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resample: str = "bilinear"  # or "bicubic", as the model's image processor resizes


def export_captioner(model, folder: Path, tokenizer: Path) -> CaptionerSettings:
    """Write `model` (a transformers VisionEncoderDecoderModel or BlipForConditionalGeneration) as
    encoder.onnx and decoder.onnx, beside its `tokenizer` (a tokenizers tokenizer.json) and the
    settings the search reads."""
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    model = model.eval()
    parts = ARCHITECTURES[model.config.model_type](model)
    config = parts.text_config
    settings = CaptionerSettings(
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        head_width=config.hidden_size // config.num_attention_heads,
        **parts.settings,
    )

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision = parts.vision  # a submodule, so its weights are the graph's, not constants

        def forward(self, pixel_values):
            return parts.see(self.vision, pixel_values)

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text = parts.text

        def forward(self, input_ids, position_ids, encoder_hidden_states, *past):
            cache = DynamicCache()
            for layer in range(settings.layers):
                cache.update(past[2 * layer], past[2 * layer + 1], layer)
            cache = EncoderDecoderCache(cache, DynamicCache())
            logits, cache = parts.read(self.text, input_ids, position_ids, encoder_hidden_states, cache)
            present = cache.self_attention_cache.layers
            return (logits, *(tensor for layer in present for tensor in (layer.keys, layer.values)))

    folder.mkdir(parents=True, exist_ok=True)
    pixels = torch.zeros(2, 3, settings.side, settings.side)
    with torch.no_grad():
        # Evaluation mode, as the model is: export hands the wrapper's mode back to it, and so to the model.
        torch.onnx.export(
            Encoder().eval(),
            (pixels,),
            folder / "encoder.onnx",
            input_names=["pixel_values"],
            output_names=["last_hidden_state"],
            dynamic_axes={"pixel_values": {0: "n"}, "last_hidden_state": {0: "n"}},
            dynamo=False,
        )
        hidden = parts.see(parts.vision, pixels)
        past = [torch.zeros(2, settings.heads, 0, settings.head_width) for _ in range(2 * settings.layers)]
        steps = torch.zeros(2, 1, dtype=torch.int64)
        torch.onnx.export(
            Decoder().eval(),
            (steps, steps, hidden, *past),
            folder / "decoder.onnx",
            input_names=["input_ids", "position_ids", "encoder_hidden_states", *_names("past", settings)],
            output_names=["logits", *_names("present", settings)],
            dynamic_axes={
                "input_ids": {0: "n", 1: "t"},
                "position_ids": {0: "n", 1: "t"},
                "encoder_hidden_states": {0: "n"},
                "logits": {0: "n", 1: "t"},
                **{name: {0: "n", 2: "p"} for name in _names("past", settings)},
                **{name: {0: "n", 2: "p + t"} for name in _names("present", settings)},
            },
            dynamo=False,
        )
    shutil.copyfile(tokenizer, folder / TOKENIZER_FILE)
    (folder / SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=1))
    return settings


class _VitGpt2:
    """A transformers VisionEncoderDecoderModel: a ViT-like encoder, a GPT-2-like decoder."""

    def __init__(self, model):
        self.vision, self.text, self.text_config = model.encoder, model.decoder, model.config.decoder
        config = model.config
        self.settings = {
            "start_id": config.decoder_start_token_id,
            "end_id": config.eos_token_id,
            "pad_id": config.pad_token_id,
            "side": config.encoder.image_size,
        }

    @staticmethod
    def see(vision, pixel_values):
        return vision(pixel_values=pixel_values).last_hidden_state

    @staticmethod
    def read(text, input_ids, position_ids, hidden, cache):
        out = text(
            input_ids=input_ids,
            position_ids=position_ids,
            cache_position=position_ids[0],
            encoder_hidden_states=hidden,
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits, out.past_key_values


class _Blip:
    """A transformers BlipForConditionalGeneration, as its `generate` runs it: the text decoder starts
    from the bos token ([DEC]) and ends at the sep token ([SEP])."""

    def __init__(self, model):
        self.vision, self.text, self.text_config = model.vision_model, model.text_decoder, model.config.text_config
        self.settings = {
            "start_id": self.text_config.bos_token_id,
            "end_id": self.text_config.sep_token_id,
            "pad_id": self.text_config.pad_token_id,
            "side": model.config.vision_config.image_size,
            "mean": OPENAI_MEAN,
            "std": OPENAI_STD,
            "resample": "bicubic",
        }

    @staticmethod
    def see(vision, pixel_values):
        return vision(pixel_values=pixel_values)[0]

    @staticmethod
    def read(text, input_ids, position_ids, hidden, cache):
        out = text(
            input_ids=input_ids, position_ids=position_ids, encoder_hidden_states=hidden, cache=cache, use_cache=True
        )
        return out.logits, out.cache


ARCHITECTURES = {"vision-encoder-decoder": _VitGpt2, "blip": _Blip}


def _names(kind: str, settings: CaptionerSettings) -> list[str]:
    return [f"{kind}.{layer}.{part}" for layer in range(settings.layers) for part in ("key", "value")]


class Captioner:
    """Captions of images, from an exported encoder, decoder and tokenizer (`export_captioner`)."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        settings = json.loads((folder / SETTINGS_FILE).read_text())
        self.settings = CaptionerSettings(**settings | {key: tuple(settings[key]) for key in ("mean", "std")})
        self._encoder = open_session(folder / "encoder.onnx")
        self._decoder = open_session(folder / "decoder.onnx")
        self._tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))

    def caption(self, images: list[Image.Image], beams: int = 3, max_new_tokens: int = 30) -> list[str]:
        """One caption per image: beam search, no trigram twice."""
        tokens = self.generate(self.pixels(images), beams, max_new_tokens)
        end = self.settings.end_id
        words = [row[1:-1] if row[-1] == end else row[1:] for row in tokens]  # without the start and end tokens
        return [text.strip() for text in self._tokenizer.decode_batch(words, skip_special_tokens=True)]

    def pixels(self, images: list[Image.Image]) -> np.ndarray:
        """(n, 3, side, side) float32, as the encoder was trained to see images."""
        side = self.settings.side
        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[self.settings.resample]
        squashed = [np.asarray(image.convert("RGB").resize((side, side), resample)) for image in images]
        scaled = np.stack(squashed).astype(np.float32) / 255.0
        normalised = (scaled - np.float32(self.settings.mean)) / np.float32(self.settings.std)
        return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2), np.float32)

    def generate(
        self, pixel_values: np.ndarray, beams: int = 3, max_new_tokens: int = 30, no_repeat_ngram: int = 3
    ) -> list[list[int]]:
        """Each image's tokens, from the start token to the end token (or max_new_tokens later)."""
        (hidden,) = self._encoder.run(None, {"pixel_values": pixel_values.astype(np.float32)})
        if beams == 1:
            return _greedy(self, hidden, max_new_tokens, no_repeat_ngram)
        return _beam_search(self, hidden, beams, max_new_tokens, no_repeat_ngram)

    def step(self, tokens: np.ndarray, hidden: np.ndarray, past: list[np.ndarray] | None) -> tuple:
        """The next token's logits for each row of `tokens` (all decoded but the last already in
        `past`), and the keys and values to pass next time."""
        known = 0 if past is None else past[0].shape[2]
        new = tokens[:, known:]
        if past is None:
            shape = (len(tokens), self.settings.heads, 0, self.settings.head_width)
            past = [np.zeros(shape, np.float32)] * (2 * self.settings.layers)
        positions = np.broadcast_to(np.arange(known, tokens.shape[1]), new.shape)
        feed = {"input_ids": new, "position_ids": np.ascontiguousarray(positions), "encoder_hidden_states": hidden}
        logits, *present = self._decoder.run(None, feed | dict(zip(_names("past", self.settings), past)))
        return logits[:, -1].astype(np.float32), present


def _greedy(captioner: Captioner, hidden, max_new_tokens: int, no_repeat_ngram: int) -> list[list[int]]:
    settings = captioner.settings
    tokens = np.full((len(hidden), 1), settings.start_id, np.int64)
    running = np.ones(len(hidden), bool)
    past = None
    for _ in range(max_new_tokens):
        logits, past = captioner.step(tokens, hidden, past)
        chosen = np.argmax(_no_repeats(logits, tokens, no_repeat_ngram), axis=1)
        chosen = np.where(running, chosen, settings.pad_id)
        tokens = np.concatenate([tokens, chosen[:, None]], axis=1)
        running &= chosen != settings.end_id
        if not running.any():
            break
    return [_until_end(row, settings.end_id) for row in tokens]


def _beam_search(captioner: Captioner, hidden, beams: int, max_new_tokens: int, no_repeat_ngram: int) -> list:
    """transformers' beam search (length penalty 1, its early-stop heuristic), every image's beams in one
    batch through the decoder; an image whose search is over leaves the batch."""
    settings = captioner.settings
    images = np.arange(len(hidden))  # those still searching, in the batch's order
    hidden = np.repeat(hidden, beams, axis=0)
    running = np.full((len(hidden), 1), settings.start_id, np.int64)
    running_scores = np.tile(np.array([0.0] + [UNREACHABLE] * (beams - 1), np.float32), len(images))
    finished: list[list[tuple[float, np.ndarray]]] = [[] for _ in images]  # each image's best `beams` so far
    found: list[list[int]] = [[] for _ in images]
    past = None
    for step in range(max_new_tokens):
        logits, past = captioner.step(running, hidden, past)
        vocabulary = logits.shape[1]
        log_probs = _no_repeats(_log_softmax(logits), running, no_repeat_ngram) + running_scores[:, None]
        flat = log_probs.reshape(len(images), beams * vocabulary)
        best = np.argsort(-flat, axis=1, kind="stable")[:, : 2 * beams]
        origin, token = np.divmod(best, vocabulary)
        rows = origin + beams * np.arange(len(images))[:, None]  # each candidate's row in the batch
        scores = np.take_along_axis(flat, best, axis=1)
        ends = (token == settings.end_id) | (step + 1 == max_new_tokens)
        candidates = np.concatenate([running[rows], token[..., None]], axis=2)
        length = candidates.shape[2] - 1  # without the start token, as transformers counts it
        going = np.argsort(-(scores + ends * UNREACHABLE), axis=1, kind="stable")[:, :beams]
        going_scores = np.take_along_axis(scores + ends * UNREACHABLE, going, axis=1).astype(np.float32)
        searching = []
        for position, image in enumerate(images):
            done = finished[image]
            done += [(float(scores[position, rank]) / length, candidates[position, rank]) for rank in
                     np.flatnonzero(ends[position, :beams])]  # fmt: skip
            finished[image] = done = sorted(done, key=lambda hypothesis: -hypothesis[0])[:beams]
            if (len(done) == beams and going_scores[position, 0] / length <= done[-1][0]) or ends[position].all():
                found[image] = _until_end(done[0][1], settings.end_id)
            else:
                searching.append(position)
        if not searching:
            break
        kept = np.concatenate([rows[position, going[position]] for position in searching])
        running = np.concatenate([candidates[position, going[position]] for position in searching])
        running_scores = going_scores[searching].ravel()
        past = [layer[kept] for layer in past]
        hidden = hidden[kept]
        images = images[searching]
    return found


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _no_repeats(scores: np.ndarray, tokens: np.ndarray, size: int) -> np.ndarray:
    """`scores` with -inf for each token that would repeat an n-gram of `size` tokens of its row."""
    if size <= 0 or tokens.shape[1] + 1 < size:
        return scores
    scores = scores.copy()
    for row, seen in enumerate(tokens.tolist()):
        prefix = tuple(seen[len(seen) - size + 1 :])
        banned = [seen[i + size - 1] for i in range(len(seen) - size + 1) if tuple(seen[i : i + size - 1]) == prefix]
        scores[row, banned] = -np.inf
    return scores


def _until_end(tokens: np.ndarray, end_id: int) -> list[int]:
    ends = np.flatnonzero(tokens[1:] == end_id)
    return tokens[: ends[0] + 2].tolist() if len(ends) else tokens.tolist()
