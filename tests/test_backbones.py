"""Every backbone exposes the feature map m (B, T', h, w, D); tiny random configs of each hub architecture."""
import json

import pytest
import torch

from fourtier.models.backbone import TinyVideoViT, load_backbone, save_tiny
from fourtier.video.clips import Preprocess, load_views, segment_indices, to_tensor


def hub_models():
    from transformers import (TimesformerConfig, TimesformerModel, VideoMAEConfig, VideoMAEModel, VivitConfig,
                              VivitModel, XCLIPConfig, XCLIPModel)

    common = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    return {
        # (model, frames in, expected m shape for a 32x32 input)
        "videomae": (VideoMAEModel(VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, **common)),
                     4, (2, 2, 2, 2, 16)),
        "timesformer": (TimesformerModel(TimesformerConfig(image_size=32, patch_size=16, num_frames=4, **common)),
                        4, (2, 4, 2, 2, 16)),
        "vivit": (VivitModel(VivitConfig(image_size=32, num_frames=4, tubelet_size=[2, 16, 16], **common),
                             add_pooling_layer=False), 4, (2, 2, 2, 2, 16)),
        # the preset is the whole X-CLIP model; the adapter takes its vision tower, frame by frame
        "xclip": (XCLIPModel(XCLIPConfig(text_config=dict(vocab_size=64, **common), projection_dim=16,
                                         vision_config=dict(image_size=32, patch_size=16, num_frames=4,
                                                            mit_hidden_size=16, mit_intermediate_size=32, **common))),
                  4, (2, 4, 2, 2, 16)),
    }


@pytest.mark.parametrize("kind", ["videomae", "timesformer", "vivit", "xclip"])
def test_hub_backbone_feature_map(kind, tmp_path):
    model, frames, expected = hub_models()[kind]
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "config.json").write_text(json.dumps({"type": "hf", "model": f"tiny-{kind}"}))
    backbone = load_backbone(tmp_path)
    assert backbone.preprocess.size == 32 and backbone.preprocess.mode == "crop"
    m = backbone.feature_map(torch.randn(2, frames, 3, 32, 32))
    assert tuple(m.shape) == expected
    assert not any(p.requires_grad for p in backbone.module.parameters())  # frozen


def without_mixing(model):
    """The model with every linear layer of its encoder at zero: attention and MLP branches add nothing, so each
    output token is its own patch embedding (plus position and norms), and what moves is where it was put."""
    model = getattr(model, "vision_model", model)
    encoder = getattr(model, "encoder", None) or model.layers  # ViViT keeps its layers at the top
    for module in encoder.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.zeros_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


@pytest.mark.parametrize("kind", ["videomae", "timesformer", "vivit", "xclip"])
def test_hub_backbone_puts_each_frame_and_patch_where_it_belongs(kind, tmp_path):
    """A change to the last frame moves only the last time step of m (the last tubelet for VideoMAE and ViViT);
    a change inside one patch moves only that (row, column) cell at every time step. A wrong reshape (e.g.
    TimeSformer's patch-major tokens read as time-major) keeps the shape and fails here."""
    torch.manual_seed(0)
    model, frames, expected = hub_models()[kind]
    without_mixing(model)
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "config.json").write_text(json.dumps({"type": "hf", "model": f"tiny-{kind}"}))
    backbone = load_backbone(tmp_path)
    x = torch.randn(1, frames, 3, 32, 32)
    base = backbone.feature_map(x)
    t_steps = expected[1]
    frame = x.clone()
    frame[:, -1] += 1.0
    moved = (backbone.feature_map(frame) - base).abs().amax((0, 2, 3, 4)) > 1e-4
    assert moved.tolist() == [t == t_steps - 1 for t in range(t_steps)]
    patch = x.clone()
    patch[:, :, :, 16:, :16] += 1.0  # the bottom-left 16 x 16 patch, every frame
    cells = (backbone.feature_map(patch) - base).abs().amax((0, 1, 4)) > 1e-4
    assert cells.tolist() == [[False, False], [True, False]]


