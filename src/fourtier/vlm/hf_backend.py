"""The `hf` VLM backend: transformers AutoProcessor + AutoModelForImageTextToText, batched generation.

The prompt is formatted with the processor's chat template when it has one (LLaVA, Qwen2-VL, Idefics3,
SmolVLM, InstructBLIP...), and in BLIP-2's "Question: ... Answer:" form otherwise. Device and dtype come
from the preset (device: cpu/cuda/auto, dtype: float32/float16/bfloat16), as do batch_size and offline
(true: use only the local cache, and fail at once when the model is not there). The model is
a hub id (needs its weights in the local Hugging Face cache, or network access) or a local directory.
"""
from __future__ import annotations

import time

from fourtier.vlm import OnRecord, Record, Request, VLMError, decode_tile

DTYPES = ("float32", "float16", "bfloat16")


class HFBackend:
    def __init__(self, name: str, preset: dict, generation: dict):
        if not preset.get("model"):
            raise VLMError(f"vlms.{name} needs a 'model': a Hugging Face model id or a local directory")
        self.name = name
        self.model_id = str(preset["model"])
        # the preset's own device wins; otherwise runtime.device (auto: the GPU when there is one)
        self.device = preset.get("device", generation.get("device", "auto"))
        self.dtype = preset.get("dtype", "float32")
        if self.dtype not in DTYPES:
            raise VLMError(f"vlms.{name}.dtype is {self.dtype!r}; use one of {', '.join(DTYPES)}")
        self.batch_size = int(preset.get("batch_size", 4))
        self.offline = bool(preset.get("offline", False))  # true: never try the hub, fail at once if not cached
        self.max_new_tokens = int(generation["max_new_tokens"])
        self.temperature = float(generation["temperature"])
        self.settings = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "dtype": self.dtype}
        self._model = None
        self._processor = None

    def _load(self):
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        def load(local_only: bool):
            processor = AutoProcessor.from_pretrained(self.model_id, local_files_only=local_only)
            model = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype=getattr(torch, self.dtype),
                                                                local_files_only=local_only)
            return processor, model

        try:
            try:  # a local folder or a cached model never touches the network
                self._processor, self._model = load(local_only=True)
            except (OSError, ValueError):
                if self.offline:
                    raise
                print(f"{self.model_id} is not in the local Hugging Face cache: downloading it", flush=True)
                self._processor, self._model = load(local_only=False)
        except (OSError, ValueError) as exc:
            raise VLMError(
                f"vlm {self.name!r}: cannot load {self.model_id!r} ({str(exc).splitlines()[0][:200]}). Without network "
                "access, download it on a machine that has it (huggingface-cli download <id>) and copy the Hugging "
                "Face cache or the model folder here; or use vlm=builtin, which works offline") from None
        from fourtier.runtime import resolve_device

        device = str(resolve_device(self.device))
        self._model.to(device).eval()
        self.device = device
        tokenizer = getattr(self._processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge

    def prompt_text(self, prompt: str) -> str:
        """The prompt in the form this model was trained on."""
        if getattr(self._processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self._processor.apply_chat_template(messages, add_generation_prompt=True)
        return f"Question: {prompt} Answer:"  # BLIP-2 style

    def run(self, requests: list[Request], on_record: OnRecord) -> None:
        import torch
        from PIL import Image
        from tqdm import tqdm

        self._load()
        sampling = {"do_sample": self.temperature > 0}
        if self.temperature > 0:
            sampling["temperature"] = self.temperature
        with tqdm(total=len(requests), desc=f"caption {self.name}", unit="answer", dynamic_ncols=True) as bar:
            for start in range(0, len(requests), self.batch_size):
                batch = requests[start:start + self.batch_size]
                images = [Image.fromarray(decode_tile(r.tile_jpeg)) for r in batch]
                texts = [self.prompt_text(r.prompt) for r in batch]
                began = time.perf_counter()
                inputs = self._processor(images=images, text=texts, return_tensors="pt", padding=True).to(self.device)
                with torch.inference_mode():
                    out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling)
                new_tokens = out[:, inputs["input_ids"].shape[1]:]
                answers = self._processor.batch_decode(new_tokens, skip_special_tokens=True)
                seconds = (time.perf_counter() - began) / len(batch)
                pad = getattr(getattr(self._processor, "tokenizer", None), "pad_token_id", None)
                for j, (r, text) in enumerate(zip(batch, answers)):
                    n_in = int(inputs["attention_mask"][j].sum())
                    n_out = int((new_tokens[j] != pad).sum()) if pad is not None else new_tokens.shape[1]
                    on_record(r, Record(r.video_id, r.prompt_id, text.strip(), input_tokens=n_in,
                                        output_tokens=n_out, latency_s=seconds,
                                        error="" if text.strip() else "empty answer"))
                bar.update(len(batch))
