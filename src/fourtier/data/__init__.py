"""Datasets and their storage: the output contract of `download`, one module per kind of source (SynthAct, your
own folder, Kinetics, SSv2, UCF-101, HMDB51), and the stores large outputs are written to (per-item files or zip
shards; arrays in .npy shards)."""
