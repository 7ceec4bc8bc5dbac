"""The FTP model (paper Figures 2-3) and its two training stages, on small tensors."""
import numpy as np
import pytest
import torch

from fourtier.config.base import OptimSettings
from fourtier.evaluation.retrieval import retrieval
from fourtier.models.backbone import TinyVideoViT
from fourtier.models.ftp import FTP, FTPConfig
from fourtier.train.align import train_alignment
from fourtier.train.finetune import train_classifier
from fourtier.train.losses import caption_groups, info_nce, token_scores
from fourtier.train.targets import TokenTargets
from helpers import ArraySource

B, T, H, W, D = 3, 4, 2, 3, 16


def test_shapes_at_every_arrow_of_figure_2():
    model = FTP(FTPConfig(D, (T, H, W), ["A", "B", "C", "D"], n_classes=7, text_dim=12))
    m = torch.randn(B, T, H, W, D)
    outs = model.processor_outputs(m)
    for s_i, t_i in outs.values():
        assert s_i.shape == (B, T, D) and t_i.shape == (B, H * W, D)
    for v_i in model.v(m).values():
        assert v_i.shape == (B, T + H * W, D)
    for z in model.align_embeddings(m).values():
        assert z.shape == (B, 12) and torch.allclose(z.norm(dim=-1), torch.ones(B), atol=1e-5)
    assert model.f(m).shape == m.shape
    assert model.classifier.features(model.f(m)).shape == (B, D)
    assert model(m).shape == (B, 7)


def test_tiny_backbone_feature_map_shape():
    backbone = TinyVideoViT(frames=4, size=32, dim=D, depth=1, heads=2, head_sizes=(6, 5))
    m = backbone.feature_map(torch.randn(2, 4, 3, 32, 32))
    assert m.shape == (2, 4, 2, 2, D)
    assert [o.shape for o in backbone(torch.randn(2, 4, 3, 32, 32))] == [(2, 6), (2, 5)]


def test_integration_starts_at_f_equals_m_and_no_prompts_is_the_baseline():
    torch.manual_seed(0)
    m = torch.randn(B, T, H, W, D)
    ftp = FTP(FTPConfig(D, (T, H, W), ["B", "C"], n_classes=5))
    assert torch.equal(ftp.f(m), m)  # zero-initialised projections
    torch.manual_seed(1)
    baseline = FTP(FTPConfig(D, (T, H, W), [], n_classes=5))
    assert torch.equal(baseline.f(m), m) and len(baseline.processors) == 0
    # same classifier weights -> same logits: the only difference between the arms is f
    ftp.classifier.load_state_dict(baseline.classifier.state_dict())
    ftp.eval(), baseline.eval()
    assert torch.allclose(ftp(m), baseline(m))


def test_stage2_trains_only_integration_and_classifier():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(24, 2, T, H, W, D)).astype(np.float32)
    labels = rng.integers(0, 3, 24)
    model = FTP(FTPConfig(D, (T, H, W), ["A", "C"], n_classes=3, text_dim=8))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("processors.", "align_heads."))}
    trained = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("integration.", "classifier."))}
    train_classifier(model, ArraySource(m), np.arange(24), labels, OptimSettings(2, 8, 1e-2, 0.05, (0.9, 0.999), 0),
                     seed=0, label_smoothing=0.1, mixup_alpha=0.8, mixup_prob=1.0)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert all(p.grad is None for p in model.processors.parameters())
    assert any(not torch.equal(after[k], v) for k, v in trained.items() if k.startswith("integration."))
    assert any(not torch.equal(after[k], v) for k, v in trained.items() if k.startswith("classifier."))


