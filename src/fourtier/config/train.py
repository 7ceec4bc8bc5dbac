"""The train group of params.yaml: the prompts FTP trains with, `align` (stage 1) and `finetune` (stage 2),
each with AdamW and its schedule (paper Tables A2/A3; params.yaml says how they are scaled for a CPU)."""
from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, StrictInt, StrictStr, field_validator

from fourtier.config.base import Invalid, Optimised, PROMPT_IDS, Real, Section, unique

ARMS = ("baseline", "ftp", "random", "shuffled")  # README, "Arms": the baseline, FTP and its two controls


class AlignParams(Optimised):
    seed: StrictInt = Field(ge=0)
    processor: Literal["attention", "paper"] = "attention"  # README, "The model and its two training stages"
    objective: Literal["pooled", "tokens"] = "pooled"  # InfoNCE on pooled vectors | on a token-wise score


class FinetuneParams(Optimised):
    arms: tuple[StrictStr, ...]
    seeds: tuple[StrictInt, ...]
    label_smoothing: Real = Field(ge=0.0, lt=1.0)
    mixup_alpha: Real = Field(ge=0.0)
    mixup_prob: Real = Field(ge=0.0, le=1.0)
    shots: StrictInt = Field(0, ge=0)  # labelled training clips per class; 0 = all (fourtier.evaluation.fewshot)
    shots_seed: StrictInt = Field(0, ge=0)  # which clips: the same for every arm and seed
    head: Literal["pooled", "flat"] = "pooled"  # pooled: the paper's (§3.1) | flat: a linear map of the whole f

    @field_validator("arms")
    @classmethod
    def _arms(cls, value: tuple) -> tuple:
        if not value:
            raise Invalid(f"'{{at}}' is empty, so nothing would be trained; name at least one of: {', '.join(ARMS)}")
        for i, arm in enumerate(value):
            if arm not in ARMS:
                raise Invalid(f"'{{at}}[{i}]' is {arm!r}, which is not one of: {', '.join(ARMS)}")
        return unique(value, "{at}", "an arm")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: tuple) -> tuple:
        if not value:
            raise Invalid("'{at}' is empty; give at least one seed, e.g. [0]")
        for i, seed in enumerate(value):
            if seed < 0:
                raise Invalid(f"'{{at}}[{i}]' must be a whole number >= 0, got {seed!r}")
        return unique(value, "{at}", "a seed")


class TrainGroup(Section):
    prompts: tuple[StrictStr, ...]
    align: AlignParams
    finetune: FinetuneParams

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: tuple) -> tuple:
        for i, p in enumerate(value):
            if p not in PROMPT_IDS:
                raise Invalid(f"'prompts[{i}]' is {p!r}, which is not one of: {', '.join(PROMPT_IDS)} "
                              "(use [] for the no-prompt baseline)")
        return unique(value, "prompts", "a prompt")


GROUP = TrainGroup
PROCESSORS = get_args(AlignParams.model_fields["processor"].annotation)  # README, "The model and its two ..."
OBJECTIVES = get_args(AlignParams.model_fields["objective"].annotation)
