"""Across datasets (README, "Across datasets"): the stage-2 models of one target tested on another target's clips
of the classes both share, through a class-map file (e.g. Kinetics-400 to UCF-101 or HMDB51).

The class map is a CSV with the header `train_class,test_class`, one row per class of the training dataset that
has a counterpart in the test dataset; several training classes may map to one test class (Kinetics' 'playing
guitar' and 'strumming guitar' to UCF-101's PlayingGuitar), a training class maps to one test class at most.
A clip's score for test class c is the summed probability of the training classes mapped to c: the classifier's
softmax over all its classes, restricted to the mapped ones, so an unmapped class can still take the mass (as
it would in deployment), and top-1 is over the mapped test classes. Test clips whose class is not mapped are
left out and counted.
"""
from __future__ import annotations

import csv
import difflib
from pathlib import Path

import numpy as np

from fourtier.errors import DataError

COLUMNS = ["train_class", "test_class"]


def _closest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f" (closest: {close[0]!r})" if close else ""


def read_class_map(path: Path, train_classes: list[str], test_classes: list[str]) -> dict[str, str]:
    """{training class: test class}, every name checked against the two datasets' classes.txt."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class map {path} not found: a CSV with the header 'train_class,test_class' (README, "
                        "\"Across datasets\")")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != COLUMNS:
            raise DataError(f"{path}: the first line must be 'train_class,test_class', found {header!r}")
        mapping: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != 2:
                raise DataError(f"{path}:{line}: expected 2 fields (train_class,test_class), found {len(row)}: {row!r}")
            train, test = (cell.strip() for cell in row)
            if train not in train_classes:
                raise DataError(f"{path}:{line}: {train!r} is not a class of the training dataset"
                                f"{_closest(train, train_classes)}; names are as in its classes.txt")
            if test not in test_classes:
                raise DataError(f"{path}:{line}: {test!r} is not a class of the test dataset"
                                f"{_closest(test, test_classes)}; names are as in its classes.txt")
            if train in mapping:
                raise DataError(f"{path}:{line}: {train!r} is mapped twice (to {mapping[train]!r} and {test!r}); a "
                                "training class maps to one test class")
            mapping[train] = test
    if not mapping:
        raise DataError(f"{path} maps no class: add rows 'train_class,test_class'")
    return mapping


def mapped_scores(probs: np.ndarray, train_classes: list[str], mapping: dict[str, str],
                  test_classes: list[str]) -> np.ndarray:
    """(N, len(test_classes)): column j is the summed probability of the training classes mapped to
    test_classes[j]."""
    to_test = np.zeros((len(train_classes), len(test_classes)), probs.dtype)
    column = {c: j for j, c in enumerate(test_classes)}
    for train, test in mapping.items():
        to_test[train_classes.index(train), column[test]] = 1.0
    return probs @ to_test


def shared_clips(labels: np.ndarray, idx: np.ndarray, classes: list[str], mapping: dict[str, str]):
    """The test clips (of idx) whose class is mapped, their labels re-indexed over the mapped test classes (in
    the test dataset's order), and those classes."""
    shared = [c for c in classes if c in set(mapping.values())]
    new_index = np.full(len(classes), -1)
    for j, c in enumerate(shared):
        new_index[classes.index(c)] = j
    kept = idx[new_index[labels[idx]] >= 0]
    return kept, new_index[labels[kept]], shared
