"""What each lever of the light default costs per unit of work, the reference configuration against the default,
measured one at a time on this machine (2 CPU cores, otherwise idle; README, "Two configurations"):

    python benchmarks/levers.py      # about 3 minutes; writes benchmarks/results/levers.txt

1. SynthAct: render + encode one clip (one process), with clips of 2-4 s (reference) and 1.5-2.5 s (default);
2. a stage-2 training step per clip (one thread, as each run side by side has), for m of the reference
   backbone's shape (8 x 4 x 4 x 96) and of the default's (4 x 4 x 4 x 64: a tubelet of 2, width 64), with the
   baseline head, the paper's processors (default) and the attention processors (reference), at batch 32
   (reference) and 8 (default);
3. a stage-1 training step per clip (one thread, batch 128) for the two processors at the default's m.
"""
import time
from pathlib import Path

import numpy as np
import torch

from fourtier.config.base import PROMPT_IDS
from fourtier.data.synthact import encode_mp4, plan, render
from fourtier.models.ftp import FTP, FTPConfig
from fourtier.train.losses import info_nce
from hotspots import stage2_step  # the same step as the hotspot benchmark's

OUT = Path(__file__).resolve().parent / "results" / "levers.txt"


def synthact_ms(seconds: tuple[float, float], n: int = 40) -> tuple[float, float]:
    """ms per clip to render and to encode, and the mean number of frames."""
    specs = plan("pretrain", 0, n, 0.0, 0, 0, seconds)
    start = time.perf_counter()
    frames = [render(s) for s in specs]
    tmp = Path("/tmp/fourtier-levers.mp4")
    for s, f in zip(specs, frames):
        encode_mp4(f, s.fps, s.crf, tmp)
    done = time.perf_counter()
    tmp.unlink(missing_ok=True)
    return 1000 * (done - start) / n, float(np.mean([s.n_frames for s in specs]))


def stage2_ms(shape: tuple[int, int, int, int], prompts: list[str], processor: str, batch: int) -> float:
    step = stage2_step(shape, prompts, processor, batch)
    for _ in range(3):
        step()
    n = max(8, 480 // batch)
    start = time.perf_counter()
    for _ in range(n):
        step()
    return 1000 * (time.perf_counter() - start) / (n * batch)


def stage1_ms(shape: tuple[int, int, int, int], processor: str, batch: int = 128) -> float:
    t, h, w, d = shape
    torch.manual_seed(0)
    model = FTP(FTPConfig(d, (t, h, w), list(PROMPT_IDS), text_dim=384, processor=processor)).train()
    params = model.stage1_parameters()
    opt = torch.optim.AdamW(params, 1e-3)
    m = torch.randn(batch, t, h, w, d)
    e = torch.nn.functional.normalize(torch.randn(batch, 384), dim=-1)
    groups, scale = torch.arange(batch), torch.tensor(np.log(1 / 0.07), dtype=torch.float32)

    def step():
        loss = sum(info_nce(z, e, groups, scale) for z in model.align_embeddings(m).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(6):
        step()
    return 1000 * (time.perf_counter() - start) / (6 * batch)


def main() -> None:
    torch.set_num_threads(1)
    lines = [f"# python benchmarks/levers.py ({time.strftime('%Y-%m-%d')}; one core each, as side-by-side runs use)", ""]
    for label, seconds in (("reference, 2-4 s", (2.0, 4.0)), ("default, 1.5-2.5 s", (1.5, 2.5))):
        ms, frames = synthact_ms(seconds)
        lines.append(f"1. SynthAct clip, {label}: {ms:.0f} ms to render and encode ({frames:.1f} frames on average)")
        print(lines[-1], flush=True)
    reference, default = (8, 4, 4, 96), (4, 4, 4, 64)
    for name, shape in (("reference m 8x4x4x96", reference), ("default m 4x4x4x64", default)):
        for arm, prompts, processor in (("baseline", [], "paper"), ("FTP, paper processors", list(PROMPT_IDS), "paper"),
                                        ("FTP, attention processors", list(PROMPT_IDS), "attention")):
            for batch in (32, 8):
                lines.append(f"2. stage-2 step, {name}, {arm}, batch {batch}: "
                             f"{stage2_ms(shape, prompts, processor, batch):.2f} ms per clip")
                print(lines[-1], flush=True)
    for processor in ("paper", "attention"):
        lines.append(f"3. stage-1 step, default m, {processor} processors, batch 128: "
                     f"{stage1_ms(default, processor):.2f} ms per clip")
        print(lines[-1], flush=True)
    OUT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
