"""caption stage: the four prompts for every tile of a pretraining dataset (data/captions/<ds>).

With an `hf` VLM and runtime.nproc_per_node x nnodes above 1 it runs under torchrun: a model per GPU, each rank
its share of the missing answers, one answer cache and one output, the same as one process writes, a chunk of
tiles at a time. Other backends run as one process (the server does the parallel work) over one stream of
requests across every chunk (fourtier.caption.runner.caption_chunks), so a server stays at its concurrency from the
first request to the last; captions.jsonl is then written from the cache in a second pass over the chunks.

    python stages/caption.py synth-pretrain --dry-run   # calls, tokens and cost it would spend; spends nothing
"""
import argparse
import json
import shutil

from fourtier.caption.runner import (AnswerCache, build_requests, caption_chunks, joint_requests, missing_positions, run_captions_ranked, write_captions)
from fourtier import paths
from fourtier.caption.backend import make_backend
from fourtier.config.base import load_params
from fourtier.config.caption import CaptionGroup
from fourtier.config.data import DataParams
from fourtier.config.runtime import RuntimeGroup
from fourtier.errors import exits_cleanly
from fourtier.runtime import distributed
from fourtier.runtime.launch import extra_rank, relaunch


@exits_cleanly
@distributed.names_rank
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a pretraining dataset, already tiled in data/tiles/<dataset>")
    parser.add_argument("--dry-run", action="store_true", help="print what the run would ask and cost, then stop")
    args = parser.parse_args()
    params = load_params(DataParams, CaptionGroup, RuntimeGroup)
    params.dataset(args.dataset)
    cap = params.caption
    backend = make_backend(params.vlm, params.vlms, {"max_new_tokens": cap.max_new_tokens,
                                                     "temperature": cap.temperature,
                                                     "device": params.runtime.device}, params.workers)
    ranked = getattr(backend, "splits_across_ranks", False) and not backend.joint and not args.dry_run
    if not ranked and extra_rank(f"caption {args.dataset}"):
        return
    if ranked:
        relaunch(params.runtime, f"caption {args.dataset}")
        from fourtier.runtime.hardware import resolve_device

        distributed.setup(resolve_device(params.runtime.device), params.runtime.timeout_s)
    main_rank = distributed.is_main()
    settings = {**backend.settings, "K": params.K}

    def chunks():
        return build_requests(paths.tiles(args.dataset), params.K, cap.prompts, backend.model_id, settings)

    cache = AnswerCache()
    if args.dry_run:  # a chunk at a time, as the run itself: memory bounded by the chunk, whatever the corpus
        needed = cached_n = calls_n = tokens_in = tokens_out = 0
        for requests in chunks():
            missing = [requests[i] for i in missing_positions(requests, cache)]  # as the run decides: a cached
            # failure or empty answer is asked again
            calls = joint_requests(missing)[0] if backend.joint else missing  # what would be sent
            needed, cached_n, calls_n = needed + len(requests), cached_n + len(requests) - len(missing), calls_n + len(calls)
            if hasattr(backend, "estimate") and calls:
                part = backend.estimate(calls)  # additive over requests
                tokens_in, tokens_out = tokens_in + part["input_tokens"], tokens_out + part["output_tokens"]
        print(f"caption {args.dataset} with {params.vlm} ({backend.model_id}): {needed} answers needed, "
              f"{cached_n} cached, {calls_n} calls to make" + (" (joint: one per tile)" if backend.joint else ""))
        if hasattr(backend, "estimate") and calls_n:
            print(f"  estimated: {tokens_in:,} input + up to {tokens_out:,} output tokens, "
                  f"about ${backend.cost(tokens_in, tokens_out):.2f} (prices from vlms.{params.vlm})")
        return
    out = paths.captions(args.dataset)
    stats = {"cached": 0, "called": 0, "failed": 0, "seconds": 0.0}
    totals: dict = {}
    private = paths.cache_dir() / "answers-ranks" / args.dataset  # each rank's answers until rank 0 has them
    if distributed.world() == 1:  # one stream over every chunk, then the output from the cache, chunk by chunk
        stats = caption_chunks(backend, chunks(), cache, cap.max_failures)
        for n, requests in enumerate(chunks()):
            chunk_totals = write_captions(out, requests, cache, params.vlm, backend.model_id, settings, append=n > 0)
            totals = {k: totals.get(k, 0) + v for k, v in chunk_totals.items()}
    else:  # a torchrun group: a chunk of tiles at a time, each chunk's answers cached as they arrive
        for n, requests in enumerate(chunks()):
            chunk_stats = run_captions_ranked(backend, requests, cache, cap.max_failures, private)
            for key in stats:
                stats[key] += chunk_stats[key]
            if main_rank:
                chunk_totals = write_captions(out, requests, cache, params.vlm, backend.model_id, settings,
                                              append=n > 0)
                totals = {k: totals.get(k, 0) + v for k, v in chunk_totals.items()}
    distributed.teardown()
    shutil.rmtree(private, ignore_errors=True)
    if not main_rank:
        return
    cost = backend.cost(totals["input_tokens"], totals["output_tokens"]) if hasattr(backend, "cost") else 0.0
    metrics = {"vlm": params.vlm, "model": backend.model_id, "answers": totals["answers"],
               "missing": totals["missing"], "input_tokens": totals["input_tokens"],
               "output_tokens": totals["output_tokens"], "estimated_cost_usd": round(cost, 4)}
    if backend.joint:  # answers from a parsed joint reply, and from the separate requests after one that did not parse
        metrics.update(joint_parsed_answers=totals["joint_parsed"], joint_fallback_answers=totals["joint_fallback"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    rate = stats["called"] / stats["seconds"] if stats["seconds"] > 0 else 0.0
    # how long the answers took and how many tries they needed depend on the machine and the server: kept out
    # of metrics.json (a stage output, in dvc.lock) so that the same answers give the same lock anywhere
    timings = {"mean_latency_s": round(totals["latency_s"] / max(totals["answers"], 1), 4),
               "mean_attempts": round(totals["attempts"] / max(totals["answers"], 1), 3),
               "asked_now": stats["called"], "asked_per_s": round(rate, 2)}
    paths.TIMINGS.mkdir(parents=True, exist_ok=True)
    paths.timings("caption", args.dataset).write_text(json.dumps(timings, indent=1) + "\n")
    print(f"caption {args.dataset}: {totals['answers']} answers ({stats['cached']} from cache, {stats['called']} "
          f"asked now at {rate:.1f}/s, {stats['failed']} failed), cache {cache.path}")
    if backend.joint:
        print(f"  joint: {totals['joint_parsed']} answers from parsed joint replies, {totals['joint_fallback']} asked "
              "separately after a reply that did not parse")


if __name__ == "__main__":
    main()
