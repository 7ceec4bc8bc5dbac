"""SynthAct: a synthetic action benchmark that mirrors the paper's premise (README, "SynthAct, the offline default data").

Clips are rendered with numpy and encoded as H.264 mp4 by ffmpeg. Each clip is a scene (context) with
one or two objects doing an action, plus nuisances (camera shake, flicker, noise, static distractors,
compression). Everything about clip i of a dataset follows from (seed, i), so the output is
deterministic whatever the number of workers, and whatever the CPU: the rendering's sines are `_sin`, made of
IEEE additions and multiplications only, because numpy's and libm's sines take other code paths (and give other
last bits, hence other pixels) on other instruction sets; and x264 runs with `cpu-independent`.

Three variants:
- pretrain: random combinations; the label is coarse (motion family and object shape), the analogue
  of the K710 label a backbone is pretrained on. It never names direction, colour or scene.
- scenes: Kinetics-like activities, each defined by object + scene + coarse motion.
- motion: SSv2-like classes, the action alone, whatever the object and scene.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

VERSION = "synthact-2"  # 2: CPU-independent sines and x264

SCENES = {  # name: base colour (RGB)
    "grass": (62, 140, 52),
    "sand": (214, 188, 128),
    "water": (38, 92, 168),
    "snow": (232, 238, 244),
    "road": (92, 92, 98),
    "wooden floor": (150, 98, 54),
    "night sky": (16, 20, 48),
    "brick wall": (160, 72, 50),
}
COLOURS = {
    "red": (222, 38, 38),
    "green": (40, 200, 64),
    "blue": (48, 80, 232),
    "yellow": (244, 222, 40),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
    "orange": (246, 140, 20),
    "purple": (150, 60, 204),
}
# object colours that no training clip shows, for the `deploy` shift only (README, "A shifted test")
HELD_OUT_COLOURS = {
    "cyan": (0, 206, 222),
    "pink": (250, 128, 196),
    "lime": (172, 250, 60),
    "brown": (118, 66, 28),
}
PALETTE = {**COLOURS, **HELD_OUT_COLOURS}
SHIFTS = ("none", "deploy")
SHAPES = ("ball", "box", "triangle", "ring", "cross")
FAMILY = {
    "slide left": "translation", "slide right": "translation", "zigzag": "translation",
    "rise": "vertical", "fall": "vertical", "bounce": "vertical", "jump": "vertical",
    "grow": "size change", "shrink": "size change",
    "spin": "rotation", "orbit": "rotation",
    "approach": "interaction", "push": "interaction",
    "stay still": "static",
}
FAMILIES = ("translation", "vertical", "size change", "rotation", "interaction", "static")
ACTIONS = tuple(FAMILY)
TWO_OBJECT_ACTIONS = ("approach", "push")
# a ball or ring looks the same at every angle: spinning one would be invisible
SPIN_SHAPES = ("box", "triangle", "cross")

# Kinetics-like activities: (shape, motion family, allowed scenes). Some share shape and family and
# differ only by scene, some share a scene: no single attribute names the class.
SCENE_CLASSES = {
    "playing soccer": ("ball", "translation", ("grass",)),
    "bowling": ("ball", "translation", ("wooden floor",)),
    "beach volleyball": ("ball", "vertical", ("sand",)),
    "dribbling basketball": ("ball", "vertical", ("wooden floor", "road")),
    "sailing": ("triangle", "translation", ("water",)),
    "skiing": ("triangle", "translation", ("snow",)),
    "driving a car": ("box", "translation", ("road",)),
    "rock climbing": ("cross", "vertical", ("brick wall",)),
    "fireworks": ("ring", "size change", ("night sky",)),
    "figure skating": ("cross", "rotation", ("snow", "water")),
}
# SSv2-like: the action alone
MOTION_CLASSES = {
    "moving something left": "slide left",
    "moving something right": "slide right",
    "lifting something up": "rise",
    "dropping something": "fall",
    "bouncing something": "bounce",
    "something jumping once": "jump",
    "something getting bigger": "grow",
    "something getting smaller": "shrink",
    "spinning something": "spin",
    "something circling around": "orbit",
    "moving something towards something": "approach",
    "pushing something with something": "push",
}
SIZES = ((96, 128), (128, 96), (112, 112), (96, 160), (128, 128), (120, 96), (104, 136))  # (H, W), even


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip. Kept in attributes.csv for analysis; the VLM never sees it."""
    video_id: str
    label: str
    split: str
    action: str
    family: str
    shape: str
    colour: str
    scene: str
    second_shape: str  # "" when there is one object
    second_colour: str
    height: int
    width: int
    fps: int
    n_frames: int
    crf: int
    shake: float
    flicker: float
    noise: float
    distractors: int
    seed: int


