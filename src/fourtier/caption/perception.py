"""What the `builtin` describer can measure in a tile image: it sees the pixels of c and K, nothing else.

Per panel: the background (dominant colour, texture, brightness) and the foreground blobs (colour, shape,
size, position, orientation). Across panels: blobs are tracked and their motion is classified from the
K positions only, so with K=1 there is no motion, and with few keyframes bounce and jump can be confused,
as they can for a real VLM. On footage that is not a flat-ish scene with a few blobs, `structured` is
False and only plain measurements (colours, brightness, change between frames) are reliable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

# colour names a describer knows (generic, not the generator's palette)
COLOUR_NAMES = {
    "red": (220, 40, 40), "green": (45, 190, 65), "blue": (50, 80, 225), "yellow": (240, 220, 45),
    "white": (245, 245, 245), "black": (20, 20, 20), "orange": (240, 140, 25), "purple": (150, 60, 200),
    "grey": (128, 128, 128), "brown": (140, 90, 50), "pink": (240, 150, 190), "light blue": (130, 190, 240),
    "dark green": (30, 90, 35), "beige": (215, 190, 135), "navy": (20, 25, 70),
}
# scene knowledge: typical colour of each kind of surface
SCENE_COLOURS = {
    "grass": (62, 140, 52), "sand": (214, 188, 128), "water": (38, 92, 168), "snow": (232, 238, 244),
    "road": (92, 92, 98), "wooden floor": (150, 98, 54), "night sky": (16, 20, 48), "brick wall": (160, 72, 50),
}
SYMMETRY = {"box": 90.0, "cross": 90.0, "triangle": 120.0}


def colour_name(rgb) -> str:
    rgb = np.asarray(rgb, float)
    return min(COLOUR_NAMES, key=lambda n: float(np.sum((rgb - COLOUR_NAMES[n]) ** 2)))


@dataclass
class Blob:
    x: float  # centroid, 0..1 of panel width
    y: float  # 0..1 of panel height, 0 = top
    area: float  # fraction of the panel
    colour: str
    rgb: tuple
    shape: str
    angle: float  # degrees, modulo the shape's symmetry (0 for ball and ring)


@dataclass
class Background:
    rgb: tuple
    colour: str
    scene: str
    brightness: float  # 0..1
    texture: float  # luminance std


@dataclass
class Track:
    blobs: list  # one Blob per panel (None where not found)
    motion: str = "unknown"  # one of MOTIONS, or 'unknown'
    direction: str = ""  # for moves: left/right

    def present(self):
        return [b for b in self.blobs if b is not None]

    @property
    def first(self) -> Blob:
        return self.present()[0]


@dataclass
class TileFacts:
    K: int
    panels: int
    background: Background
    tracks: list = field(default_factory=list)  # moving and static objects, main actor first
    structured: bool = True
    change: list = field(default_factory=list)  # mean abs difference between consecutive panels, 0..1
    dominant_colours: list = field(default_factory=list)
    camera_shake: bool = False
    interaction: str = ""  # approaches / pushes, between tracks[0] and tracks[1]


def split_panels(tile: np.ndarray, k: int) -> list[np.ndarray]:
    width = tile.shape[1] // k
    return [tile[:, i * width:(i + 1) * width] for i in range(k)]


def _shape_of(mask: np.ndarray) -> tuple[str, float]:
    """(shape name, orientation in degrees) from a blob mask, rotation-invariant features only."""
    filled = ndimage.binary_fill_holes(mask)
    area = float(mask.sum())
    if (filled.sum() - area) / max(filled.sum(), 1) > 0.12:
        return "ring", 0.0
    ys, xs = np.nonzero(filled)
    cy, cx = ys.mean(), xs.mean()
    # pixel corners give an unbiased outline for small blobs
    corners_x = np.concatenate([xs, xs + 1, xs, xs + 1]) - cx - 0.5
    corners_y = np.concatenate([ys, ys, ys + 1, ys + 1]) - cy - 0.5
    radii = np.hypot(corners_x, corners_y)
    r_max = radii.max()
    try:
        from scipy.spatial import ConvexHull

        hull_area = ConvexHull(np.stack([corners_x, corners_y], 1)).volume
    except Exception:  # degenerate (a line of pixels)
        hull_area = float(filled.sum())
    solidity = filled.sum() / max(hull_area, 1.0)
    disc_fill = filled.sum() / (math.pi * r_max ** 2)
    # thresholds sit between the 5th/95th percentiles of each shape's features on SynthAct tiles
    if solidity < 0.83:
        shape = "cross"
    elif disc_fill > 0.70:
        shape = "ball"
    elif disc_fill > 0.585:
        shape = "box"
    else:
        shape = "triangle"
    if shape == "ball":
        return shape, 0.0
    far = np.argmax(radii)
    angle = math.degrees(math.atan2(corners_y[far], corners_x[far])) % SYMMETRY[shape]
    return shape, angle


def _scene_of(rgb: np.ndarray, panel: np.ndarray, bg_mask: np.ndarray) -> str:
    """Nearest typical surface colour, after undoing the overall brightness; texture breaks close calls."""
    def chroma(c):
        c = np.asarray(c, float)
        return np.concatenate([c / max(c.sum(), 1.0) * 3, [c.mean() / 255.0]])

    scores = {s: float(np.sum((chroma(rgb) - chroma(c)) ** 2)) for s, c in SCENE_COLOURS.items()}
    best = sorted(scores, key=scores.get)
    if {best[0], best[1]} == {"wooden floor", "brick wall"}:
        # a brick wall has light mortar lines; a wooden floor has dark seams
        lum = panel.mean(-1)
        med = np.median(lum[bg_mask]) if bg_mask.any() else lum.mean()
        light = float(np.mean(lum > med + 45))
        return "brick wall" if light > 0.06 else "wooden floor"
    return best[0]


def analyse_panel(panel: np.ndarray):
    """Background and blobs of one panel."""
    img = panel.astype(np.float32)
    h, w, _ = img.shape
    median = np.median(img.reshape(-1, 3), axis=0)
    dist = np.sqrt(((img - median) ** 2).sum(-1))
    threshold = max(55.0, 3.5 * float(np.median(dist)))
    mask = dist > threshold
    # thin texture (mortar, seams, lane markings, stars) is at most ~3 px thick: opening removes it
    structure = np.ones((3, 3), bool)
    mask = ndimage.binary_opening(mask, structure=structure, iterations=1)
    # split the foreground by colour first, so two touching objects stay two objects
    names = list(COLOUR_NAMES)
    palette = np.array([COLOUR_NAMES[n] for n in names], np.float32)
    nearest = np.full((h, w), -1)
    nearest[mask] = np.argmin(((img[mask][:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
    blobs = []
    min_area = max(12, int(0.0012 * h * w))
    components = []
    for c in np.unique(nearest[mask]):
        labels, _ = ndimage.label(ndimage.binary_opening(nearest == c, structure=structure))
        components += [(labels[sl] == i, sl) for i, sl in enumerate(ndimage.find_objects(labels), start=1)]
    for comp, sl in components:
        area = int(comp.sum())
        bh, bw = comp.shape
        if area < min_area or bh > 0.75 * h or bw > 0.75 * w:
            continue
        inner = ndimage.binary_erosion(comp) if area > 40 else comp
        rgb = img[sl][inner if inner.any() else comp].mean(0)
        shape, angle = _shape_of(comp)
        ys, xs = np.nonzero(comp)
        blobs.append(Blob(x=float((xs.mean() + sl[1].start) / w), y=float((ys.mean() + sl[0].start) / h),
                          area=area / (h * w), colour=colour_name(rgb), rgb=tuple(int(v) for v in rgb),
                          shape=shape, angle=angle))
    bg_mask = dist <= threshold
    bg_rgb = img[bg_mask].mean(0) if bg_mask.any() else median
    lum = img.mean(-1)
    background = Background(rgb=tuple(int(v) for v in bg_rgb), colour=colour_name(bg_rgb),
                            scene=_scene_of(bg_rgb, img, bg_mask), brightness=float(lum.mean() / 255),
                            texture=float(lum[bg_mask].std()) if bg_mask.any() else float(lum.std()))
    structured = float(bg_mask.mean()) > 0.6 and len(blobs) <= 6
    return background, blobs, structured


def _match(tracks: list[Track], blobs: list[Blob], panel: int) -> None:
    """Greedy matching of this panel's blobs to tracks by colour, shape and position."""
    unused = list(blobs)
    for track in tracks:
        last = next((b for b in reversed(track.blobs) if b is not None), None)
        best, best_cost = None, 1e9
        for b in unused:
            colour_cost = math.dist(b.rgb, last.rgb) / 60.0
            cost = colour_cost + math.dist((b.x, b.y), (last.x, last.y)) + (0.3 if b.shape != last.shape else 0.0)
            if cost < best_cost:
                best, best_cost = b, cost
        if best is not None and best_cost < 1.6:
            track.blobs.append(best)
            unused.remove(best)
        else:
            track.blobs.append(None)
    for b in unused:
        tracks.append(Track(blobs=[None] * panel + [b]))