def test_tiny_backbone_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = TinyVideoViT(frames=4, size=32, dim=16, depth=1, heads=2, head_sizes=(3,))
    save_tiny(model, tmp_path, {"head_classes": [["a", "b", "c"]]})
    loaded = load_backbone(tmp_path)
    x = torch.randn(1, 4, 3, 32, 32)
    with torch.inference_mode():  # same kernels on both sides
        assert torch.allclose(loaded.feature_map(x), model.eval().feature_map(x), atol=1e-5)
    assert loaded.preprocess.frames == 4 and loaded.preprocess.mode == "letterbox"


@pytest.mark.parametrize("tubelet", [1, 2])
def test_tiny_backbone_time_and_space_land_where_they_belong(tubelet):
    """With the attention layers taken out, a change to one frame moves only the time step that frame falls in
    (frame // tubelet), and a change inside one 16-px patch moves only its cell (row, column), at every time step:
    m is (T / tubelet, h, w, D) in that order, not a scramble of the same shape."""
    torch.manual_seed(0)
    model = TinyVideoViT(frames=4, size=32, dim=16, depth=1, heads=2, head_sizes=(3,), tubelet=tubelet).eval()
    model.blocks = torch.nn.Identity()  # tokens do not mix: what moves is what the embedding put there
    x = torch.randn(1, 4, 3, 32, 32)
    with torch.inference_mode():
        base = model.feature_map(x)
        assert base.shape == (1, 4 // tubelet, 2, 2, 16)
        frame = x.clone()
        frame[:, 3] += 1.0  # the last frame
        moved = (model.feature_map(frame) - base).abs().amax((0, 2, 3, 4)) > 1e-5
        assert moved.tolist() == [t == 3 // tubelet for t in range(4 // tubelet)]
        patch = x.clone()
        # inside the bottom-left 16 x 16 patch, every frame (the conv stem's 3-px overlap kept off its border)
        patch[:, :, :, 20:, :12] += 1.0
        cells = (model.feature_map(patch) - base).abs().amax((0, 1, 4)) > 1e-5
        assert cells.tolist() == [[False, False], [True, False]]


def test_a_checkpoint_from_before_tubelets_loads(tmp_path):
    """Backbones saved before the tubelet option (last stem layer stored as stem.4, no tubelet in config.json)
    load unchanged, as the kept results of earlier versions need."""
    torch.manual_seed(0)
    model = TinyVideoViT(frames=4, size=32, dim=16, depth=1, heads=2, head_sizes=(3,))
    save_tiny(model, tmp_path, {"head_classes": [["a", "b", "c"]]})
    from safetensors.torch import load_file, save_file

    old = {("stem.4." + k[len("patch."):] if k.startswith("patch.") else k): v
           for k, v in load_file(tmp_path / "weights.safetensors").items()}
    save_file(old, tmp_path / "weights.safetensors")
    config = json.loads((tmp_path / "config.json").read_text())
    del config["tubelet"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    x = torch.randn(1, 4, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(load_backbone(tmp_path).feature_map(x), model.eval().feature_map(x))


def test_segment_sampling_views_differ_and_cover_the_clip():
    a, b = segment_indices(40, 8, 0, 2), segment_indices(40, 8, 1, 2)
    assert a.tolist() == [1, 6, 11, 16, 21, 26, 31, 36] and b.tolist() == [3, 8, 13, 18, 23, 28, 33, 38]
    assert segment_indices(3, 8, 0, 1).max() == 2  # fewer frames than T: repeats, never out of range


def test_views_letterbox_and_crops(tmp_path):
    from helpers import index_frames, write_video

    path = write_video(tmp_path / "v.mp4", index_frames(16, 48, 96))
    letter = load_views(str(path), Preprocess(4, 32, "letterbox", (0.5,) * 3, (0.25,) * 3), 2, 1)
    assert letter.shape == (2, 4, 32, 32, 3)
    assert letter[0, 0, :8].max() == 0 and letter[0, 0, -8:].max() == 0  # padded above and below
    crops = load_views(str(path), Preprocess(4, 32, "crop", (0.5,) * 3, (0.25,) * 3), 1, 3)
    assert crops.shape == (3, 4, 32, 32, 3)
    assert crops[0, 0, :4, :4].mean() > 200 and crops[2, 0, :4, :4].mean() < 200  # left crop holds the marker
    x = to_tensor(crops, Preprocess(4, 32, "crop", (0.5,) * 3, (0.25,) * 3))
    assert x.shape == (3, 4, 3, 32, 32)
