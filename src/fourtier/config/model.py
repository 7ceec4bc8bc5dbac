"""The model group of params.yaml: the frozen backbone (`backbone`, `backbones`), the `tiny` backbone's own
pretraining (`backbone_train`) and `features` (the cached feature map m, its views and shards)."""
from __future__ import annotations

from pydantic import Field, StrictBool, StrictInt, StrictStr, model_validator

from fourtier.config.base import Invalid, Optimised, Presets, Section, check_selector


class BackboneTrainParams(Optimised):
    corpus: StrictStr  # the dataset (under datasets:) the `tiny` backbone is pretrained on; made inside the stage
    temporal_views: StrictInt = Field(ge=1)  # augmentation: a random one of these per sample
    flips: StrictBool = True  # augmentation: horizontal flips
    time_reversal: StrictBool = True  # augmentation: clips played backwards
    seed: StrictInt = Field(ge=0)


class FeaturesParams(Section):
    temporal_views: StrictInt = Field(ge=1)  # clips per video (sparse sampling)
    spatial_views: StrictInt = Field(ge=1)  # crops per clip
    batch_size: StrictInt = Field(ge=1)  # clips per backbone forward (speed only)
    cache: StrictBool = True  # false: m is computed from the videos whenever a stage needs it, nothing stored
    shard_mb: StrictInt = Field(2048, ge=1)  # m is stored in .npy shards of at most this size


class ModelGroup(Section):
    backbone: StrictStr
    backbones: Presets
    backbone_train: BackboneTrainParams
    features: FeaturesParams

    @model_validator(mode="after")
    def _model_checks(self):
        check_selector(self.backbone, self.backbones, "backbone", "backbones")
        corpus = self.backbone_train.corpus
        datasets, targets = getattr(self, "datasets", None), getattr(self, "targets", ())
        if datasets is not None and corpus not in datasets:  # validated with the data group (load_params)
            raise Invalid(f"'backbone_train.corpus' is {corpus!r}, which is not defined under 'datasets:' "
                          f"(defined: {', '.join(sorted(datasets))})")
        if corpus in targets:
            raise Invalid(f"'backbone_train.corpus' is {corpus!r}, a target: the frozen encoder would have been "
                          "trained on the clips it is evaluated on; pretrain it on another dataset")
        return self


GROUP = ModelGroup
