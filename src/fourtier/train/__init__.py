"""Training: stage 1 (InfoNCE alignment of the feature processors, paper §3.2), stage 2 (integration and
classifier, §3.3), their losses, text targets, epoch plans, optimiser and checkpoints, and the tiny
backbone's pretraining."""
