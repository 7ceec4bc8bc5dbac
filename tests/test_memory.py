"""embed and align in memory bounded by the batch (issue 24): embed streams captions.jsonl and writes what each
batch encodes; align reads the text embeddings a batch at a time (NpyRows, PooledTargets). Each test checks the
bounded path against what the whole-array path gives, value for value."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from fourtier.config.base import OptimSettings, PROMPT_IDS
from fourtier.data.shards import NpyRows
from fourtier.errors import DataError
from fourtier.models.ftp import FTP, FTPConfig
from fourtier.text.embed import embed_captions, index_captions
from fourtier.text.encoder import make_encoder
from fourtier.train.align import train_alignment
from fourtier.train.losses import caption_groups
from fourtier.train.targets import PooledTargets
from helpers import REPO, ArraySource


@pytest.fixture(scope="module")
def encoder():
    from fourtier.config.base import load_params

    params = load_params(path=REPO / "params.yaml")
    return make_encoder(params.text_encoder, params.text_encoders, 24, "cpu")  # short max_length: head() cuts soon


def write_captions(path, answers: dict) -> None:
    path.write_text("".join(json.dumps({"video_id": v, "prompt_id": p, "answer": a, "vlm": "builtin"}) + "\n"
                            for (v, p), a in answers.items()))


def test_embed_writes_each_row_as_its_answer_encodes_alone(encoder, tmp_path):
    """batch_size 1: every row's arrays are exactly its answer encoded on its own (repeats, empty answers and
    a long answer included), in caption order, with the counts of meta.json."""
    words = ["a red ball rolls left", "someone waves", "", "the scene is a kitchen", "  ", "jumping"]
    answers = {(f"v{i}", p): words[(i + j) % len(words)] for i in range(4) for j, p in enumerate(PROMPT_IDS)}
    answers[("v9", "B")] = "a ball and a box " * 40  # beyond max_length tokens
    write_captions(tmp_path / "captions.jsonl", answers)
    meta = embed_captions(tmp_path / "captions.jsonl", tmp_path / "out", encoder, batch_size=1, max_tokens=6)
    videos = (tmp_path / "out" / "videos.txt").read_text().split()
    assert videos == ["v0", "v1", "v2", "v3", "v9"]
    tokens, mask, pooled = (np.load(tmp_path / "out" / f"{n}.npy") for n in ("tokens", "mask", "pooled"))
    for (v, p), answer in answers.items():
        i, k = videos.index(v), PROMPT_IDS.index(p)
        if not answer.strip():
            assert not mask[i, k].any() and not pooled[i, k].any() and not tokens[i, k].any()
            continue
        alone = encoder.encode([answer])
        n = min(6, alone.tokens.shape[1])
        assert np.array_equal(tokens[i, k, :n], alone.tokens[0, :n].astype(np.float16))
        assert np.array_equal(mask[i, k, :n], alone.mask[0, :n]) and not mask[i, k, n:].any()
        assert np.array_equal(pooled[i, k], alone.pooled[0].astype(np.float16))
    assert not pooled[videos.index("v9"), PROMPT_IDS.index("A")].any()  # v9 has no row for A
    filled = [a for a in answers.values() if a.strip()]
    assert (meta["texts"], meta["distinct_texts"], meta["missing_answers"]) == (len(filled), len(set(filled)), 6)
    assert meta["truncated_answers"] == sum(len(encoder.encode([a]).mask[0].nonzero()[0]) > 6 for a in filled)


def test_head_reads_the_first_max_length_tokens_of_a_giant_answer(encoder):
    text = "A red ball\tis rolling   left,\nand someone waves at it. " * 400
    head = encoder.head(text)
    assert len(head) < len(text) // 20
    tok = encoder.tokenizer
    assert tok(head, truncation=True, max_length=24)["input_ids"] == tok(text, truncation=True, max_length=24)["input_ids"]
    short = "a ball " * 3
    assert encoder.head(short) == short


EMBED_RSS = """
import json, resource, sys
from pathlib import Path
import torch
from fourtier.config.base import load_params
from fourtier.text.embed import embed_captions
from fourtier.text.encoder import make_encoder

