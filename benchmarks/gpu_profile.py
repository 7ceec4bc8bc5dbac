"""Where the GPU features stage spends its time (run on a GPU machine; needs OpenCV, transformers, decord):
decord alone, `load_views` (decode + crop) per clip in one process, the ViT-B backbone alone at three batch
sizes, the whole features stage at two settings, and the tiny backbone's m on CPU against CUDA (bf16).

    python benchmarks/gpu_profile.py > benchmarks/results/gpu_h100_profile.txt
"""
import sys, time, tempfile
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT / "src"))
import numpy as np, torch
from gpu_features import make_dataset, make_backbone
from fourtier.features.cache import compute_features
from fourtier.features.decode import frames_to_m
from fourtier.features.source import FeatureSource
from fourtier.models.backbone import TinyVideoViT, load_backbone, save_tiny
from fourtier.video.clips import load_views
tmp = Path(tempfile.mkdtemp())
ds = make_dataset(tmp / "raw", 512)
b = load_backbone(make_backbone(tmp / "bb"))
pre = b.preprocess
print("preprocess", pre)
import decord
t = time.perf_counter()
for i in range(20):
    vr = decord.VideoReader(str(ds / "videos" / f"c{i:06d}.mp4"), num_threads=1); idx = list(range(0, 100, 6))[:16]; vr.get_batch(idx).asnumpy()
print("decord 16 frames per clip (1 proc):", (time.perf_counter() - t) / 20, "s")
t = time.perf_counter()
for i in range(20):
    load_views(str(ds / "videos" / f"c{i:06d}.mp4"), pre, 2, 1)
print("load_views 2 views (1 proc):", (time.perf_counter() - t) / 20, "s")
dev = torch.device("cuda"); b.to(dev)
x = np.zeros((32, pre.frames, pre.size, pre.size, 3), np.uint8)
for bs in (16, 32, 64):
    x = np.zeros((bs, pre.frames, pre.size, pre.size, 3), np.uint8)
    frames_to_m(b, x, dev); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(5): frames_to_m(b, x, dev)
    torch.cuda.synchronize(); print(f"backbone alone, batch {bs} views: {5 * bs / (time.perf_counter() - t) / 2:.0f} clips/s (2 views), peak {torch.cuda.max_memory_allocated()/2**30:.1f} GB")
for workers, bs in ((15, 16), (15, 32)):
    out = tmp / f"f{workers}-{bs}"; t = time.perf_counter()
    compute_features(b, ds, out, 2, 1, bs, workers, dev)
    print(f"features workers {workers} batch {bs}: {512 / (time.perf_counter() - t):.1f} clips/s")
# CPU vs GPU numbers with the tiny backbone (what the CUDA-only test checks)
torch.manual_seed(0); save_tiny(TinyVideoViT(frames=8, size=64, dim=96, depth=4, heads=4, head_sizes=(6, 5)), tmp / "tiny", {})
tiny = load_backbone(tmp / "tiny")
small = tmp / "small"; make_dataset(small, 24)
compute_features(tiny, small, tmp / "tc", 2, 1, 8, 4, torch.device("cpu"))
compute_features(tiny, small, tmp / "tg", 2, 1, 8, 4, dev)
a, g = FeatureSource(tmp / "tc"), FeatureSource(tmp / "tg")
i = np.arange(len(a)); d = (a.get(i, 0) - g.get(i, 0)).abs()
print("tiny backbone cpu vs cuda(bf16): max abs diff", float(d.max()), "mean", float(d.mean()), "m scale", float(a.get(i, 0).abs().mean()))