def test_infonce_on_aligned_pairs_learns_and_beats_chance():
    """Text embeddings that are a fixed function of where a blob sits in m: retrieval must beat chance."""
    rng = np.random.default_rng(0)
    n, p = 300, 8
    m = rng.normal(0, 0.1, size=(n, 1, T, H, W, D)).astype(np.float32)
    position = rng.integers(0, H * W, n)
    colour = rng.integers(0, 4, n)
    for i in range(n):
        m[i, 0, :, position[i] // W, position[i] % W, colour[i]] += 3.0
    meaning = np.eye(H * W * 4)[position * 4 + colour]
    proj = rng.normal(size=(H * W * 4, p))
    text = meaning @ proj
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    pooled = np.repeat(text[:, None, :], 4, axis=1).astype(np.float16)
    torch.manual_seed(0)
    model = FTP(FTPConfig(D, (T, H, W), ["A"], n_classes=1, text_dim=p))
    before = train_alignment(model, ArraySource(m), np.arange(240), np.arange(240, n), pooled,
                             OptimSettings(0, 60, 1e-2, 0.0, (0.9, 0.95), 0), seed=0)
    after = train_alignment(model, ArraySource(m), np.arange(240), np.arange(240, n), pooled,
                            OptimSettings(100, 60, 1e-2, 0.0, (0.9, 0.95), 2), seed=0)
    assert after["A"]["R@1"] > 3 * after["A"]["chance_R@1"]
    assert after["A"]["R@1"] > before["A"]["R@1"] + 0.2


def test_paper_processor_is_average_pooling_then_a_linear_projection():
    torch.manual_seed(0)
    model = FTP(FTPConfig(D, (T, H, W), ["A", "B"], n_classes=3, text_dim=12, processor="paper"))
    m = torch.randn(B, T, H, W, D)
    proc = model.processors["A"]
    s_i, t_i = proc(m)
    x = m.reshape(B, T, H * W, D)
    assert torch.allclose(s_i, x.mean(2) @ proc.proj_s.weight.t() + proc.proj_s.bias, atol=1e-6)
    assert torch.allclose(t_i, x.mean(1) @ proc.proj_t.weight.t() + proc.proj_t.bias, atol=1e-6)
    # the alignment head: v_i's tokens averaged, one linear map, unit length
    v = model.v(m)["A"]
    head = model.align_heads["A"]
    expected = torch.nn.functional.normalize(v.mean(1) @ head.proj.weight.t() + head.proj.bias, dim=-1)
    assert torch.allclose(model.align_embeddings(m)["A"], expected, atol=1e-6)
    # two linear maps per processor: far fewer parameters than the attention processor
    attention = FTP(FTPConfig(D, (T, H, W), ["A", "B"], n_classes=3, text_dim=12))
    assert sum(p.numel() for p in proc.parameters()) == 2 * (D * D + D)
    assert sum(p.numel() for p in attention.processors["A"].parameters()) > 4 * 2 * (D * D + D)


def test_processor_kind_is_saved_and_a_mismatch_is_refused(tmp_path):
    from fourtier.errors import DataError

    FTP(FTPConfig(D, (T, H, W), ["A"], n_classes=1, text_dim=8, processor="paper")).save(tmp_path / "ftp")
    model, _ = FTP.load(tmp_path / "ftp")
    assert model.config.processor == "paper" and type(model.processors["A"]).__name__ == "PaperProcessor"
    with pytest.raises(DataError, match="processor paper but this model has attention"):
        FTP(FTPConfig(D, (T, H, W), ["A"], n_classes=5)).load_parts(tmp_path / "ftp", ("processors",))


def test_token_scores_are_the_mean_over_text_tokens_of_the_best_video_token():
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(3, 5, 8), dim=-1)
    e = torch.nn.functional.normalize(torch.randn(4, 6, 8), dim=-1)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 3:] = False
    scores = token_scores(z, e, mask)
    for j in range(3):
        for k in range(4):
            best = [max(float(z[j, u] @ e[k, l]) for u in range(5)) for l in range(6) if mask[k, l]]
            assert scores[j, k].item() == pytest.approx(sum(best) / len(best), abs=1e-5)
    # padding never counts, whatever it holds
    e2 = e.clone()
    e2[1, 3:] = 100.0
    assert torch.allclose(token_scores(z, e2, mask), scores)


