"""Across datasets: the class map, the scores it gives each test class, and the cross_dataset params."""
import numpy as np
import pytest
import yaml

from fourtier.errors import DataError, ParamsError
from fourtier.evaluation.transfer import mapped_scores, read_class_map, shared_clips
from helpers import REPO

TRAIN = ["playing guitar", "strumming guitar", "riding a bike", "yoga"]
TEST = ["Biking", "Diving", "PlayingGuitar"]


def write_map(tmp_path, text):
    path = tmp_path / "map.csv"
    path.write_text(text)
    return path


def test_many_training_classes_sum_into_their_test_class_and_unmapped_ones_keep_their_mass(tmp_path):
    mapping = read_class_map(write_map(tmp_path, "train_class,test_class\nplaying guitar,PlayingGuitar\n"
                                                 "strumming guitar,PlayingGuitar\nriding a bike,Biking\n"), TRAIN, TEST)
    assert mapping == {"playing guitar": "PlayingGuitar", "strumming guitar": "PlayingGuitar",
                       "riding a bike": "Biking"}
    shared = ["Biking", "PlayingGuitar"]  # Diving has no counterpart
    probs = np.array([[0.3, 0.3, 0.4, 0.0],    # guitar 0.6 beats bike 0.4, though bike is the top class
                      [0.1, 0.0, 0.2, 0.7],    # yoga (unmapped) takes most mass; bike 0.2 beats guitar 0.1
                      [0.0, 0.0, 0.0, 1.0]])
    scores = mapped_scores(probs, TRAIN, mapping, shared)
    np.testing.assert_allclose(scores, [[0.4, 0.6], [0.2, 0.1], [0.0, 0.0]])
    assert list(scores.argmax(1)[:2]) == [1, 0]


def test_only_clips_of_mapped_classes_are_tested_with_labels_over_the_shared_classes():
    mapping = {"riding a bike": "Biking", "playing guitar": "PlayingGuitar"}
    labels = np.array([2, 1, 0, 2, 1, 0])  # PlayingGuitar, Diving, Biking, ...
    idx, new_labels, shared = shared_clips(labels, np.array([0, 1, 2, 3]), TEST, mapping)
    assert shared == ["Biking", "PlayingGuitar"]  # the test dataset's order
    assert list(idx) == [0, 2, 3] and list(new_labels) == [1, 0, 1]  # Diving's clip 1 left out; 4, 5 not in idx


@pytest.mark.parametrize("text, message", [
    ("train,test\nyoga,Diving\n", "first line must be 'train_class,test_class'"),
    ("train_class,test_class\nplaying guitar\n", "map.csv:2: expected 2 fields"),
    ("train_class,test_class\nplaying guitars,PlayingGuitar\n", "'playing guitars' is not a class of the training "
                                                                "dataset (closest: 'playing guitar')"),
    ("train_class,test_class\nyoga,Yoga\n", "'Yoga' is not a class of the test dataset"),
    ("train_class,test_class\nyoga,Diving\nyoga,Biking\n", "map.csv:3: 'yoga' is mapped twice"),
    ("train_class,test_class\n\n", "maps no class"),
])
def test_a_bad_class_map_names_the_line_and_the_fix(tmp_path, text, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_class_map(write_map(tmp_path, text), TRAIN, TEST)


def test_a_missing_class_map_is_named(tmp_path):
    with pytest.raises(DataError, match="class map .*nope.csv not found"):
        read_class_map(tmp_path / "nope.csv", TRAIN, TEST)


def test_cross_dataset_entries_are_checked_against_the_targets(tmp_path):
    from fourtier.config.base import parse_params
    from fourtier.config.data import DataParams

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    class_map = write_map(tmp_path, "train_class,test_class\n")
    ok = {"train": "synth-scenes", "test": "synth-motion", "class_map": str(class_map)}
    assert parse_params({**raw, "cross_dataset": [ok]}, DataParams).cross_dataset[0].on == "val"
    for entry, message in [
        ({**ok, "test": "ucf101"}, r"'cross_dataset\[0\].test' is 'ucf101', which is not listed under 'targets'"),
        ({**ok, "test": "synth-scenes"}, r"'cross_dataset\[0\]' tests 'synth-scenes' on itself"),
        ({**ok, "class_map": str(tmp_path / "none.csv")}, r"'cross_dataset\[0\].class_map' is .*none.csv', which is "
                                                         "not a file"),
        ({**ok, "on": "train"}, r"'cross_dataset\[0\].on' is 'train', which is not one of: val, all"),
    ]:
        with pytest.raises(ParamsError, match=message):
            parse_params({**raw, "cross_dataset": [entry]}, DataParams)
    with pytest.raises(ParamsError, match="repeats 'synth-scenes' -> 'synth-motion'"):
        parse_params({**raw, "cross_dataset": [ok, ok]}, DataParams)
