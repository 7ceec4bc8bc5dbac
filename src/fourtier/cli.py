"""The `fourtier` command: single-video tools next to the DVC pipeline. Run it from the project root.

    fourtier predict VIDEO [--dataset DS] [--arm ftp] [--seed 0]   top-5 classes with a trained model, no VLM
    fourtier predict VIDEO --classes "a, b, c"                     zero-shot: rank any class names (stage 1 only)
    fourtier describe VIDEO [--vlm X] [-K k] [--tile out.jpg]      the tile a VLM sees, and its four answers
    fourtier info                                                  resolved params, presets, artifacts present
    fourtier ablate {prompts,K,vlm,backbone,shots} [VALUES...]     queue ablations as DVC experiments
    fourtier report [--json exp_show.json] [--out report.md]      paper-style tables from `dvc exp show --json`
    fourtier plan                                                  the bill before a run: disk, DVC files and
                                                                   cache, captioning requests and price, time

Bad input (missing file, unreadable video, no trained model yet) gets a message and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from fourtier import paths
from fourtier.config.train import ARMS
from fourtier.errors import DataError, VideoError, exits_cleanly
from fourtier.evaluation.experiments import ABLATIONS


def _video(path: str) -> str:
    if not Path(path).is_file():
        raise VideoError(f"video not found: {path}")
    return path


def _decodable(path: str, tmp: Path) -> str:
    """The video as the folder ingest stores it, at its own size: pixels made square (the feature pipeline
    reads frames as stored) and its stream copied into MP4 when decord cannot open the container. Corrupt or truncated files
    get a clear error instead."""
    from fourtier.data.folder import ingest_one

    result = ingest_one((Path(path), tmp / "clip", 1 << 20))  # a short side this large never rescales
    if not result["ok"]:
        raise VideoError(f"{path} cannot be used: {result['reason']}")
    return path if not result["normalised"] else str(tmp / result["file"])


def _video_m(video: str, backbone, params, device):
    """m of every view of one video, as the features stage computes it (float16, then float32 on `device`),
    so that a trained model sees what it was trained on."""
    from fourtier.features.decode import frames_to_m
    from fourtier.video.clips import load_views

    cfg = params.features
    with tempfile.TemporaryDirectory() as tmp:
        path = _decodable(_video(video), Path(tmp))
        views = load_views(path, backbone.preprocess, cfg.temporal_views, cfg.spatial_views)
    return frames_to_m(backbone, views, device).to(device).float()


def _class_names(args) -> list[str]:
    if args.classes_file and not Path(args.classes_file).is_file():
        raise DataError(f"classes file not found: {args.classes_file}")
    text = Path(args.classes_file).read_text() if args.classes_file else args.classes
    names = list(dict.fromkeys(n.strip() for n in text.replace("\n", ",").split(",") if n.strip()))
    if len(names) < 2:
        raise DataError(f"give at least two class names to rank (got {names}); separate them with commas, "
                        "or one per line in --classes-file")
    return names


def predict_open(args) -> None:
    """Zero-shot: stage 1's FTP processors and alignment heads against class-name templates, no stage 2."""
    import torch

    from fourtier.config.base import load_params
    from fourtier.evaluation.zeroshot import aligned_embeddings, class_scores, encode_class_texts
    from fourtier.models.backbone import load_backbone
    from fourtier.models.ftp import FTP
    from fourtier.runtime.hardware import resolve_device
    from fourtier.text.classtexts import class_texts
    from fourtier.text.encoder import make_encoder

    params = load_params()
    names = _class_names(args)
    stage1 = paths.align_model("ftp")
    if not stage1.with_suffix(".safetensors").exists():
        raise DataError(f"no stage-1 model at {stage1}.safetensors: run `dvc repro align` (or `dvc pull`) first")
    device = resolve_device(params.runtime.device)
    model, _ = FTP.load(stage1)
    model.to(device)
    backbone = load_backbone(paths.BACKBONE).to(device)
    encoder = make_encoder(params.text_encoder, params.text_encoders, params.embed.max_length, str(device))
    objective = model.config.objective
    class_emb = encode_class_texts(class_texts("template", names), names, encoder, objective)
    with torch.inference_mode():
        aligned = aligned_embeddings(model, _video_m(args.video, backbone, params, device)).mean(0, keepdim=True)
    per_prompt = torch.from_numpy(class_scores(aligned, class_emb, model.prompts, objective)[0])  # (P, C), over the views
    total = per_prompt.sum(0)
    order = torch.argsort(total, descending=True).tolist()
    print(f"{args.video}  zero-shot over {len(names)} class names: stage 1's FTP alignment heads (prompts "
          f"{', '.join(model.prompts)}) against class-name templates; no model was trained on these classes")
    print("  score = sum over prompts of the cosine (each in [-1, 1]); " + ", ".join(model.prompts) + " shown after it")
    for i in order[:10]:
        detail = " ".join(f"{v:+.2f}" for v in per_prompt[:, i].tolist())
        print(f"  {total[i].item():+6.2f}  [{detail}]  {names[i]}")