def test_info_nce_is_symmetric_cross_entropy_with_identical_answers_as_positives():
    """Against a loop: logits = scale x score; each row's target spreads over the clips with the same answer."""
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    e = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    groups = torch.tensor([0, 1, 0, 2])  # clips 0 and 2 have the same answer
    logit_scale = torch.tensor(2.0)
    logits = logit_scale.exp() * (z @ e.t())

    def side(lg):
        total = 0.0
        for i in range(4):
            positives = [j for j in range(4) if groups[j] == groups[i]]
            total -= sum(lg[i].log_softmax(0)[j] for j in positives) / len(positives)
        return total / 4

    expected = 0.5 * (side(logits) + side(logits.t()))
    assert info_nce(z, e, groups, logit_scale).item() == pytest.approx(expected.item(), abs=1e-5)
    # the token-wise objective scales token_scores the same way
    z_tok = torch.nn.functional.normalize(torch.randn(4, 5, 8), dim=-1)
    e_tok = torch.nn.functional.normalize(torch.randn(4, 6, 8), dim=-1)
    mask = torch.ones(4, 6, dtype=torch.bool)
    logits = logit_scale.exp() * token_scores(z_tok, e_tok, mask)
    expected = 0.5 * (side(logits) + side(logits.t()))
    assert info_nce(z_tok, (e_tok, mask), groups, logit_scale, "tokens").item() == pytest.approx(expected.item(), abs=1e-5)


def test_token_targets_read_rows_in_any_order_and_trim_padding():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(6, 4, 10, 3)).astype(np.float16)
    mask = np.zeros((6, 4, 10), bool)
    for i in range(6):
        mask[i, :, :i + 2] = True
    rows = np.array([5, 0, 3, 1, 4, 2])  # source row -> embeddings row
    e, m = TokenTargets(tokens, mask, rows).batch(np.array([3, 0, 1]), col=2, device=torch.device("cpu"))
    assert e.shape == (3, 7, 3) and m.shape == (3, 7)  # longest answer among embeddings rows 1, 5, 0: 7 tokens
    for out, source_row in enumerate([3, 0, 1]):
        r = rows[source_row]
        expected = torch.nn.functional.normalize(torch.from_numpy(tokens[r, 2, :7].astype(np.float32)), dim=-1)
        assert torch.allclose(e[out], expected) and m[out].tolist() == mask[r, 2, :7].tolist()


