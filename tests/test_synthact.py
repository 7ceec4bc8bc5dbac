import hashlib
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from fourtier.data import synthact as S


def test_plan_is_deterministic_and_seeded():
    a = S.plan("motion", 7, 0, 0, 3, 2)
    b = S.plan("motion", 7, 0, 0, 3, 2)
    c = S.plan("motion", 8, 0, 0, 3, 2)
    assert a == b
    assert [x.seed for x in a] != [x.seed for x in c]


def test_each_clip_of_a_plan_is_drawn_from_its_index_alone():
    """The download's workers get clip indices and draw the specs themselves: clip i is the same whichever
    clips are drawn before it, class by class (train clips, then val) or, for pretrain, the last val_fraction
    of clips in val."""
    motion = S.Plan("motion", 7, 0, 0, 3, 2)
    classes = S.class_names("motion")
    assert len(motion) == 5 * len(classes)
    assert [(c.label, c.split) for c in (motion[i] for i in range(10))] == \
        [(classes[0], "train")] * 3 + [(classes[0], "val")] * 2 + [(classes[1], "train")] * 3 + [(classes[1], "val")] * 2
    assert [motion[i] for i in range(len(motion))] == S.plan("motion", 7, 0, 0, 3, 2)
    pretrain = S.Plan("pretrain", 0, 20, 0.25, 0, 0)
    assert [pretrain[i].split for i in range(20)] == ["train"] * 15 + ["val"] * 5
    with pytest.raises(IndexError):
        motion[len(motion)]


def test_a_shorter_duration_keeps_each_clips_content_in_fewer_frames():
    long, short = S.plan("motion", 7, 0, 0, 3, 2), S.plan("motion", 7, 0, 0, 3, 2, seconds=(1.5, 2.5))
    content = lambda c: (c.label, c.action, c.shape, c.colour, c.scene, c.second_shape, c.height, c.fps)  # noqa: E731
    assert [content(c) for c in long] == [content(c) for c in short]
    assert all(s.n_frames < c.n_frames for s, c in zip(short, long))
    assert all(round(1.5 * c.fps) <= c.n_frames <= round(2.5 * c.fps) for c in short)


def test_render_and_encode_are_deterministic(tmp_path):
    spec = S.plan("scenes", 3, 0, 0, 1, 0)[4]
    f1, f2 = S.render(spec), S.render(spec)
    assert f1.shape == (spec.n_frames, spec.height, spec.width, 3)
    assert np.array_equal(f1, f2)
    S.encode_mp4(f1, spec.fps, spec.crf, tmp_path / "a.mp4")
    S.encode_mp4(f2, spec.fps, spec.crf, tmp_path / "b.mp4")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "a.mp4") == digest(tmp_path / "b.mp4")


def test_the_deterministic_sines_are_sines():
    x = np.linspace(-60.0, 60.0, 100_001)
    assert np.abs(S._sin(x) - np.sin(x)).max() < 1e-10
    assert np.abs(S._cos(x) - np.cos(x)).max() < 1e-10
    u = np.linspace(-3.0, 3.0, 10_001)
    assert np.abs(S._triangle(u) - (2 / np.pi) * np.arcsin(np.sin(2 * np.pi * u))).max() < 1e-9


RENDER_DIGEST = """
import hashlib
from fourtier.data import synthact as S
digest = hashlib.sha256()
for spec in S.plan("scenes", 3, 0, 0, 1, 0) + S.plan("motion", 3, 0, 0, 1, 0):
    digest.update(S.render(spec).tobytes())
print(digest.hexdigest())
"""


def test_render_gives_the_same_pixels_on_other_instruction_sets():
    # Another CPU, simulated: numpy without its SIMD kernels above the baseline (AVX2, AVX-512 where this machine
    # has them) and glibc's libm without its AVX/FMA variants. np.sin in the renderer failed this.
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    extra = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    if not extra:
        pytest.skip("this CPU has no SIMD extension above numpy's baseline to switch off")
    run = lambda env: subprocess.run([sys.executable, "-c", RENDER_DIGEST], env={**os.environ, **env},  # noqa: E731
                                     capture_output=True, text=True, check=True).stdout
    assert run({}) == run({"NPY_DISABLE_CPU_FEATURES": " ".join(extra),
                           "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX"})


