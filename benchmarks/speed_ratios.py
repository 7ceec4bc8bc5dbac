"""Speed claims as ratios, each pair measured in one run on the same inputs (issue: "the speed claims measured
as ratios"). Prints one line per ratio with its bar; writes nothing else.

    python benchmarks/speed_ratios.py [--testvideos DIR]   # after dvc repro (cached m and the backbone)

1. keyframe tiling (what `tile` does: K frames, tile, JPEG) against decoding every frame of the same real clips
   with ffmpeg and keeping K: bar 5x.
2. one stage-1 epoch on the cached m against the same epoch with m computed on the fly by the same backbone
   (features.cache: false): bar 10x.
3. captioning through the OpenAI-compatible backend at concurrency 8 against 1, against a local server with a
   fixed per-request latency (not a CPU-bound model server, which serialises): bar 6x.
4. stage 2 for N arm-and-seed runs (the FTP model on m of the default shape), three ways on the same steps:
   one run after another on every thread (the stages before), one batched ensemble of the N models
   (torch.func.stack_module_state + vmap, every thread), and single-threaded runs side by side in one process
   per core (fourtier.runtime.parallel.run_parallel, what align and finetune do now).
"""
import argparse
import copy
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402
from fourtier import paths  # noqa: E402
from fourtier.caption.backend import Request, make_backend  # noqa: E402
from fourtier.config.base import OptimSettings, PROMPT_IDS  # noqa: E402
from fourtier.features.source import FeatureSource, OnTheFlyFeatures  # noqa: E402
from fourtier.models.backbone import load_backbone  # noqa: E402
from fourtier.models.ftp import FTP, FTPConfig  # noqa: E402
from fourtier.train.align import train_alignment  # noqa: E402
from fourtier.video import media  # noqa: E402
from fourtier.video.tiling import tile_video  # noqa: E402

K = 5