def pretrain_label(family: str, shape: str) -> str:
    return f"{family} / {shape}"


def class_names(variant: str) -> list[str]:
    return list(_class_names(variant))


@lru_cache(maxsize=None)
def _class_names(variant: str) -> tuple[str, ...]:
    # one string object per class, which every clip's label then shares
    if variant == "pretrain":
        return tuple(pretrain_label(f, s) for f in FAMILIES for s in SHAPES)
    return tuple(sorted(SCENE_CLASSES if variant == "scenes" else MOTION_CLASSES))


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _object_colour(rng, scene: str, exclude: str = "", colours: dict = COLOURS) -> str:
    """A colour of `colours` that stands out from the scene (and from the other object)."""
    base = np.array(SCENES[scene], float)
    usable = [c for c, rgb in colours.items() if c != exclude and np.linalg.norm(np.array(rgb) - base) > 110]
    return _pick(rng, usable)


def make_clip_spec(variant: str, seed: int, index: int, label: str, split: str,
                   seconds: tuple[float, float] = (2.0, 4.0), shift: str = "none") -> ClipSpec:
    """The clip's content and nuisances, drawn from its own generator (seed, variant, index). `seconds` is the
    duration range: a motion runs over the whole clip whatever its length, so a shorter clip shows the same kind
    of motion in fewer frames (the encoder samples a fixed number of frames either way).

    shift `deploy` (README, "A shifted test") draws the same classes under what a deployed model meets and no
    training clip shows: object colours from HELD_OUT_COLOURS, camera shake of 3-4 px (training: 0-2), sensor
    noise of sigma 6-10 (training: 0-6) and 16-24 fps (training: 8-15, so each sampled frame is a shorter step of
    the motion). A class's defining property is untouched: shape, motion family and scene for `scenes`, the
    action for `motion`. The draws are made in the same order, so `none` gives the clips it always gave."""
    clip_seed = int(np.random.SeedSequence([seed, SYNTH_VARIANT_IDS[variant], index]).generate_state(1)[0])
    rng = np.random.default_rng(clip_seed)
    if variant == "pretrain":
        family, shape = label.split(" / ")
        action = _pick(rng, [a for a in ACTIONS if FAMILY[a] == family and (a != "spin" or shape in SPIN_SHAPES)])
        scene = _pick(rng, tuple(SCENES))
    elif variant == "scenes":
        shape, family, scenes = SCENE_CLASSES[label]
        action = _pick(rng, [a for a in ACTIONS if FAMILY[a] == family and (a != "spin" or shape in SPIN_SHAPES)])
        scene = _pick(rng, scenes)
    else:
        action = MOTION_CLASSES[label]
        family = FAMILY[action]
        shape = _pick(rng, SPIN_SHAPES if action == "spin" else SHAPES)
        scene = _pick(rng, tuple(SCENES))
    if shift not in SHIFTS:
        raise ValueError(f"unknown SynthAct shift {shift!r}; use one of {SHIFTS}")
    deploy = shift == "deploy"
    colours = HELD_OUT_COLOURS if deploy else COLOURS
    colour = _object_colour(rng, scene, colours=colours)
    two = action in TWO_OBJECT_ACTIONS or (family != "static" and rng.random() < 0.3)
    second_shape = _pick(rng, SHAPES) if two else ""
    second_colour = _object_colour(rng, scene, exclude=colour, colours=colours) if two else ""
    height, width = SIZES[int(rng.integers(len(SIZES)))]
    fps = int(rng.integers(16, 25) if deploy else rng.integers(8, 16))
    duration = float(rng.uniform(*seconds))
    return ClipSpec(
        video_id=f"{variant}-{index:06d}", label=label, split=split, action=action, family=family,
        shape=shape, colour=colour, scene=scene, second_shape=second_shape, second_colour=second_colour,
        height=height, width=width, fps=fps, n_frames=max(8, round(fps * duration)),
        crf=int(rng.integers(20, 31)), shake=float(rng.choice([3.0, 3.0, 4.0, 4.0] if deploy else [0.0, 0.0, 1.0, 2.0])),
        flicker=float(rng.choice([0.0, 0.0, 0.05, 0.1])), noise=float(rng.uniform(6.0, 10.0) if deploy else rng.uniform(0.0, 6.0)),
        distractors=int(rng.choice([0, 0, 1, 2])), seed=clip_seed,
    )


