"""How the pipeline runs: the device and its threads, torchrun ranks and their collectives, the
launcher, process pools, model hubs, and `fourtier plan`'s cost estimates."""