def test_token_wise_infonce_learns_what_each_word_names():
    """Two blobs of two colours sit in m; the answer has one token per colour. The token-wise objective must
    learn to retrieve the right answer, with either processor."""
    rng = np.random.default_rng(0)
    n, p = 300, 8
    m = rng.normal(0, 0.1, size=(n, 1, T, H, W, D)).astype(np.float32)
    colours = np.stack([rng.choice(6, 2, replace=False) for _ in range(n)])
    for i in range(n):
        for c, pos in zip(colours[i], rng.choice(H * W, 2, replace=False)):
            m[i, 0, :, pos // W, pos % W, c] += 3.0
    vocab = rng.normal(size=(6, p)).astype(np.float32)
    tokens = np.zeros((n, 4, 3, p), np.float16)
    mask = np.zeros((n, 4, 3), bool)
    tokens[:, :, :2] = vocab[colours][:, None]
    mask[:, :, :2] = True
    pair = np.sort(colours, 1) @ [6, 1]
    pooled = np.repeat(np.eye(36)[pair][:, None, :], 4, axis=1).astype(np.float16)  # says which answers are equal
    for processor in ("attention", "paper"):
        torch.manual_seed(0)
        model = FTP(FTPConfig(D, (T, H, W), ["A"], n_classes=1, text_dim=p, processor=processor, objective="tokens"))
        settings = OptimSettings(60, 60, 1e-2, 0.0, (0.9, 0.95), 2)
        targets = TokenTargets(tokens, mask, np.arange(n))
        after = train_alignment(model, ArraySource(m), np.arange(240), np.arange(240, n), pooled, settings, seed=0,
                                tokens=targets)
        assert after["A"]["R@1"] > 3 * after["A"]["chance_R@1"], (processor, after)
        assert model.align_embeddings(torch.from_numpy(m[:2, 0]))["A"].shape == (2, T + H * W, p)


def test_retrieval_chance_accounts_for_duplicates():
    e = np.eye(4)[[0, 0, 1, 2]]
    groups = caption_groups(e.astype(np.float16))
    r = retrieval(e, e, groups, ks=(1,))
    assert r["R@1"] == 1.0
    # queries 0 and 1 each have 2 right texts of 4; the others 1 of 4
    assert r["chance_R@1"] == pytest.approx((0.5 + 0.5 + 0.25 + 0.25) / 4)


def test_factored_integration_equals_the_projection_of_replicated_v():
    """Figure 3 literally: r_i = [s_i over space; t_i over time] (B, T, N, 2D), projected, added to m."""
    torch.manual_seed(0)
    m = torch.randn(B, T, H, W, D)
    model = FTP(FTPConfig(D, (T, H, W), ["A", "B"], n_classes=3))
    for layer in model.integration.proj.values():
        torch.nn.init.normal_(layer.weight)
        torch.nn.init.normal_(layer.bias)
    expected = m.reshape(B, T, H * W, D)
    for p, (s_i, t_i) in model.processor_outputs(m).items():
        r_i = torch.cat([s_i[:, :, None].expand(B, T, H * W, D), t_i[:, None].expand(B, T, H * W, D)], -1)
        expected = expected + model.integration.proj[p](r_i)
    assert torch.allclose(model.f(m), expected.reshape(m.shape), atol=1e-4)


class CrashAfter:
    """A dvclive stand-in that raises at epoch `n`, as a killed run would stop."""

    def __init__(self, n):
        self.n, self.epochs = n, 0

    def log_metric(self, name, value):
        self.epochs += 1
        if self.epochs == self.n:
            raise KeyboardInterrupt

    def next_step(self):
        pass


def test_stage2_resumed_after_a_crash_ends_bit_identical(tmp_path):
    rng = np.random.default_rng(0)
    m = rng.normal(size=(24, 2, T, H, W, D)).astype(np.float32)
    labels = rng.integers(0, 3, 24)
    settings = OptimSettings(4, 8, 1e-2, 0.05, (0.9, 0.999), 1)

    def run(checkpoint=None, live=None):
        torch.manual_seed(0)
        model = FTP(FTPConfig(D, (T, H, W), ["A"], n_classes=3))
        train_classifier(model, ArraySource(m), np.arange(24), labels, settings, seed=0, label_smoothing=0.1,
                         mixup_alpha=0.8, mixup_prob=0.5, checkpoint=checkpoint, live=live)
        return model.state_dict()

    reference = run()
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint, CrashAfter(3))  # epochs 1-2 checkpointed, epoch 3 lost
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2  # plain tensors and numbers: no pickled code
    torch.manual_seed(123)  # the resumed process starts from another global RNG state
    resumed = run(checkpoint)
    assert all(torch.equal(resumed[k], v) for k, v in reference.items())