def predict(args) -> None:
    if args.classes or args.classes_file:
        return predict_open(args)
    import torch

    from fourtier.config.base import load_params
    from fourtier.evaluation.metrics import load_classifier
    from fourtier.models.backbone import load_backbone
    from fourtier.runtime.hardware import resolve_device

    params = load_params()
    dataset = args.dataset or params.targets[0]
    params.dataset(dataset)
    fold = args.split
    if fold is None:  # a dataset run on several official splits has a model per split: its first, by default
        folds = sorted({paths.finetune_run(p)[1] for p in paths.finetune_dir(dataset).glob("*-split*-seed*.safetensors")})
        fold = folds[0] if folds else None
    model_path = paths.finetune_model(dataset, args.arm, args.seed, fold)
    if not model_path.with_suffix(".safetensors").exists():
        raise DataError(f"no trained model at {model_path}.safetensors: run `dvc repro` first, or choose --dataset, "
                        "--arm, --seed (and --split) of a model that exists")
    classes_file = paths.raw(dataset) / "classes.txt"
    if not classes_file.exists():
        raise DataError(f"{classes_file} not found: run `dvc repro` (or `dvc pull`) first")
    classes = classes_file.read_text().splitlines()
    device = resolve_device(params.runtime.device)
    model = load_classifier(model_path, classes).to(device)
    backbone = load_backbone(paths.BACKBONE).to(device)
    with torch.inference_mode():
        m = _video_m(args.video, backbone, params, device)
        probs = model(m).softmax(-1).mean(0).cpu()
    top = torch.topk(probs, min(5, len(classes)))
    run = f"{args.arm} seed {args.seed}" + (f" split {fold}" if fold is not None else "")
    print(f"{args.video}  ({dataset}, {run}, {len(m)} views)")
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"  {p:6.1%}  {classes[i]}")


def describe(args) -> None:
    from fourtier.caption.backend import Record, Request, VLMError, make_backend
    from fourtier.config.base import PROMPT_IDS, load_params
    from fourtier.video.tiling import tile_video

    params = load_params()
    k = args.K or params.K
    name = args.vlm or params.vlm
    result = tile_video(_video(args.video), k, params.tile.height, params.tile.jpeg_quality, "video")
    if result.jpeg is None:
        raise VideoError(f"{args.video}: {result.row['reason']}")
    out = Path(args.tile or Path(args.video).with_suffix(".tile.jpg").name)
    out.write_bytes(result.jpeg)
    backend = make_backend(name, params.vlms, {"max_new_tokens": params.caption.max_new_tokens,
                                               "temperature": params.caption.temperature,
                                               "device": params.runtime.device})
    requests = [Request("video", p, params.caption.prompts[p], result.jpeg, k, p) for p in PROMPT_IDS]
    answers: dict[str, Record] = {}
    if backend.joint:  # one request for the four prompts, as the caption stage asks it (a throw-away cache)
        import tempfile

        from fourtier.caption.runner import AnswerCache, run_captions

        with tempfile.TemporaryDirectory() as tmp:
            cache = AnswerCache(Path(tmp) / "answers.sqlite")
            stats = run_captions(backend, requests, cache, max_failures=1.0)
            found = cache.get_many([r.key for r in requests])
            cache.close()
        how = "one joint request" if stats["joint_parsed"] else "four separate requests (the joint reply did not parse)"
        answers = {r.prompt_id: Record(**found[r.key]) if r.key in found else
                   Record("video", r.prompt_id, "", error="; ".join(stats["first_errors"]) or "no answer")
                   for r in requests}
    else:
        backend.run(requests, lambda r, rec: answers.__setitem__(r.prompt_id, rec))
        how = "four requests"
    print(f"tile: {out} (K={k}, frames {result.row['frame_indices']}, {result.row['reader']}); asked in {how}")
    for p in PROMPT_IDS:
        rec = answers[p]
        print(f"\n[{p}] {params.caption.prompts[p]}\n{rec.answer if rec.ok else 'ERROR: ' + rec.error}")
    failed = [p for p in PROMPT_IDS if not answers[p].ok]
    if failed:  # a failed request is no answer: say so in the exit code, not only in the text
        raise VLMError(f"{len(failed)} of {len(PROMPT_IDS)} prompts got no answer from {name} "
                       f"({', '.join(failed)}: {answers[failed[0]].error}); check the server or the model")


def info(args) -> None:
    from fourtier.config.base import load_params

    params = load_params()
    print("selectors:")
    for key in ("vlm", "K", "backbone", "text_encoder", "prompts", "pretrain", "targets"):
        print(f"  {key}: {params.raw[key]}")
    print("presets:")
    for key in ("vlms", "backbones", "text_encoders", "datasets"):
        print(f"  {key}: {', '.join(params.raw[key])}")
    print("artifacts:")
    artifacts = [paths.BACKBONE / "config.json", paths.align_model("ftp").with_suffix(".safetensors")]
    for ds in params.pretrain + params.targets:
        artifacts += [paths.raw(ds) / "manifest.json", paths.features(ds) / "meta.json"]
    for ds in params.pretrain:
        artifacts += [paths.tiles(ds) / "index.csv", paths.captions(ds) / "captions.jsonl",
                      paths.embeddings(ds) / "meta.json"]
    for ds in params.targets:
        artifacts += [paths.finetune_dir(ds), paths.evaluation(ds) / "metrics.json"]
    for p in artifacts:
        print(f"  [{'x' if p.exists() else ' '}] {p}")
    backbone_metrics = paths.BACKBONE / "metrics.json"
    if backbone_metrics.exists():
        print("backbone:", json.dumps(json.loads(backbone_metrics.read_text())))


