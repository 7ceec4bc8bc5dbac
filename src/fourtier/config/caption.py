"""The caption group of params.yaml: the VLM (`vlm`, `vlms`), K and `tile` (the keyframe tiles it is shown),
and `caption` (the four prompts and generation settings; paper §3.2)."""
from __future__ import annotations

from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator

from fourtier.config.base import PROMPT_IDS, Invalid, Presets, Real, Section, check_selector

JPEG_MAX_SIDE = 65500  # JPEG's limit on a side, in px (fourtier.video.tiling writes tiles as JPEG)


class TileParams(Section):
    height: StrictInt = Field(ge=16)
    jpeg_quality: StrictInt = Field(ge=1)
    shard_above: StrictInt = Field(ge=0)
    shard_size: StrictInt = Field(ge=1)

    @field_validator("jpeg_quality")
    @classmethod
    def _quality(cls, value: int) -> int:
        if value > 100:
            raise Invalid(f"'{{at}}' must be in 1..100, got {value}")
        return value


class CaptionParams(Section):
    prompts: dict[StrictStr, StrictStr]  # id -> text, always all four
    max_new_tokens: StrictInt = Field(ge=1)
    temperature: Real = Field(ge=0.0)
    max_failures: Real = Field(ge=0.0, lt=1.0)  # fraction of requests allowed to fail after retries

    @field_validator("prompts")
    @classmethod
    def _four(cls, value: dict) -> dict:
        if sorted(value) != list(PROMPT_IDS) or not all(text.strip() for text in value.values()):
            raise Invalid(f"'{{at}}' must give a non-empty text for each of A, B, C, D (got keys {sorted(value)})")
        return value


class CaptionGroup(Section):
    vlm: StrictStr
    vlms: Presets
    K: StrictInt
    tile: TileParams
    caption: CaptionParams

    @field_validator("K")
    @classmethod
    def _k(cls, value: int) -> int:
        if value < 1:
            raise Invalid(f"'K' (keyframes per tile) must be >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _caption_checks(self):
        check_selector(self.vlm, self.vlms, "vlm", "vlms")
        if self.K * self.tile.height > JPEG_MAX_SIDE:  # a square video's panels are `height` px wide
            raise Invalid(f"K={self.K} panels of tile.height={self.tile.height} px make tiles at least "
                          f"{self.K * self.tile.height:,} px wide for square or wider videos, over JPEG's limit of "
                          f"{JPEG_MAX_SIDE:,}; lower K or tile.height")
        return self


GROUP = CaptionGroup
