"""embed stage: text embeddings of every answer: token-level e_i with mask, and a pooled vector (data/embeddings/<ds>)."""
import argparse
import time

import torch

from fourtier import paths
from fourtier.errors import exits_cleanly
from fourtier.launch import extra_rank
from fourtier.params import load_params
from fourtier.runtime import resolve_device
from fourtier.text import embed_captions, make_encoder, read_captions


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="a captioned pretraining dataset (data/captions/<dataset>)")
    args = parser.parse_args()
    if extra_rank(f"embed {args.dataset}"):
        return
    params = load_params()
    params.dataset(args.dataset)
    torch.set_num_threads(params.workers)
    captions = read_captions(paths.captions(args.dataset) / "captions.jsonl")
    device = resolve_device(params.runtime.device)
    encoder = make_encoder(params.text_encoder, params.text_encoders, params.embed.max_length, str(device))
    start = time.perf_counter()
    meta = embed_captions(captions, paths.embeddings(args.dataset), encoder, params.embed.batch_size,
                          params.embed.max_tokens)
    seconds = time.perf_counter() - start
    print(f"embed {args.dataset}: {meta['texts']} answers with {params.text_encoder} ({meta['model']}), "
          f"on {device}, {meta['texts'] / seconds:.0f} texts/s, tokens {meta['token_dim']}-d, pooled {meta['pooled_dim']}-d")


if __name__ == "__main__":
    main()