SYNTH_VARIANT_IDS = {"pretrain": 0, "scenes": 1, "motion": 2}


@dataclass(frozen=True)
class Plan:
    """A dataset's clips, class-balanced, each a function of its index alone (`plan[i]`), so that generating
    10^6 clips never holds their specs. Pretrain cycles through its coarse labels, its last val_fraction of
    clips in val; the other variants go class by class, train_per_class train clips, then val_per_class val."""
    variant: str
    seed: int
    clips: int
    val_fraction: float
    train_per_class: int
    val_per_class: int
    seconds: tuple[float, float] = (2.0, 4.0)
    shift: str = "none"  # make_clip_spec

    def __len__(self) -> int:
        if self.variant == "pretrain":
            return self.clips
        return len(_class_names(self.variant)) * (self.train_per_class + self.val_per_class)

    def __getitem__(self, index: int) -> ClipSpec:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.variant == "pretrain":
            # spin is impossible for ball/ring but orbit is not, so every (family, shape) label is renderable
            labels = _class_names("pretrain")
            label = labels[index % len(labels)]
            split = "val" if index >= self.clips - round(self.clips * self.val_fraction) else "train"
        else:
            c, j = divmod(index, self.train_per_class + self.val_per_class)
            label, split = _class_names(self.variant)[c], "train" if j < self.train_per_class else "val"
        return make_clip_spec(self.variant, self.seed, index, label, split, self.seconds, self.shift)


def plan(variant: str, seed: int, clips: int, val_fraction: float, train_per_class: int,
         val_per_class: int, seconds: tuple[float, float] = (2.0, 4.0)) -> list[ClipSpec]:
    """Every clip of a dataset's Plan, as a list."""
    p = Plan(variant, seed, clips, val_fraction, train_per_class, val_per_class, seconds)
    return [p[i] for i in range(len(p))]


# ---------------------------------------------------------------------------------------------
# rendering

_TAU = 2 * math.pi
# Taylor coefficients of sin up to x^15: under 1e-11 off on [-pi/2, pi/2], far below a pixel's 1/255
_SIN_COEFFS = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(7, -1, -1))


def _sin(x):
    """sin(x) in float64 from additions, multiplications and rounding alone, each of which IEEE 754 fixes to the
    bit: the same result on every CPU, which np.sin and math.sin (SIMD and libm paths per instruction set) are not."""
    x = np.asarray(x, np.float64)
    r = x - np.round(x / _TAU) * _TAU  # in [-pi, pi]
    r = np.where(r > math.pi / 2, math.pi - r, r)  # sin(r) = sin(pi - r): into [-pi/2, pi/2]
    r = np.where(r < -math.pi / 2, -math.pi - r, r)
    r2 = r * r
    poly = np.zeros_like(r)
    for c in _SIN_COEFFS:
        poly = poly * r2 + c
    return poly * r


