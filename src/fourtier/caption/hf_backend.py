"""The `hf` VLM backend: transformers AutoProcessor + AutoModelForImageTextToText, batched generation
(batch_size requests at a time, taken from the request stream as it goes).

The prompt is formatted with the processor's chat template when it has one (LLaVA, Qwen2-VL, Idefics3,
SmolVLM, InstructBLIP...), and in BLIP-2's "Question: ... Answer:" form otherwise. Device and dtype come
from the preset (device: cpu/cuda/auto, dtype: float32/float16/bfloat16), as do batch_size and offline
(true: use only the local cache, and fail at once when the model is not there). The model is
a hub id (needs its weights in the local Hugging Face cache, or a hub that answers) or a local directory;
`fourtier.runtime.hub.load_pretrained` does the loading and turns every failure into a VLMError that says what to do.

Tiles are images, so a processor that would also build a video processor (Qwen2-VL, Qwen2.5-VL, ...) is loaded
without it when that video processor needs torchvision and torchvision is not installed.
"""
from __future__ import annotations

import inspect
import itertools
import time
import types
from typing import Iterable

from fourtier.caption.backend import OnRecord, Record, Request, VLMError, decode_tile

DTYPES = ("float32", "float16", "bfloat16")


def load_processor(model_id: str, local_only: bool):
    """AutoProcessor; when that fails for want of torchvision (a video processor), the model's processor class
    with its image processor and tokenizer only."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model_id, local_files_only=local_only)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
        image_only = image_only_processor_class(model_id, local_only)
        if image_only is None:
            raise
        return image_only.from_pretrained(model_id, local_files_only=local_only)


def image_only_processor_class(model_id: str, local_only: bool):
    """The model's processor class without its video processor, or None when it has none to drop."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    model_type = getattr(AutoConfig.from_pretrained(model_id, local_files_only=local_only), "model_type", None)
    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    return without_video(cls) if isinstance(cls, type) else None


def without_video(cls):
    """A subclass of processor class `cls` that has no video processor, or None when it has none to drop.

    ProcessorMixin takes its sub-processors from the signature of __init__: the subclass's __init__ runs the
    same code under a signature without the video processor parameter (which defaults to None), so the video
    processor is neither loaded nor checked, and everything else (image processor, tokenizer, chat template,
    options) loads and works as usual."""
    init = cls.__dict__.get("__init__")
    if not isinstance(init, types.FunctionType):
        return None
    signature = inspect.signature(init)
    names = list(signature.parameters)
    if not any("video_processor" in n for n in names):
        return None
    first_video = min(i for i, n in enumerate(names) if "video_processor" in n)
    if any(("processor" in n or "tokenizer" in n or "extractor" in n) and "video_processor" not in n
           for n in names[first_video:]):
        return None  # a sub-processor after the video one would take its place among the positional arguments
    code = init.__code__
    positional = code.co_varnames[1:code.co_argcount]  # after self
    defaults = dict(zip(positional[len(positional) - len(init.__defaults__ or ()):], init.__defaults__ or ()))
    videos = [i for i, n in enumerate(positional) if "video_processor" in n]
    new_defaults = tuple(defaults.get(n) for n in positional[videos[0]:]) if videos else init.__defaults__
    same_init = types.FunctionType(code, init.__globals__, init.__name__, new_defaults, init.__closure__)
    same_init.__kwdefaults__ = {**(init.__kwdefaults__ or {}),
                                **{n: None for n in code.co_varnames[code.co_argcount:code.co_argcount +
                                                                   code.co_kwonlyargcount] if "video_processor" in n}}
    same_init.__signature__ = signature.replace(parameters=[p for n, p in signature.parameters.items()
                                                            if "video_processor" not in n])
    return type(cls.__name__, (cls,), {"__init__": same_init, "__module__": cls.__module__, "__doc__": cls.__doc__})


class HFBackend:
    splits_across_ranks = True  # a model per GPU: under torchrun each rank answers its share (fourtier.caption.runner)

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
        from fourtier.runtime.hub import load_pretrained

        def load(local_only: bool):
            import torch
            from transformers import AutoModelForImageTextToText

            processor = load_processor(self.model_id, local_only)
            model = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype=getattr(torch, self.dtype),
                                                                local_files_only=local_only)
            return processor, model

        self._processor, self._model = load_pretrained(load, self.model_id, error=VLMError,
                                                       prefix=f"vlm {self.name!r}: ", fallback="vlm=builtin",
                                                       offline=self.offline)
        from fourtier.runtime.hardware import resolve_device

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

    def run(self, requests: Iterable[Request], on_record: OnRecord) -> None:
        import torch
        from PIL import Image
        from tqdm import tqdm

        self._load()
        sampling = {"do_sample": self.temperature > 0}
        if self.temperature > 0:
            sampling["temperature"] = self.temperature
        total = len(requests) if hasattr(requests, "__len__") else None  # a stream has no length
        stream = iter(requests)
        with tqdm(total=total, desc=f"caption {self.name}", unit="answer", dynamic_ncols=True) as bar:
            while batch := list(itertools.islice(stream, self.batch_size)):  # a batch at a time from the stream
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
