"""The text group of params.yaml: the text encoder of the VLM answers (`text_encoder`, `text_encoders`) and
`embed` (paper §3.2: the e_i)."""
from __future__ import annotations

from pydantic import Field, StrictInt, StrictStr, model_validator

from fourtier.config.base import Presets, Section, check_selector


class EmbedParams(Section):
    batch_size: StrictInt = Field(ge=1)
    max_tokens: StrictInt = Field(ge=1)  # token-level embeddings kept per answer (the pooled vector uses all)
    max_length: StrictInt = Field(ge=8)  # tokens the encoder reads per answer


class TextGroup(Section):
    text_encoder: StrictStr
    text_encoders: Presets
    embed: EmbedParams

    @model_validator(mode="after")
    def _text_checks(self):
        check_selector(self.text_encoder, self.text_encoders, "text_encoder", "text_encoders")
        return self


GROUP = TextGroup