def decode_all_then_keep_k(path: Path) -> int:
    """The naive way: every frame through ffmpeg as RGB, then K of them."""
    info = media.probe(path)
    w, h = info.main_stream.width, info.main_stream.height
    proc = media.run_ffmpeg(["-v", "error", "-i", str(path), "-an", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"])
    frames = np.frombuffer(proc.stdout, np.uint8)
    n = len(frames) // (w * h * 3)
    kept = frames[: n * w * h * 3].reshape(n, h, w, 3)[np.linspace(0, n - 1, K).astype(int)]
    return len(kept)


def tiling_ratio(clips: list[Path]) -> str:
    start = time.perf_counter()
    for path in clips:
        tile_video(path, K, 128, 90, path.stem)
    tiled = time.perf_counter() - start
    start = time.perf_counter()
    for path in clips:
        decode_all_then_keep_k(path)
    full = time.perf_counter() - start
    return (f"1. tiling K={K} vs decoding every frame, {len(clips)} real clips: {full:.2f} s / {tiled:.2f} s = "
            f"{full / tiled:.1f}x (bar 5x)")


def epoch_ratio(n_clips: int) -> str:
    corpus = "synth-pretrain"
    cached = FeatureSource(paths.features(corpus))
    backbone = load_backbone(paths.BACKBONE)
    fly = OnTheFlyFeatures(paths.raw(corpus), backbone, cached.meta["temporal_views"], cached.meta["spatial_views"],
                           feature_dir=paths.features(corpus))
    idx = cached.split("train")[:n_clips]
    val = np.nonzero(cached.splits != "train")[0][:32]
    pooled = np.random.default_rng(0).normal(size=(len(cached), 4, 384)).astype(np.float16)
    seconds = {}
    for name, source in (("cached", cached), ("on the fly", fly)):
        torch.manual_seed(0)
        model = FTP(FTPConfig(cached.dim, cached.grid, list(PROMPT_IDS), n_classes=1, text_dim=384))
        start = time.perf_counter()
        train_alignment(model, source, idx, val, pooled, OptimSettings(1, 64, 1e-3, 0.05, (0.9, 0.95), 0), 0)
        seconds[name] = time.perf_counter() - start
    return (f"2. one stage-1 epoch on {len(idx)} clips (+ retrieval on {len(val)}), m on the fly vs cached: "
            f"{seconds['on the fly']:.1f} s / {seconds['cached']:.1f} s = "
            f"{seconds['on the fly'] / seconds['cached']:.1f}x (bar 10x)")


def concurrency_ratio(n_requests: int, latency: float) -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (5 * 96, 128), (90, 140, 60)).save(buf, "JPEG")  # a tile-sized image; the server ignores it
    jpeg = buf.getvalue()
    reqs = [Request(f"v{i}", "A", "What is the action category?", jpeg, K, f"key{i}") for i in range(n_requests)]
    rates = {}
    with FakeOpenAI(delay=latency) as server:
        os.environ.setdefault("OPENAI_API_KEY", "sk-local-benchmark")
        for concurrency in (1, 8):
            preset = {"type": "openai", "model": "fake", "base_url": server.base_url, "concurrency": concurrency,
                      "timeout": 60}
            backend = make_backend("local", {"local": preset}, {"max_new_tokens": 16, "temperature": 0.0})
            start = time.perf_counter()
            backend.run(reqs, lambda r, rec: None)
            rates[concurrency] = n_requests / (time.perf_counter() - start)
    return (f"3. captioning at concurrency 8 vs 1, {n_requests} requests, {1000 * latency:.0f} ms per request: "
            f"{rates[8]:.1f} / {rates[1]:.1f} answers/s = {rates[8] / rates[1]:.1f}x (bar 6x)")


def _default_shape() -> tuple[int, int, int, int]:
    """(T', h, w, D) of the default backbone's m (fourtier.runtime.plan)."""
    from fourtier.config.base import load_params
    from fourtier.runtime.plan import view_shape

    return view_shape(load_params())[0]


def _stage2_model(seed: int) -> FTP:
    from fourtier.config.base import load_params

    t, h, w, d = _default_shape()
    torch.manual_seed(seed)
    model = FTP(FTPConfig(d, (t, h, w), list(PROMPT_IDS), n_classes=10, processor=load_params().align.processor))
    model.requires_grad_(False)
    for p in model.stage2_parameters():
        p.requires_grad_(True)
    return model.train()


def _stage2_inputs(seed: int, steps: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(steps, batch, *_default_shape(), generator=gen), torch.randint(10, (steps, batch), generator=gen)


def separate_runs(seeds: list[int], steps: int, batch: int, threads: int) -> float:
    """Each run trains alone, one after another; returns the seconds."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    for seed in seeds:
        model = _stage2_model(seed)
        opt = torch.optim.AdamW(model.stage2_parameters(), 1e-3)
        m, y = _stage2_inputs(seed, steps, batch)
        for step in range(steps):
            loss = torch.nn.functional.cross_entropy(model(m[step]), y[step])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def ensemble_run(seeds: list[int], steps: int, batch: int) -> float:
    """The same runs as one vmapped ensemble: every weight gains a leading model axis, each model its own batch."""
    from torch.func import functional_call, stack_module_state, vmap
    from torch.nn.attention import SDPBackend, sdpa_kernel

    models = [_stage2_model(seed) for seed in seeds]
    params, buffers = stack_module_state(models)
    trainable = {n for n, p in models[0].named_parameters() if p.requires_grad}
    for name, value in params.items():
        value.requires_grad_(name in trainable)
    base = copy.deepcopy(models[0]).to("meta")
    opt = torch.optim.AdamW([params[n] for n in trainable], 1e-3)
    inputs = [_stage2_inputs(seed, steps, batch) for seed in seeds]
    m, y = torch.stack([i[0] for i in inputs], 1), torch.stack([i[1] for i in inputs], 1)  # (steps, N, B, ...)
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), randomness="different")
    start = time.perf_counter()
    for step in range(steps):
        # the math attention: vmap has no batching rule for the CPU flash kernel and would loop over the models
        with sdpa_kernel(SDPBackend.MATH):
            logits = forward(params, buffers, m[step])  # (N, B, classes)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[step].flatten(), reduction="sum") / batch
        opt.zero_grad()
        loss.backward()  # the sum of the runs' mean losses: each model gets exactly its own gradient
        opt.step()
    return time.perf_counter() - start


def side_by_side(seeds: list[int], steps: int, batch: int, processes: int) -> float:
    """The runs split over `processes` spawned processes of one thread each (start-up excluded, as above)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes) as pool:
        pool.starmap(separate_runs, [([0], 1, 2, 1)] * processes)  # warm: imports done in every process
        start = time.perf_counter()
        pool.starmap(separate_runs, [(seeds[i::processes], steps, batch, 1) for i in range(processes)])
        return time.perf_counter() - start


def ensemble_ratio(n_runs: int, steps: int, batch: int) -> str:
    seeds = list(range(n_runs))
    separate_runs(seeds[:1], 3, batch, 2)  # warm-up
    alone = separate_runs(seeds, steps, batch, 2)
    ensemble = ensemble_run(seeds, steps, batch)
    parallel = side_by_side(seeds, steps, batch, 2)
    return (f"4. stage 2, {n_runs} runs x {steps} steps of batch {batch}: one after another {alone:.1f} s; as one vmapped "
            f"ensemble {ensemble:.1f} s = {alone / ensemble:.2f}x; side by side in 2 single-threaded processes "
            f"{parallel:.1f} s = {alone / parallel:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testvideos", type=Path,
                        default=Path(os.environ.get("FOURTIER_TESTVIDEOS", REPO.parent / "shared" / "testvideos")))
    parser.add_argument("--clips", type=int, default=512, help="stage-1 epoch size for ratio 2")
    parser.add_argument("--runs", type=int, default=12, help="stage-2 runs for ratio 4 (one target's arms x seeds)")
    parser.add_argument("--steps", type=int, default=20, help="stage-2 steps per run for ratio 4")
    parser.add_argument("--only", type=int, choices=(1, 2, 3, 4), help="measure one ratio")
    args = parser.parse_args()
    torch.set_num_threads(2)
    readable = [p for p in sorted(args.testvideos.glob("*")) if p.suffix != ".md"
                and not p.name.startswith(("decord_corrupted", "mediabunny"))]
    ratios = {1: lambda: tiling_ratio(readable), 2: lambda: epoch_ratio(args.clips),
              3: lambda: concurrency_ratio(48, 0.25), 4: lambda: ensemble_ratio(args.runs, args.steps, 32)}
    for number, ratio in ratios.items():
        if args.only in (None, number):
            print(ratio(), flush=True)


if __name__ == "__main__":
    main()