def test_saved_model_is_safetensors_and_json_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = FTP(FTPConfig(D, (T, H, W), ["A", "C"], n_classes=4)).eval()
    model.save(tmp_path / "ftp-seed0", meta={"classes": ["a", "b", "c", "d"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ftp-seed0.json", "ftp-seed0.safetensors"]
    from safetensors import safe_open

    with safe_open(tmp_path / "ftp-seed0.safetensors", "pt") as fh:  # a plain tensor file, no pickle inside
        assert set(fh.keys()) == set(model.state_dict())
    loaded, meta = FTP.load(tmp_path / "ftp-seed0")
    assert loaded.config == model.config and meta == {"classes": ["a", "b", "c", "d"]}
    m = torch.randn(B, T, H, W, D)
    assert torch.equal(loaded.eval()(m), model(m))


def test_stage1_parts_load_into_a_stage2_model_and_mismatches_are_refused(tmp_path):
    from fourtier.errors import DataError

    torch.manual_seed(0)
    stage1 = FTP(FTPConfig(D, (T, H, W), ["A", "B"], n_classes=1, text_dim=8))
    stage1.save(tmp_path / "ftp", parts=("processors", "align_heads"))
    stage2 = FTP(FTPConfig(D, (T, H, W), ["A", "B"], n_classes=5))
    stage2.load_parts(tmp_path / "ftp", ("processors",))
    assert all(torch.equal(v, stage1.state_dict()[k]) for k, v in stage2.state_dict().items() if k.startswith("processors."))
    with pytest.raises(DataError, match="prompts"):
        FTP(FTPConfig(D, (T, H, W), ["A"], n_classes=5)).load_parts(tmp_path / "ftp", ("processors",))
    with pytest.raises(DataError, match="has no classifier"):
        stage2.load_parts(tmp_path / "ftp", ("classifier",))
    with pytest.raises(DataError, match="not found"):
        stage2.load_parts(tmp_path / "shuffled", ("processors",))
    (tmp_path / "ftp.json").write_text('{"format": "pickle"}')
    with pytest.raises(DataError, match="not a fourtier model"):
        stage2.load_parts(tmp_path / "ftp", ("processors",))


def test_every_arm_of_a_seed_starts_stage2_from_the_same_classifier(tmp_path, monkeypatch):
    from fourtier import paths
    from fourtier.train.finetune import stage2_model

    monkeypatch.chdir(tmp_path)
    for arm, seed in (("ftp", 5), ("random", 6)):  # stage 1's processors, different for each arm
        torch.manual_seed(seed)
        FTP(FTPConfig(D, (T, H, W), ["A", "C"], n_classes=1, text_dim=8)).save(paths.align_model(arm),
                                                                                ("processors", "align_heads"))
    models = {arm: stage2_model(arm, ["A", "C"], D, (T, H, W), 4, seed=3) for arm in ("baseline", "ftp", "random")}
    base = models["baseline"].classifier.state_dict()
    for arm in ("ftp", "random"):
        assert all(torch.equal(v, models[arm].classifier.state_dict()[k]) for k, v in base.items())
        assert all(not p.detach().any() for p in models[arm].integration.parameters())  # f = m at the start
    assert not torch.equal(models["ftp"].processors["A"].proj_s.net[1].weight,
                           models["random"].processors["A"].proj_s.net[1].weight)
    other = stage2_model("baseline", [], D, (T, H, W), 4, seed=4).classifier.state_dict()
    assert not all(torch.equal(v, other[k]) for k, v in base.items())  # another seed, another start
    with pytest.raises(Exception, match="shuffled.safetensors is missing"):
        stage2_model("shuffled", ["A", "C"], D, (T, H, W), 4, seed=3)


def test_the_flat_head_keeps_where_and_when_and_the_arms_of_a_seed_share_it(tmp_path, monkeypatch):
    """finetune.head flat: one weight per (time, position, channel) of f, so moving a feature to another place
    changes the output, where the pooled head's mean over tokens could not tell; every arm of a seed starts from
    the baseline's flat head, and a saved model says which head it has (the default's file says nothing)."""
    import json

    from fourtier import paths
    from fourtier.models.ftp import FlatHead
    from fourtier.train.finetune import stage2_model

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(5)
    FTP(FTPConfig(D, (T, H, W), ["A"], n_classes=1, text_dim=8)).save(paths.align_model("ftp"),
                                                                       ("processors", "align_heads"))
    flat = {arm: stage2_model(arm, ["A"], D, (T, H, W), 3, seed=2, head="flat") for arm in ("baseline", "ftp")}
    assert isinstance(flat["ftp"].classifier, FlatHead)
    assert torch.equal(flat["ftp"].classifier.head.weight, flat["baseline"].classifier.head.weight)
    head = flat["baseline"].classifier
    f = torch.zeros(1, T, H, W, D)
    f[0, 0, 0, 0, 0] = 1.0
    moved = torch.zeros(1, T, H, W, D)
    moved[0, T - 1, H - 1, W - 1, 0] = 1.0  # the same feature, at the last time and position
    assert head.features(f)[0, 0] == 1.0 and head.features(moved)[0, (T * H * W - 1) * D] == 1.0  # t, h, w, d order
    assert not torch.allclose(head(f), head(moved))
    flat["ftp"].save(tmp_path / "flat", ("classifier",))
    assert json.loads((tmp_path / "flat.json").read_text())["config"]["head"] == "flat"
    assert isinstance(FTP.load(tmp_path / "flat")[0].classifier, FlatHead)
    stage2_model("baseline", [], D, (T, H, W), 3, seed=2).save(tmp_path / "pooled", ("classifier",))
    assert "head" not in json.loads((tmp_path / "pooled.json").read_text())["config"]