def test_encode_gives_the_bytes_of_x264_without_simd(tmp_path, monkeypatch):
    # x264's default SIMD kernels give other bytes than its C code (and so than other CPUs' kernels);
    # cpu-independent gives the C code's
    spec = S.plan("motion", 3, 0, 0, 1, 0)[2]
    frames = S.render(spec)
    S.encode_mp4(frames, spec.fps, spec.crf, tmp_path / "simd.mp4")
    monkeypatch.setattr(S, "X264_PARAMS", S.X264_PARAMS + ":asm=0")
    S.encode_mp4(frames, spec.fps, spec.crf, tmp_path / "c.mp4")
    assert (tmp_path / "simd.mp4").read_bytes() == (tmp_path / "c.mp4").read_bytes()


def test_targets_are_class_balanced_per_split():
    for variant, n_classes in (("scenes", 10), ("motion", 12)):
        specs = S.plan(variant, 1, 0, 0, 4, 6)
        counts = Counter((s.split, s.label) for s in specs)
        assert len(S.class_names(variant)) == n_classes
        assert {k: v for k, v in counts.items() if k[0] == "train"} == {("train", c): 4 for c in S.class_names(variant)}
        assert {k: v for k, v in counts.items() if k[0] == "val"} == {("val", c): 6 for c in S.class_names(variant)}


def test_pretrain_labels_balanced_and_consistent_with_content():
    specs = S.plan("pretrain", 0, 300, 0.1, 0, 0)
    counts = Counter(s.label for s in specs)
    assert len(counts) == 30 and max(counts.values()) - min(counts.values()) <= 1
    assert sum(s.split == "val" for s in specs) == 30
    for s in specs:
        family, shape = s.label.split(" / ")
        assert S.FAMILY[s.action] == family and s.shape == shape
        assert s.action != "spin" or s.shape in S.SPIN_SHAPES


def test_target_classes_follow_their_definition():
    for s in S.plan("scenes", 2, 0, 0, 3, 3):
        shape, family, scenes = S.SCENE_CLASSES[s.label]
        assert (s.shape, s.family) == (shape, family) and s.scene in scenes
    for s in S.plan("motion", 2, 0, 0, 3, 3):
        assert s.action == S.MOTION_CLASSES[s.label]
        if s.action in S.TWO_OBJECT_ACTIONS:
            assert s.second_shape, s


def test_motion_is_visible_in_the_pixels():
    """The object of a 'moving something right' clip ends further right than it starts."""
    spec = next(s for s in S.plan("motion", 5, 0, 0, 4, 0) if s.action == "slide right" and not s.second_shape
                and s.distractors == 0)
    frames = S.render(spec).astype(float)
    colour = np.array(S.COLOURS[spec.colour], float)

    def centre_x(frame):
        mask = np.abs(frame - colour).sum(-1) < 60
        return np.nonzero(mask)[1].mean()

    assert centre_x(frames[-1]) - centre_x(frames[0]) > 0.3 * spec.width


def test_the_deploy_shift_keeps_each_classs_definition_and_shows_nothing_of_training():
    """README, "A shifted test": the same classes, each with its defining property (shape, family and scene for
    scenes; the action for motion), under held-out colours, more shake and noise, and a higher frame rate; and
    the unshifted plan draws exactly the clips it drew before the shift existed."""
    for variant in ("scenes", "motion"):
        plain = S.Plan(variant, 3, 0, 0.0, 0, 20)
        shifted = S.Plan(variant, 3, 0, 0.0, 0, 20, shift="deploy")
        assert S.Plan(variant, 3, 0, 0.0, 0, 20, shift="none")[7] == plain[7]
        for i in range(len(shifted)):
            c, p = shifted[i], plain[i]
            assert c.label == p.label and c.split == p.split
            if variant == "scenes":
                shape, family, scenes = S.SCENE_CLASSES[c.label]
                assert (c.shape, c.family) == (shape, family) and c.scene in scenes
            else:
                assert c.action == S.MOTION_CLASSES[c.label]
            assert c.colour in S.HELD_OUT_COLOURS and c.colour not in S.COLOURS
            assert c.second_colour == "" or c.second_colour in S.HELD_OUT_COLOURS
            assert 3 <= c.shake <= 4 and 6 <= c.noise <= 10 and 16 <= c.fps <= 24
            assert p.colour in S.COLOURS and p.shake <= 2 and p.noise <= 6 and p.fps <= 15