torch.set_num_threads(1)
params = load_params(path=sys.argv[1])
encoder = make_encoder(params.text_encoder, params.text_encoders, params.embed.max_length, "cpu")
tmp = Path(sys.argv[2])
embed_captions(tmp / "small.jsonl", tmp / "small", encoder, 8, 4)  # warm: the model's own memory
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
embed_captions(tmp / "giant.jsonl", tmp / "giant", encoder, 8, 4)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_embed_peak_does_not_follow_the_longest_answer(tmp_path):
    """A 2 MB answer: the tokenizer would hold ~350 MB for it whole; embed reads its first max_length tokens."""
    small = {(f"v{i}", p): f"a ball rolls {i} {p}" for i in range(3) for p in PROMPT_IDS}
    write_captions(tmp_path / "small.jsonl", small)
    write_captions(tmp_path / "giant.jsonl", {**small, ("v0", "B"): "a red ball rolls to the left. " * 70_000})
    script = tmp_path / "rss.py"
    script.write_text(EMBED_RSS)
    done = subprocess.run([sys.executable, str(script), str(REPO / "params.yaml"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    growth_mb = float(done.stdout.split()[-1])
    assert growth_mb < 100, f"peak RSS grew {growth_mb:.0f} MB for one 2 MB answer"


def test_bad_caption_rows_are_a_clear_error(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text(json.dumps({"video_id": "v0", "prompt_id": "A", "answer": "ok"}) + "\n"
                    + json.dumps({"video_id": "v0", "prompt_id": "Z", "answer": "ok"}) + "\n")
    with pytest.raises(DataError, match="line 2 .*prompt_id"):
        index_captions(path)
    with pytest.raises(DataError, match="run the caption stage"):
        index_captions(tmp_path / "missing.jsonl")


def test_npy_rows_reads_what_numpy_indexing_reads(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(9, 4, 6, 3)).astype(np.float16)
    mask = rng.random((9, 4, 6)) > 0.5
    np.save(tmp_path / "tokens.npy", tokens)
    np.save(tmp_path / "mask.npy", mask)
    t, m = NpyRows(tmp_path / "tokens.npy"), NpyRows(tmp_path / "mask.npy")
    rows = np.array([8, 0, 3, 3, 5])
    assert t.shape == tokens.shape and len(t) == 9
    assert np.array_equal(t[rows], tokens[rows]) and np.array_equal(t[2:7], tokens[2:7])
    assert np.array_equal(t[rows, 2], tokens[rows, 2]) and np.array_equal(t[rows, 1, :4], tokens[rows, 1, :4])
    assert np.array_equal(m[rows, 3], mask[rows, 3]) and np.array_equal(m[rows, 0, :2], mask[rows, 0, :2])
    with pytest.raises(IndexError):
        t[np.array([9])]
    with pytest.raises(IndexError):
        t[rows, 4]


def test_pooled_targets_give_the_whole_arrays_embeddings_and_groups(tmp_path):
    """Per batch, the unit vectors (same bytes, same strides) that normalising the whole array and indexing it
    gave; groups with caption_groups' partition, also through permuted rows (the shuffled control)."""
    rng = np.random.default_rng(1)
    pooled = rng.normal(size=(300, 4, 16)).astype(np.float16)
    pooled[7] = pooled[3]
    pooled[100, 1] = pooled[5, 1]
    np.save(tmp_path / "pooled.npy", pooled)
    rows = rng.permutation(300)
    targets = PooledTargets(NpyRows(tmp_path / "pooled.npy"), rows)
    for cols in ([0, 1, 2, 3], [1, 3]):
        whole = torch.nn.functional.normalize(torch.from_numpy(np.asarray(pooled[rows][:, cols], dtype=np.float32)), dim=-1)
        idx = rng.permutation(300)[:64]
        for got, expected in zip(targets.batch(idx, cols, torch.device("cpu")), whole[idx].unbind(1)):
            assert torch.equal(got, expected) and got.stride() == expected.stride()
    for col in range(4):
        a, b = caption_groups(pooled[rows, col]), targets.groups(col, chunk=32)
        assert np.array_equal(a[:, None] == a[None, :], b[:, None] == b[None, :])
    clip_of = np.argsort(rows)  # the clip that reads embeddings row r
    groups = targets.groups(1)
    assert groups[clip_of[5]] == groups[clip_of[100]] and groups[clip_of[5]] != groups[clip_of[6]]


def test_align_from_the_file_trains_the_weights_of_the_in_memory_array(tmp_path):
    """Stage 1 on PooledTargets over the embed stage's file (rows permuted, as align.py maps clips to rows) ends
    with the very weights and retrieval of stage 1 on the array the old align held in memory."""
    T, H, W, D, P, n = 2, 3, 3, 8, 6, 60
    rng = np.random.default_rng(0)
    m = rng.normal(size=(n, 1, T, H, W, D)).astype(np.float32)
    pooled = rng.normal(size=(n, 4, P)).astype(np.float16)
    pooled[4] = pooled[9]  # a repeated answer: one group
    np.save(tmp_path / "pooled.npy", pooled)
    rows = rng.permutation(n)
    settings = OptimSettings(3, 16, 1e-2, 0.0, (0.9, 0.95), 1)
    results = []
    for targets in (pooled[rows], PooledTargets(NpyRows(tmp_path / "pooled.npy"), rows)):
        torch.manual_seed(0)
        model = FTP(FTPConfig(D, (T, H, W), ["A", "C"], n_classes=1, text_dim=P))
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        metrics = train_alignment(model, ArraySource(m), np.arange(45), np.arange(45, n), targets, settings, seed=0)
        results.append((metrics, model.state_dict()))
    (m0, s0), (m1, s1) = results
    assert m0 == m1
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)
    assert any(not torch.equal(s0[k], v) for k, v in initial.items())  # it trained


FREED_BLOCKS = r"""
import ctypes, sys
if sys.argv[1] == "fourtier":
    import fourtier.runtime.hardware  # fixes glibc's mmap threshold on import
libc = ctypes.CDLL("libc.so.6")  # malloc itself, as torch's CPU allocator calls it
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

def touched(size):
    block = libc.malloc(size)
    libc.memset(block, 1, size)
    return block

# fill the heap's holes first, so that the small blocks below come from its top, after each large one (with
# holes left by start-up, which depend on as little as this script's length, they would not pin anything)
holes = [touched(256) for _ in range(20000)]
before = anon_mb()
libc.free(touched(16 << 20))  # freeing a 16 MiB block raises glibc's dynamic threshold to 16 MiB
blocks, small = [], []
for _ in range(40):  # 240 MiB in 6 MiB blocks (a batch's tensors), a live small allocation after each
    blocks.append(touched(6 << 20))
    small.append(touched(256))
for block in blocks:
    libc.free(block)
print(anon_mb() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_freed_batch_sized_blocks_go_back_to_the_system(tmp_path):
    """After a large block is freed glibc takes later blocks of that size from the heap, which small live
    allocations pin: freed batches then stay resident and a stage's peak grows with its corpus. With
    fourtier.runtime.hardware imported (every stage that runs a network) the 6 MiB blocks are mapped on their own and
    given back when freed."""
    def kept_mb(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", FREED_BLOCKS, mode], capture_output=True, text=True, check=True)
        return float(out.stdout.split()[-1])

    assert kept_mb("glibc") > 150  # the premise: glibc's dynamic threshold keeps them
    assert kept_mb("fourtier") < 40


TRIMMED = FREED_BLOCKS.replace('if sys.argv[1] == "fourtier":\n    import fourtier.runtime.hardware  # fixes',
                               'import fourtier.runtime.heap as heap  # fixes').replace(
    "print(anon_mb() - before)", "kept = anon_mb() - before\nheap.release_free_heap()\nprint(kept, anon_mb() - before)"
).replace("touched(6 << 20)", "touched(1 << 20)").replace("range(40)", "range(240)")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_free_heap_pages_go_back_to_the_system_between_batches():
    """Blocks below the mmap threshold (1 MiB, a decoded batch's pieces) come from the heap; freed between small
    live allocations they stay resident, which made the features stage's peak grow with its number of batches.
    release_free_heap (after every batch of features, every chunk of caption) gives those pages back."""
    out = subprocess.run([sys.executable, "-c", TRIMMED], capture_output=True, text=True, check=True)
    kept, after = map(float, out.stdout.split()[-2:])
    assert kept > 150  # the premise: 240 MiB freed, still resident
    assert after < 40
