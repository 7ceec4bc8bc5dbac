"""The runtime group of params.yaml: where the work runs (device, processes, nodes) and how they start and
wait. Only `device` and the world size change numbers (README, "Devices"); the rest changes speed."""
from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator

from fourtier.config.base import Invalid, Section


class RuntimeParams(Section):
    workers: StrictInt = Field(2, ge=1)  # processes for per-video work (decoding, tiling, SynthAct)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # see fourtier.runtime.hardware
    loader_workers: Union[StrictInt, StrictStr] = "auto"  # training/evaluation data-loading processes, or auto
    # several processes (fourtier.runtime.launch): ranks per node and nodes, how they start and find each other
    nproc_per_node: StrictInt = Field(1, ge=1)
    nnodes: StrictInt = Field(1, ge=1)
    launcher: Literal["torchrun", "srun"] = "torchrun"  # srun: SLURM, one torchrun per node of the allocation
    rdzv_endpoint: StrictStr = ""  # host:port of the rendezvous; "" = this host (standalone on one node)
    stage2_parallel: Literal["runs", "ddp"] = "runs"  # runs: stage-2 runs spread over the ranks | ddp: each over all
    timeout_s: StrictInt = Field(1800, ge=10)  # a collective that waits longer is an error naming the rank
    checkpoint_dir: StrictStr = ""  # resumable state; "" = the cache dir; several nodes: a directory all share

    @field_validator("loader_workers", mode="before")
    @classmethod
    def _loader(cls, value):
        if value != "auto" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise Invalid(f"'{{at}}' must be auto or a whole number >= 0, got {value!r}")
        return value

    @field_validator("rdzv_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if value and not (host and port.isdigit() and 0 < int(port) < 65536):
            raise Invalid(f"'{{at}}' must be host:port (e.g. node001:29500), got {value!r}")
        return value

    @model_validator(mode="after")
    def _meeting_point(self):
        if self.nnodes > 1 and self.launcher == "torchrun" and not self.rdzv_endpoint:
            raise Invalid("'runtime.nnodes' is above 1 with launcher torchrun, so the nodes need a meeting point: "
                          "set 'runtime.rdzv_endpoint' to host:port of the first node (or use launcher: srun inside "
                          "a SLURM allocation)")
        return self

    @property
    def world(self) -> int:
        return self.nproc_per_node * self.nnodes


class RuntimeGroup(Section):
    runtime: RuntimeParams = Field(default_factory=RuntimeParams)

    @property
    def workers(self) -> int:
        return self.runtime.workers


GROUP = RuntimeGroup