def ablate(args) -> None:
    import shlex
    import subprocess

    from fourtier.evaluation.experiments import ablation_runs

    runs = ablation_runs(args.kind, args.values, [s for s in args.set or []])
    for run in runs:
        print(shlex.join(run.command()))
        if not args.dry_run:
            done = subprocess.run(run.command(), capture_output=True, text=True)
            if done.returncode != 0:
                raise DataError(f"`{shlex.join(run.command())}` failed:\n{done.stderr.strip() or done.stdout.strip()}")
    if not args.dry_run:
        print(f"queued {len(runs)} experiments; run them with `dvc queue start -j 1` (more jobs share the CPU "
              "cores), follow with `dvc queue status`, then `fourtier report`")


def report(args) -> None:
    import subprocess

    from fourtier.evaluation.experiments import (collect, few_shot_points, gain_per_dataset, plot_gains, report as render, write_few_shot_table)

    if args.json:
        raw = Path(args.json).read_text()
    else:
        done = subprocess.run(["dvc", "exp", "show", "--json", "-A"], capture_output=True, text=True)
        if done.returncode != 0:
            raise DataError(f"`dvc exp show --json` failed: {done.stderr.strip()}")
        raw = done.stdout
    try:
        results = collect(json.loads(raw))
    except (json.JSONDecodeError, AttributeError, TypeError) as exc:
        raise DataError(f"not `dvc exp show --json` output ({exc})") from None
    text = render(results)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    if args.fewshot_table and few_shot_points(results):
        write_few_shot_table(results, args.fewshot_table)
        print(f"wrote {args.fewshot_table} (few-shot top-1 against k per arm and dataset; `dvc plots show` draws "
              "analysis/results/fewshot/fewshot.csv)")
    gains = gain_per_dataset(results)
    if args.plot and gains:
        plot_gains(gains, args.plot)
        print(f"wrote {args.plot} (FTP gain per experiment and dataset)")


def plan_command(args) -> None:
    from fourtier.config.base import load_params
    from fourtier.runtime.plan import plan

    print(plan(load_params()))


@exits_cleanly
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="fourtier", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="classify one video with a trained model (no VLM)")
    p.add_argument("video")
    p.add_argument("--dataset", help="target dataset whose model to use (default: the first of `targets`)")
    p.add_argument("--arm", default="ftp", choices=ARMS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", type=int, default=None,
                   help="official split of a dataset run on several (split: all); default: its first")
    p.add_argument("--classes", help="zero-shot: comma-separated class names to rank with stage 1 alone")
    p.add_argument("--classes-file", help="zero-shot: a file of class names, one per line")
    p.set_defaults(run=predict)
    d = sub.add_parser("describe", help="save the tile of one video and print the VLM's four answers")
    d.add_argument("video")
    d.add_argument("--vlm", help="a preset under vlms: (default: params.yaml's vlm)")
    d.add_argument("-K", type=int, help="keyframes (default: params.yaml's K)")
    d.add_argument("--tile", help="where to save the tile (default: <video name>.tile.jpg here)")
    d.set_defaults(run=describe)
    i = sub.add_parser("info", help="resolved params, presets and which artifacts exist")
    i.set_defaults(run=info)
    a = sub.add_parser("ablate", help="queue one of the paper's ablations as DVC experiments")
    a.add_argument("kind", choices=ABLATIONS)
    a.add_argument("values", nargs="*", help="a subset: group numbers for prompts (1-17), K values, presets")
    a.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="an extra -S for every experiment, e.g. --set finetune.seeds=[0]")
    a.add_argument("--dry-run", action="store_true", help="print the dvc commands without queueing")
    a.set_defaults(run=ablate)
    pl = sub.add_parser("plan", help="the bill before a run: clips, disk and DVC files per output, the DVC cache, "
                                     "memory bound, captioning requests, tokens and price, time per stage")
    pl.set_defaults(run=plan_command)
    r = sub.add_parser("report", help="Markdown tables shaped like the paper's from `dvc exp show --json`")
    r.add_argument("--json", help="a saved `dvc exp show --json` output (default: run it)")
    r.add_argument("--out", help="write the Markdown here instead of printing it")
    r.add_argument("--plot", default="ablation_gains.png", help="bar plot of the FTP gain per experiment and dataset")
    r.add_argument("--fewshot-table", default="fewshot.csv",
                   help="top-1 against k per arm and target (shots experiments), a DVC plot's data")
    r.set_defaults(run=report)
    args = parser.parse_args(argv)
    if getattr(args, "K", None) is not None and args.K < 1:
        parser.error("-K must be >= 1")
    args.run(args)


if __name__ == "__main__":
    main()