def _sign_changes(values: np.ndarray, tolerance: float) -> int:
    steps = [v for v in np.diff(values) if abs(v) > tolerance]
    return sum(1 for a, b in zip(steps, steps[1:]) if (a > 0) != (b > 0))


def classify_motion(track: Track, k: int) -> None:
    """Name the motion of one track from its K positions, sizes and orientations."""
    blobs = track.present()
    if k == 1 or len(blobs) < 2:
        track.motion = "unknown"
        return
    x = np.array([b.x for b in blobs])
    y = np.array([b.y for b in blobs])
    area = np.array([b.area for b in blobs])
    x_range, y_range = np.ptp(x), np.ptp(y)
    size_ratio = area[-1] / max(area[0], 1e-6)
    if x_range < 0.06 and y_range < 0.06:
        if size_ratio > 1.6:
            track.motion = "grows"
        elif size_ratio < 1 / 1.6:
            track.motion = "shrinks"
        else:
            shape = blobs[0].shape
            if shape in SYMMETRY:
                sym = SYMMETRY[shape]
                turns = np.array([abs((b2.angle - b1.angle + sym / 2) % sym - sym / 2) for b1, b2 in zip(blobs, blobs[1:])])
                # orientation of a small blob is noisy by a few degrees: a spin turns clearly at most steps
                track.motion = "spins" if np.mean(turns > 12) >= 0.5 and turns.mean() > 15 else "stays still"
            else:
                track.motion = "stays still"
        return
    cx, cy = x.mean(), y.mean()
    if len(blobs) >= 4 and x_range > 0.15 and y_range > 0.15:
        # an orbit keeps a steady distance from its centre while the bearing turns one way
        radius = np.hypot(x - cx, y - cy)
        bearings = np.unwrap(np.arctan2(y - cy, x - cx))
        steps = np.diff(bearings)
        if radius.std() < 0.35 * radius.mean() and (np.all(steps > 0) or np.all(steps < 0)) and abs(bearings[-1] - bearings[0]) > 2.0:
            track.motion = "moves in a circle"
            return
    if y_range > 1.3 * x_range:
        changes = _sign_changes(y, 0.02)
        if changes == 0:
            track.motion = "rises" if y[-1] < y[0] else "falls"
        elif changes == 1 and y[np.argmin(y)] < min(y[0], y[-1]):
            track.motion = "jumps"
        else:
            track.motion = "bounces"
        return
    track.direction = "right" if x[-1] > x[0] else "left"
    track.motion = "zigzags" if _sign_changes(y, 0.03) >= 2 and y_range > 0.08 else "moves"


