"""Loading Hugging Face models: a local folder, else the local cache, else the hub, but only when the hub answers.

`load_pretrained(load, model_id, ...)` is the one place that does it, for the hf VLM backend, the text encoders
and the hub backbones. `load(local_only)` does the actual `from_pretrained` calls with local_files_only=local_only.

- A local folder is loaded from disk and nothing else.
- A hub id is first loaded from the local cache, which never touches the network.
- When that fails, offline mode (the preset's `offline: true`, HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1) fails at
  once; otherwise one request with a short timeout (`HUB_TIMEOUT`) asks whether the hub answers at all, so an
  unreachable hub fails in seconds instead of after minutes of retried downloads. Only a hub that answers is
  downloaded from.
- Every failure, a missing Python package included, is raised as the caller's error type with a message that
  names what could not be loaded, why, and the fix; never as a traceback.
"""
from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

HUB_TIMEOUT = 8.0  # s for the hub to answer one request before it counts as unreachable

# what from_pretrained raises for a model it cannot load (transformers wraps most hub errors in OSError)
LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, RuntimeError, TypeError,
                                                AttributeError, IndexError)


def _first_line(exc: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline_reason(offline: bool = False) -> str | None:
    """Why the hub must not be tried (the preset's offline flag, or the environment's), or None."""
    if offline:
        return "offline: true in its preset"
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _is_true(os.environ.get(var)):
            return f"{var}=1"
    try:
        from huggingface_hub import constants

        if constants.is_offline_mode():
            return "HF_HUB_OFFLINE=1"
    except ImportError:
        pass
    return None


def hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except ImportError:
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_unreachable(model_id: str = "", timeout: float = HUB_TIMEOUT) -> str | None:
    """None when the hub answers one request (any HTTP status will do) within `timeout` seconds; else why not.

    One request, no retries, bounded by a thread so that even a hanging name lookup cannot hold it longer."""
    url = f"{hub_endpoint()}/api/models/{model_id}".rstrip("/")
    result: dict[str, str] = {}

    def probe():
        try:
            from huggingface_hub.utils import get_session

            get_session().head(url, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any failure to get an answer means: not reachable
            cause = exc
            while cause.__cause__ is not None and type(cause).__module__.startswith("huggingface_hub"):
                cause = cause.__cause__
            result["error"] = f"{type(cause).__name__}: {_first_line(cause, 120)}"
        else:
            result["error"] = ""

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if "error" not in result:
        return f"no answer in {timeout:.0f} s"
    return result["error"] or None


def download_hint(model_id: str) -> str:
    try:
        from huggingface_hub import constants

        cache = constants.HF_HUB_CACHE
    except ImportError:
        cache = "~/.cache/huggingface/hub"
    return (f"Where there is network, download it with `hf download {model_id}` (`huggingface-cli download "
            f"{model_id}` with an older huggingface_hub) and copy the Hugging Face cache ({cache}) here, or save it "
            "with save_pretrained to a folder and give that folder instead of the id")


def missing_package_message(label: str, exc: ImportError, fallback: str) -> str:
    """`label` needs a package that is not installed: which one, and how to get it."""
    text = " ".join(str(exc).split())
    found = re.search(r"requires the (\S+?) librar", text)
    package = (found.group(1) if found else (getattr(exc, "name", None) or "").split(".")[0]).lower() or None
    package = {"pil": "pillow", "sklearn": "scikit-learn", "cv2": "opencv-python"}.get(package, package)
    if package == "torchvision":
        try:
            import torch

            build = f" that matches torch {torch.__version__}"
        except ImportError:
            build = ""
        fix = (f"install the torchvision build{build} (https://pytorch.org/get-started/locally/), or use a model "
               "whose processor does not need it")
    elif package:
        fix = f"install it ({sys.executable} -m pip install {package})"
    else:
        fix = "install what it names"
    what = f"the Python package {package!r}, which is not installed" if package else "a Python package that is missing"
    return f"cannot load {label}: it needs {what} ({text[:200]}). To fix: {fix}; or {fallback}"


def _cached(model_id: str) -> bool:
    """Whether the local cache holds at least the model's config.json."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the hub library rejects is not cached
        return False


def _looks_like_path(model_id: str) -> bool:
    return (model_id.startswith(("/", ".", "~")) or "\\" in model_id or model_id.count("/") > 1
            or Path(model_id).is_dir())


def load_pretrained(load: Callable[[bool], T], model_id: str, *, error: type[Exception], what: str = "",
                    prefix: str = "", fallback: str = "", offline: bool = False) -> T:
    """`load(local_only)` for `model_id`: from a local folder, else the local cache, else the hub if it answers.

    Any failure is raised as `error`: "<prefix>cannot load <what> '<id>': <why>. <the fix>; or <fallback>"."""
    label = f"{what} {model_id!r}" if what else repr(model_id)
    fallback = f"use {fallback}, which works offline" if fallback else "use a model that is available here"

    def attempt(local_only: bool):
        try:
            return load(local_only), None
        except ImportError as exc:  # downloading cannot help: say which package is missing
            raise error(prefix + missing_package_message(label, exc, fallback)) from None
        except LOAD_ERRORS as exc:
            return None, exc

    if _looks_like_path(model_id):
        folder = Path(model_id).expanduser()
        if not folder.is_dir():
            raise error(f"{prefix}cannot load {label}: there is no such folder. Give an existing folder saved with "
                        f"save_pretrained, or a Hugging Face model id; or {fallback}")
        result, exc = attempt(True)
        if exc is not None:
            raise error(f"{prefix}cannot load {label} from that folder: {_first_line(exc)}. Check that it holds "
                        f"a complete model saved with save_pretrained; or {fallback}") from None
        return result

    result, exc = attempt(True)  # the local cache: never touches the network
    if exc is None:
        return result
    why = (f"its copy in the local Hugging Face cache does not load ({_first_line(exc, 160)})" if _cached(model_id)
           else "it is not in the local Hugging Face cache")
    reason = offline_reason(offline)
    if reason is not None:
        raise error(f"{prefix}cannot load {label}: {why}, and the hub is not tried ({reason}). "
                    f"{download_hint(model_id)}; or {fallback}")
    unreachable = hub_unreachable(model_id)
    if unreachable is not None:
        raise error(f"{prefix}cannot load {label}: {why}, and the Hugging Face hub ({hub_endpoint()}) is "
                    f"unreachable ({unreachable}). {download_hint(model_id)}; or {fallback}")
    print(f"{model_id} is not in the local Hugging Face cache: downloading it from {hub_endpoint()}", flush=True)
    result, exc = attempt(False)
    if exc is not None:
        raise error(f"{prefix}cannot load {label}: {_first_line(exc)}. {download_hint(model_id)}; "
                    f"or {fallback}") from None
    return result
