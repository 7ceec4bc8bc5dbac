"""Evaluation: multi-view prediction, top-1/top-5 and paired gains, retrieval, zero- and few-shot
recognition, plots, and the ablation experiments' reports."""