def _interaction(actor: Track, other: Track) -> str:
    pairs = [(a, b) for a, b in zip(actor.blobs, other.blobs) if a is not None and b is not None]
    if len(pairs) < 3:
        return ""
    gaps = np.array([math.dist((a.x, a.y), (b.x, b.y)) for a, b in pairs])
    other_moves = math.dist((pairs[0][1].x, pairs[0][1].y), (pairs[-1][1].x, pairs[-1][1].y)) > 0.08
    if gaps.min() < 0.3 and other_moves and gaps[-1] < 0.35:
        return "pushes"
    if gaps[-1] < gaps[0] - 0.15 and not other_moves:
        return "approaches"
    return ""


def analyse_tile(tile: np.ndarray, k: int) -> TileFacts:
    panels = split_panels(tile, k)
    analysed = [analyse_panel(p) for p in panels]
    backgrounds = [a[0] for a in analysed]
    scenes = [b.scene for b in backgrounds]
    main_bg = backgrounds[int(np.argmax([scenes.count(s) for s in scenes]))]
    tracks: list[Track] = []
    for i, (_, blobs, _) in enumerate(analysed):
        _match(tracks, sorted(blobs, key=lambda b: -b.area), i)
    for t in tracks:
        t.blobs += [None] * (k - len(t.blobs))
    # keep objects seen in at least half of the panels (one-off detections are noise)
    tracks = [t for t in tracks if len(t.present()) >= max(1, (k + 1) // 2)]
    for t in tracks:
        classify_motion(t, k)
    # main actor first: moving tracks before static ones, then by size
    tracks.sort(key=lambda t: (t.motion in ("stays still", "unknown"), -np.mean([b.area for b in t.present()])))
    facts = TileFacts(K=k, panels=len(panels), background=main_bg, tracks=tracks,
                      structured=sum(a[2] for a in analysed) > len(analysed) / 2)
    flat = [p.astype(np.float32) / 255 for p in panels]
    facts.change = [float(np.abs(a - b).mean()) for a, b in zip(flat, flat[1:])]
    quantised = (tile.reshape(-1, 3) // 64).astype(int)
    codes, counts = np.unique(quantised[:, 0] * 16 + quantised[:, 1] * 4 + quantised[:, 2], return_counts=True)
    top = codes[np.argsort(-counts)[:3]]
    facts.dominant_colours = list(dict.fromkeys(colour_name(((c // 16) * 64 + 32, ((c // 4) % 4) * 64 + 32, (c % 4) * 64 + 32)) for c in top))
    if len(tracks) >= 2 and tracks[0].motion not in ("stays still", "unknown"):
        facts.interaction = _interaction(tracks[0], tracks[1])
    static = [t for t in tracks if t.motion == "stays still"]
    if static and k > 1:
        jitter = [np.ptp([b.x for b in t.present()]) + np.ptp([b.y for b in t.present()]) for t in static]
        facts.camera_shake = bool(np.median(jitter) > 0.012)
    return facts
