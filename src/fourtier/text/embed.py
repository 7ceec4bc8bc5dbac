"""The embed stage's output, written in memory bounded by the batch: captions.jsonl is streamed into an
index of a few integers per row (index_captions), answers are read back from it batch by batch, a giant
answer is cut to what its first max_length tokens need before it is tokenised (TextEncoder.head), and rows
are written in place. load_embeddings opens the arrays as NpyRows, read a batch of rows at a time by
stage 1."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fourtier.data.shards import NpyRows
from fourtier.errors import DataError
from fourtier.text.encoder import TextEncoder, TextEncoderError


@dataclass
class CaptionIndex:
    """What embed keeps of captions.jsonl while it encodes: per distinct non-empty answer (first appearance
    order) where its first row starts in the file and its length in characters, and per non-empty row its
    (video position, prompt column, distinct answer). The answers themselves stay in the file: a 16-byte digest
    per distinct answer and a few integers per row, instead of every row (7.3 KB per clip at K710's size)."""
    videos: list[str]  # in first appearance order
    offsets: np.ndarray  # (T,) int64: byte offset of the first row with distinct answer t
    chars: np.ndarray  # (T,) int64: len(answer) of distinct answer t
    video: np.ndarray  # (R,) int64 per non-empty row: its video's position
    prompt: np.ndarray  # (R,) int64: its prompt's column (PROMPT_IDS order)
    text: np.ndarray  # (R,) int64: its distinct answer
    rows: int  # every row, empty answers included


def index_captions(path: Path) -> CaptionIndex:
    """One streaming pass over captions.jsonl (rows: video_id, prompt_id, answer) into a CaptionIndex."""
    import hashlib
    from array import array

    from fourtier.config.base import PROMPT_IDS

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} not found: run the caption stage first (dvc repro)")
    column = {p: k for k, p in enumerate(PROMPT_IDS)}
    position: dict[str, int] = {}
    distinct: dict[bytes, int] = {}  # digest of the answer -> distinct answer
    offsets, chars, video, prompt, text = array("q"), array("q"), array("q"), array("q"), array("q")
    rows = 0
    with open(path, "rb") as fh:
        offset = 0
        for line_no, line in enumerate(fh, 1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                vid, answer, k = row["video_id"], row["answer"], column[row["prompt_id"]]
                if not isinstance(answer, str):
                    raise TypeError(f"answer is {type(answer).__name__}, not a string")
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path} line {line_no} is not a caption row with video_id, prompt_id "
                                f"({', '.join(PROMPT_IDS)}) and answer ({type(exc).__name__}: {exc}): re-run the "
                                "caption stage") from None
            rows += 1
            i = position.setdefault(vid, len(position))
            if not answer.strip():
                continue
            digest = hashlib.blake2b(answer.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            t = distinct.setdefault(digest, len(distinct))
            if t == len(offsets):  # its first row
                offsets.append(start)
                chars.append(len(answer))
            video.append(i)
            prompt.append(k)
            text.append(t)
    return CaptionIndex(list(position), *(np.frombuffer(a, np.int64) if len(a) else np.zeros(0, np.int64)
                                          for a in (offsets, chars, video, prompt, text)), rows)


def read_answers(path: Path, offsets) -> list[str]:
    """The answers of the rows that start at `offsets` (bytes) in captions.jsonl."""
    out = []
    with open(path, "rb") as fh:
        for offset in offsets:
            fh.seek(int(offset))
            out.append(json.loads(fh.readline())["answer"])
    return out


def embed_captions(captions: Path, out_dir: Path, encoder: TextEncoder, batch_size: int, max_tokens: int) -> dict | None:
    """Encode every answer of the caption stage's captions.jsonl at `captions`; write tokens.npy (N,4,L,D),
    mask.npy (N,4,L), pooled.npy (N,4,P) in float16.

    Token-level embeddings are kept for the first `max_tokens` tokens; the pooled vector is computed over
    the whole answer (up to the encoder's max length). Videos are in caption order, prompts in A-D order.
    The rows are streamed (index_captions), each distinct answer is read back from the file when its batch is
    encoded, and rows are written in place as they come: memory is bounded by the batch and an index of a few
    integers per row. Under torchrun rank r encodes batches r, r + W, ... of the batches one process encodes,
    and writes its rows in place: the same bytes. Rank 0 writes the metadata and returns it; the other ranks
    return None.
    """

    from tqdm import tqdm

    from fourtier.config.base import PROMPT_IDS
    from fourtier.data.shards import NpyFile
    from fourtier.runtime import distributed

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = index_captions(captions)
    n, d, p = len(index.videos), encoder.token_dim, encoder.pooled_dim
    # written in place, row by row: memory stays bounded by the batch (zeros where nothing is written)
    shapes = {"tokens": ((n, len(PROMPT_IDS), max_tokens, d), np.float16), "mask": ((n, len(PROMPT_IDS), max_tokens), np.bool_),
              "pooled": ((n, len(PROMPT_IDS), p), np.float16)}
    if distributed.is_main():
        arrays = {name: NpyFile(out_dir / f"{name}.npy", *spec) for name, spec in shapes.items()}
    distributed.barrier()
    if not distributed.is_main():
        arrays = {name: NpyFile.open(out_dir / f"{name}.npy", *spec) for name, spec in shapes.items()}
    tokens, mask, pooled = arrays["tokens"], arrays["mask"], arrays["pooled"]
    # templated answers repeat (a third of the default corpus): encode each distinct text once; rows_of[t]:
    # the rows of distinct answer t, in file order
    by_text = np.argsort(index.text, kind="stable")
    bounds = np.searchsorted(index.text[by_text], np.arange(len(index.offsets) + 1))
    texts = np.argsort(index.chars, kind="stable")  # similar lengths per batch: less padding
    truncated = 0  # answers longer than max_tokens: their token-level e_i lose the end
    lengths = {p: [] for p in PROMPT_IDS}  # tokens per answer (up to the encoder's max length), per prompt
    rank, world = distributed.rank(), distributed.world()
    with tqdm(total=len(texts), desc="embed", unit="text", dynamic_ncols=True, mininterval=1.0,
              disable=not distributed.is_main()) as bar:
        for start in range(rank * batch_size, len(texts), world * batch_size):
            batch = texts[start:start + batch_size]
            enc = encoder.encode(read_answers(captions, index.offsets[batch]))
            length = min(max_tokens, enc.tokens.shape[1])
            for j, (t, answer_tokens) in enumerate(zip(batch, enc.mask.sum(1).tolist())):
                for r in by_text[bounds[t]:bounds[t + 1]]:
                    i, k = int(index.video[r]), int(index.prompt[r])
                    lengths[PROMPT_IDS[k]].append(answer_tokens)
                    truncated += answer_tokens > max_tokens
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
    (out_dir / "videos.txt").write_text("".join(f"{v}\n" for v in index.videos))
    meta = {"encoder": encoder.name, "model": encoder.model_id, "token_dim": d, "pooled_dim": p,
            "max_tokens": max_tokens, "truncated_answers": truncated,
            "answer_tokens": {p: {"median": float(np.median(n)), "max": int(max(n))} for p, n in lengths.items() if n},
            "prompts": list(PROMPT_IDS), "videos": n, "texts": len(index.text),
            "distinct_texts": len(texts),
            "missing_answers": index.rows - len(index.text)}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


@dataclass
class Embeddings:
    videos: list[str]
    tokens: NpyRows  # (N, 4, L, D) float16, read by row
    mask: NpyRows  # (N, 4, L) bool
    pooled: NpyRows  # (N, 4, P) float16
    meta: dict


def load_embeddings(out_dir: Path) -> Embeddings:
    """The embed stage's arrays, opened to be read a batch of rows at a time (NpyRows)."""
    out_dir = Path(out_dir)
    if not (out_dir / "meta.json").exists():
        raise TextEncoderError(f"{out_dir} has no embeddings: run the embed stage first (dvc repro)")
    return Embeddings(videos=(out_dir / "videos.txt").read_text().splitlines(),
                      tokens=NpyRows(out_dir / "tokens.npy"),
                      mask=NpyRows(out_dir / "mask.npy"),
                      pooled=NpyRows(out_dir / "pooled.npy"),
                      meta=json.loads((out_dir / "meta.json").read_text()))


def read_captions(path: Path) -> list[dict]:
    """The caption stage's captions.jsonl: one row per (video, prompt) with its answer."""
    if not Path(path).exists():
        raise DataError(f"{path} not found: run the caption stage first (dvc repro)")
    with open(path) as fh:
        return [json.loads(line) for line in fh]