def _cos(x):
    return _sin(np.asarray(x, np.float64) + math.pi / 2)


def _triangle(u):
    """The triangle wave (2/pi) arcsin(sin(2 pi u)), in basic operations: 0 at u = 0, 1 at 1/4, -1 at 3/4."""
    s = (np.asarray(u, np.float64) + 0.25) % 1.0
    return 1.0 - 4.0 * np.abs(s - 0.5)


def _background(spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """Static scene texture (H, W, 3) float32 in 0..255, with lighting and tint jitter."""
    h, w = spec.height, spec.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.array(SCENES[spec.scene], np.float32)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    grain = rng.normal(0, 1, (h, w)).astype(np.float32)
    scene = spec.scene
    if scene == "grass":
        img += (18 * _sin(xx * 1.7 + rng.uniform(0, 6)) * (0.5 + 0.5 * _sin(yy * 0.3)))[..., None] + 10 * grain[..., None]
    elif scene == "sand":
        img += 14 * grain[..., None] + (8 * _sin(yy * 0.25 + xx * 0.05))[..., None]
    elif scene == "water":
        img += (16 * _sin(yy * 0.6 + 2 * _sin(xx * 0.08)))[..., None] * np.array([0.4, 0.7, 1.0], np.float32)
    elif scene == "snow":
        img += 6 * grain[..., None]
    elif scene == "road":
        img += 6 * grain[..., None]
        lane = (np.abs(yy - h * 0.5) < 1.5) & ((xx // 10) % 2 == 0)
        img[lane] = (235, 235, 200)
    elif scene == "wooden floor":
        seams = (yy % 14) < 1.2
        img += (10 * _sin(xx * 0.15 + yy * 0.9))[..., None] + 5 * grain[..., None]
        img[seams] *= 0.6
    elif scene == "night sky":
        img += 3 * grain[..., None]
        stars = rng.random((h, w)) < 0.006
        img[stars] = (250, 250, 230)
    elif scene == "brick wall":
        row = (yy // 10).astype(int)
        mortar = ((yy % 10) < 1.5) | (((xx + 10 * (row % 2)) % 20) < 1.5)
        img += 8 * grain[..., None]
        img[mortar] = (185, 180, 170)
    gain = rng.uniform(0.8, 1.15)
    tint = rng.uniform(-10, 10, 3).astype(np.float32)
    return np.clip(img * gain + tint, 0, 255).astype(np.float32)


def _shape_mask(shape: str, xx, yy, cx, cy, radius, angle) -> np.ndarray:
    """Pixels inside `shape` centred at (cx, cy) with the given radius (px) and rotation (rad)."""
    c, s = float(_cos(angle)), float(_sin(angle))
    u = ((xx - cx) * c + (yy - cy) * s) / radius
    v = (-(xx - cx) * s + (yy - cy) * c) / radius
    if shape == "ball":
        return u * u + v * v <= 1.0
    if shape == "box":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.36)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if shape == "triangle":  # pointing up at angle 0: apex (0, -1), base at v = 0.5
        return (v <= 0.5) & (v >= -1.0 + 1.732 * np.abs(u))
    raise ValueError(shape)


def _tracks(spec: ClipSpec, rng: np.random.Generator):
    """Per-frame (x, y, scale, angle) of the main object and of the second one, positions in 0..1."""
    n = spec.n_frames
    t = np.linspace(0.0, 1.0, n)
    x = np.full(n, rng.uniform(0.3, 0.7))
    y = np.full(n, rng.uniform(0.35, 0.65))
    scale = np.ones(n)
    angle = np.full(n, rng.uniform(-0.3, 0.3))
    a = spec.action
    speed = rng.uniform(0.8, 1.0)
    if a in ("slide left", "slide right"):
        x0, x1 = rng.uniform(0.72, 0.85), rng.uniform(0.15, 0.28)
        x = x0 + (x1 - x0) * t * speed if a == "slide left" else x1 + (x0 - x1) * t * speed
    elif a == "zigzag":
        x = 0.15 + 0.7 * t if rng.random() < 0.5 else 0.85 - 0.7 * t
        periods = rng.integers(2, 4)
        y = 0.5 + 0.18 * _triangle(periods * t)
    elif a == "rise":
        y = rng.uniform(0.75, 0.85) - rng.uniform(0.5, 0.6) * t * speed
    elif a == "fall":
        y = rng.uniform(0.15, 0.25) + rng.uniform(0.5, 0.6) * t ** 2
    elif a == "bounce":
        ground, hops = rng.uniform(0.72, 0.8), int(rng.integers(2, 4))
        y = ground - rng.uniform(0.35, 0.5) * np.abs(_sin(math.pi * hops * t)) * (1 - 0.35 * t)
    elif a == "jump":
        ground, start = rng.uniform(0.72, 0.8), rng.uniform(0.25, 0.4)
        u = np.clip((t - start) / 0.35, 0, 1)
        y = ground - rng.uniform(0.35, 0.5) * 4 * u * (1 - u)
    elif a == "grow":
        scale = 0.55 + 1.0 * t
    elif a == "shrink":
        scale = 1.55 - 1.0 * t
    elif a == "spin":
        angle = angle + (1 if rng.random() < 0.5 else -1) * rng.uniform(1.0, 2.0) * math.pi * t
    elif a == "orbit":
        radius, phase, turn = rng.uniform(0.2, 0.28), rng.uniform(0, 2 * math.pi), (1 if rng.random() < 0.5 else -1)
        x = 0.5 + radius * _cos(phase + turn * 2 * math.pi * t)
        y = 0.5 + radius * _sin(phase + turn * 2 * math.pi * t)
    elif a == "stay still":
        x = x + rng.normal(0, 0.003, n)
    second = None
    if spec.second_shape:
        side = 1 if rng.random() < 0.5 else -1
        bx, by = np.full(n, 0.5 + side * 0.2), np.full(n, y[0] if a in TWO_OBJECT_ACTIONS else rng.uniform(0.25, 0.75))
        if a == "approach":  # main object closes in on the second, which stays put
            start, stop = 0.5 - side * 0.33, 0.5 + side * 0.03
            x = start + (stop - start) * np.minimum(t * 1.15, 1.0)
            y = np.full(n, by[0])
        elif a == "push":  # main object reaches the second, then both move on together
            start, contact = 0.5 - side * 0.35, 0.5 + side * 0.07
            reach = np.minimum(t / 0.5, 1.0)
            after = np.clip((t - 0.5) / 0.5, 0, 1)
            x = start + (contact - start) * reach + side * 0.22 * after
            bx = bx + side * 0.22 * after
            y = np.full(n, by[0])
        elif a != "orbit":
            bx = np.full(n, rng.uniform(0.15, 0.85))
        second = (bx, by, np.ones(n), np.zeros(n))
    return (x, y, scale, angle), second


def render(spec: ClipSpec) -> np.ndarray:
    """The clip as (T, H, W, 3) uint8."""
    rng = np.random.default_rng(spec.seed)
    h, w, n = spec.height, spec.width, spec.n_frames
    bg = _background(spec, rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    short = min(h, w)
    radius = short * rng.uniform(0.15, 0.22)
    second_radius = short * rng.uniform(0.12, 0.17)
    main, second = _tracks(spec, rng)
    # static distractors: small blobs painted into the scene
    for _ in range(spec.distractors):
        shape, colour = _pick(rng, SHAPES), _pick(rng, tuple(COLOURS))
        mask = _shape_mask(shape, xx, yy, rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h,
                           short * rng.uniform(0.04, 0.06), rng.uniform(0, math.pi))
        bg[mask] = COLOURS[colour]
    frames = np.empty((n, h, w, 3), np.uint8)
    flicker_phase, flicker_freq = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 3.0)
    objects = [(spec.shape, spec.colour, radius, main)]
    if second is not None:
        objects.insert(0, (spec.second_shape, spec.second_colour, second_radius, second))  # main drawn on top
    for i in range(n):
        frame = bg.copy()
        if spec.scene == "water":  # moving ripples, a function of the row alone: computed per row, broadcast
            frame += (6 * _sin(yy[:, :1] * 0.6 + i * 0.8))[..., None]
        for shape, colour, rad, (x, y, scale, angle) in objects:
            mask = _shape_mask(shape, xx, yy, x[i] * w, y[i] * h, rad * scale[i], angle[i])
            frame[mask] = PALETTE[colour]
        gain = 1.0 + spec.flicker * float(_sin(flicker_phase + 2 * math.pi * flicker_freq * i / spec.fps))
        frame = frame * gain + rng.normal(0, spec.noise, (h, w, 1)).astype(np.float32)
        if spec.shake:
            dy, dx = rng.integers(-int(spec.shake), int(spec.shake) + 1, 2)
            frame = np.roll(frame, (int(dy), int(dx)), axis=(0, 1))
        frames[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


# x264 picks its SIMD kernels by CPU, and some of them (lookahead, mbtree) round otherwise than others; this makes
# it pick the ones that give the same bytes everywhere (tests/test_synthact.py checks them against no SIMD at all)
X264_PARAMS = "cpu-independent=1"


def encode_mp4(frames: np.ndarray, fps: int, crf: int, path) -> None:
    """H.264/yuv420p mp4 through ffmpeg-python; single-threaded, bitexact and CPU-independent, so the bytes are
    the same on every machine."""
    import ffmpeg

    from fourtier.errors import DataError
    from fourtier.video.media import ffmpeg_exe

    n, h, w, _ = frames.shape
    stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=fps).output(
        str(path), vcodec="libx264", pix_fmt="yuv420p", crf=crf, preset="veryfast", threads=1,
        **{"x264-params": X264_PARAMS},
        map_metadata=-1, fflags="+bitexact", **{"flags:v": "+bitexact"}, movflags="+faststart")
    try:
        stream.overwrite_output().run(cmd=ffmpeg_exe(), input=frames.tobytes(), capture_stdout=True,
                                      capture_stderr=True)
    except ffmpeg.Error as exc:
        raise DataError(f"ffmpeg failed to encode {path}: {exc.stderr.decode(errors='replace')[-300:]}") from None


def spec_row(spec: ClipSpec) -> dict:
    return asdict(spec)


# ---------------------------------------------------------------------------------------------
# the `download` entry point

def _write_clip(videos: Path, clips: Plan, index: int) -> ClipSpec:
    spec = clips[index]
    encode_mp4(render(spec), spec.fps, spec.crf, videos / f"{spec.video_id}.mp4")
    return spec


def download(spec, out_dir, workers: int) -> dict:
    """Generate the dataset into out_dir following the contract (fourtier.data.contract)."""
    import csv
    from functools import partial

    from fourtier.data.contract import Annotation, write_dataset
    from fourtier.runtime.parallel import map_progress

    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    clips = Plan(spec.variant, spec.seed, spec.clips, spec.val_fraction, spec.train_per_class, spec.val_per_class,
                 spec.seconds, spec.shift)
    rows = []
    # generator metadata, for analysis and tests only: the VLM and the models never read it
    with open(out_dir / "attributes.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(spec_row(clips[0])))
        writer.writeheader()
        # the workers get clip indices and draw each spec themselves (nothing per clip is held while they
        # render); each spec comes back, in order, for its rows here
        for c in map_progress(partial(_write_clip, out_dir / "videos", clips), range(len(clips)), workers,
                              desc=f"generate {out_dir.name}"):
            writer.writerow(spec_row(c))
            rows.append(Annotation(c.video_id, f"videos/{c.video_id}.mp4", c.label, c.split))
    source = {"kind": "synthact", "version": VERSION, "variant": spec.variant, "seed": spec.seed,
              **({"shift": spec.shift} if spec.shift != "none" else {})}
    return write_dataset(out_dir, rows, class_names(spec.variant), source, skipped=[])
