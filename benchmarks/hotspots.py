"""Where the default run's CPU time goes, per unit of work (2 threads unless said; machine otherwise idle):

    python benchmarks/hotspots.py      # after dvc repro (real tiles and answers); about 2 minutes

1. a stage-2 training step of the default FTP model (m of the default backbone's shape, the default processor,
   prompts A-D) per clip, at batch
   8, 32 and 128: constant per clip means compute-bound, where batching more runs together cannot help; and
   the share of the step's CPU time in attention and in dropout's random draws (torch.profiler);
2. the builtin describer: milliseconds of image analysis per tile (one process);
3. SynthAct: milliseconds to render a clip and to encode it with libx264 (one process);
4. MiniLM (embed): texts per second on the shortest and the longest tenth of the corpus's distinct answers,
   and the share of its time in linear layers.
"""
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from fourtier import paths
from fourtier.caption.backend import decode_tile
from fourtier.caption.builtin import describe
from fourtier.config.base import PROMPT_IDS, load_params
from fourtier.data.store import ItemReader
from fourtier.data.synthact import encode_mp4, plan, render
from fourtier.models.ftp import FTP, FTPConfig
from fourtier.runtime.plan import view_shape
from fourtier.text.embed import read_captions
from fourtier.text.encoder import make_encoder
from fourtier.video.tiling import read_tile_index


def step_fn(batch: int):
    """One stage-2 training step of the default model (m of the default backbone's shape, its processor)."""
    params = load_params()
    return stage2_step(view_shape(params)[0], list(PROMPT_IDS), params.align.processor, batch)


def stage2_step(shape: tuple[int, int, int, int], prompts: list[str], processor: str, batch: int):
    """A callable that runs one stage-2 training step (forward, cross-entropy, backward, AdamW) on random m of
    `shape` per clip: only the parts stage 2 trains get gradients, as in finetune."""
    t, h, w, d = shape
    torch.manual_seed(0)
    model = FTP(FTPConfig(d, (t, h, w), prompts, n_classes=10, processor=processor)).train()
    model.requires_grad_(False)
    for p in model.stage2_parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.stage2_parameters(), 1e-3)
    m, y = torch.randn(batch, t, h, w, d), torch.randint(10, (batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(m), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def stage2() -> None:
    for batch in (8, 32, 128):
        step = step_fn(batch)
        for _ in range(3):
            step()
        n = max(5, 640 // batch)
        start = time.perf_counter()
        for _ in range(n):
            step()
        print(f"1. stage-2 step, batch {batch}: {1000 * (time.perf_counter() - start) / n / batch:.2f} ms per clip",
              flush=True)
    step = step_fn(32)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    attention = sum(e.self_cpu_time_total for e in events if "attention" in e.key)
    dropout = sum(e.self_cpu_time_total for e in events if "bernoulli" in e.key)
    print(f"1. stage-2 step, batch 32: {100 * attention / total:.0f}% of CPU time in attention, "
          f"{100 * dropout / total:.0f}% in dropout's random draws", flush=True)


def describer(n: int = 60) -> None:
    tiles = paths.tiles(load_params().pretrain[0])
    rows = [r for r in read_tile_index(tiles) if r["status"] == "ok"][:n]
    reader = ItemReader(tiles)
    jpegs = [reader.get(r["location"]) for r in rows]
    reader.close()
    start = time.perf_counter()
    for i, jpeg in enumerate(jpegs):
        describe(decode_tile(jpeg), 5, PROMPT_IDS, key=str(i))
    print(f"2. builtin describer: {1000 * (time.perf_counter() - start) / len(jpegs):.0f} ms per tile", flush=True)


def synthact(n: int = 40, tmp: str = "/tmp") -> None:
    clips = plan("pretrain", 0, n, 0.0, 0, 0)
    start = time.perf_counter()
    frames = [render(c) for c in clips]
    rendered = time.perf_counter() - start
    start = time.perf_counter()
    for i, (f, c) in enumerate(zip(frames, clips)):
        encode_mp4(f, c.fps, c.crf, f"{tmp}/fourtier-hotspots-{i}.mp4")
    encoded = time.perf_counter() - start
    print(f"3. SynthAct: {1000 * rendered / n:.0f} ms to render and {1000 * encoded / n:.0f} ms to encode a clip",
          flush=True)


def minilm(n: int = 256) -> None:
    params = load_params()
    encoder = make_encoder(params.text_encoder, params.text_encoders, params.embed.max_length)
    texts = sorted({r["answer"] for r in read_captions(paths.captions(params.pretrain[0]) / "captions.jsonl")}, key=len)
    tenth = len(texts) // 10
    for name, part in (("shortest", texts[:tenth]), ("longest", texts[-tenth:])):
        sample = part[:: max(1, len(part) // n)][:n]
        start = time.perf_counter()
        for i in range(0, len(sample), params.embed.batch_size):
            encoder.encode(sample[i:i + params.embed.batch_size])
        print(f"4. MiniLM, the {name} tenth of the answers: {len(sample) / (time.perf_counter() - start):.0f} texts/s",
              flush=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        encoder.encode(texts[-params.embed.batch_size:])
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    linear = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm", "aten::linear"))
    print(f"4. MiniLM, a batch of the longest answers: {100 * linear / total:.0f}% of CPU time in linear layers",
          flush=True)


def main() -> None:
    torch.set_num_threads(2)
    stage2()
    minilm()
    torch.set_num_threads(1)
    describer()
    synthact()


if __name__ == "__main__":
    np.random.seed(0)
    main()
