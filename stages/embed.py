"""embed stage: text embeddings of every answer: token-level e_i with mask, and a pooled vector (data/embeddings/<ds>).
captions.jsonl is streamed and the arrays written in place, so memory is bounded by embed.batch_size (not the
corpus, nor the longest answer beyond embed.max_length tokens). With runtime.nproc_per_node x nnodes above 1 it
runs under torchrun, each rank its share of the batches (the same bytes)."""
import argparse
import time

import torch

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.config.data import DataParams
from fourtier.config.runtime import RuntimeGroup
from fourtier.config.text import TextGroup
from fourtier.errors import DataError, exits_cleanly
from fourtier.runtime import distributed
from fourtier.runtime.hardware import resolve_device
from fourtier.runtime.launch import relaunch, threads_per_process
from fourtier.text.embed import embed_captions
from fourtier.text.encoder import make_encoder


@exits_cleanly
@distributed.names_rank
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="a captioned pretraining dataset (data/captions/<dataset>)")
    args = parser.parse_args()
    params = load_params(DataParams, TextGroup, RuntimeGroup)
    params.dataset(args.dataset)
    relaunch(params.runtime, f"embed {args.dataset}")
    torch.set_num_threads(threads_per_process(params.workers))
    captions = paths.captions(args.dataset) / "captions.jsonl"
    if not captions.exists():  # before the encoder loads: the error comes at once
        raise DataError(f"{captions} not found: run the caption stage first (dvc repro)")
    device = resolve_device(params.runtime.device)
    distributed.setup(device, params.runtime.timeout_s)
    encoder = make_encoder(params.text_encoder, params.text_encoders, params.embed.max_length, str(device))
    start = time.perf_counter()
    meta = embed_captions(captions, paths.embeddings(args.dataset), encoder, params.embed.batch_size,
                          params.embed.max_tokens)
    distributed.teardown()
    if meta is None:  # another rank than 0: rank 0 reports
        return
    seconds = time.perf_counter() - start
    print(f"embed {args.dataset}: {meta['texts']} answers with {params.text_encoder} ({meta['model']}), "
          f"on {device}, {meta['texts'] / seconds:.0f} texts/s, tokens {meta['token_dim']}-d, pooled {meta['pooled_dim']}-d")


if __name__ == "__main__":
    main()
