"""Lexicon-assisted reading (senlinuc/caffe_ocr's English mode): the word search against a brute-force edit
distance, the CTC choice against every alignment summed by hand, and ``caffe recognize --lexicon`` on the CRNN
trained in tests/ocr_fixtures.py."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from ocr_fixtures import LABELS, MEAN, deploy_net, strip_pixels

from caffe import deploy
from caffe.deploy.errors import ModelFilesError
from caffe.deploy.lexicon import Lexicon, best_by_ctc
from caffe.layers.ctc import edit_distance
from caffe.tools.cli import main


def test_near_finds_exactly_the_words_within_the_distance():
    rng = np.random.default_rng(3)
    words = ["".join(rng.choice(list("abcde"), rng.integers(1, 8))) for _ in range(400)]
    lexicon = Lexicon(words)
    for query in ("abc", "edcba", "aaaa", "b", "cdecdec"):
        for distance in (0, 1, 2):
            expected = {w for w in lexicon_words(words) if edit_distance(list(query), list(w)) <= distance}
            assert set(lexicon.near(query, distance)) == expected


def lexicon_words(words: list[str]) -> set[str]:
    return {v for w in words for v in (w, w[:1].upper() + w[1:], w.upper())}


def test_words_come_as_written_capitalized_and_upper_case_nearest_first():
    lexicon = Lexicon(["hello", " world ", "", "x" * 65])
    assert lexicon.size == 6  # hello Hello HELLO world World WORLD; the blank line and the 65-letter one skipped
    assert lexicon.near("HELL0", 1) == ["HELLO"]
    near = lexicon.near("Hallo", 2)
    assert near[0] == "Hello" and set(near) == {"Hello", "hello"}  # 1 edit, then 2; HELLO is 4 away


def brute_cost(log_probs: np.ndarray, word: list[int], blank: int) -> float:
    total = 0.0
    for path in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
        if collapsed == word:
            total += math.exp(sum(log_probs[t, c] for t, c in enumerate(path)))
    return -math.log(total) if total else math.inf


def test_the_word_the_scores_make_likeliest_wins():
    labels = ["blank", "a", "b", "c"]
    rng = np.random.default_rng(4)
    for _ in range(5):
        scores = torch.from_numpy(rng.normal(0, 2, (5, 4)))
        words = ["ab", "ba", "abc", "cc", "cab", "dog"]  # 'dog' is not spelt in the labels
        log_probs = torch.log_softmax(scores, dim=1).numpy()
        costs = {w: brute_cost(log_probs, [labels.index(c) for c in w], 0) for w in words[:-1]}
        assert best_by_ctc(scores, words, labels, 0) == min(costs, key=costs.get)
    assert best_by_ctc(torch.zeros(2, 4), ["abc"], labels, 0) is None  # 3 letters cannot fit 2 steps
    assert best_by_ctc(torch.zeros(5, 4), ["dog"], labels, 0) is None


@pytest.fixture(scope="module")
def reading(crnn_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp("ocr_lexicon")
    (folder / "deploy.prototxt").write_text(deploy_net())
    (folder / "model.caffemodel").write_bytes((crnn_weights / "crnn.caffemodel").read_bytes())
    (folder / "label.txt").write_text("\n".join(LABELS) + "\n")
    (folder / "mean_values.txt").write_text(f"{MEAN}\n")
    pixels, labels = strip_pixels(np.random.default_rng(9), 20)
    i = next(k for k, row in enumerate(labels) if (row > 0).sum() == 4)  # a four-letter strip: distance 1 allowed
    cv2.imwrite(str(folder / "strip.png"), pixels[i])
    return folder, folder / "strip.png", "".join(LABELS[int(c)] for c in labels[i] if c > 0)


def read(folder: Path, image: Path, words: list[str], capsys) -> dict:
    (folder / "words.txt").write_text("\n".join(words) + "\n")
    assert main(["recognize", str(folder), str(image), "--lexicon", str(folder / "words.txt"), "--format=json"]) == 0
    return json.loads(capsys.readouterr().out)[0]


def test_caffe_recognize_with_a_lexicon(reading: tuple[Path, Path, str], capsys):
    folder, image, text = reading
    other = {"a": "b", "b": "c", "c": "d", "d": "e", "e": "a"}
    neighbour = other[text[0]] + text[1:]  # one substitution away, and less likely
    record = read(folder, image, [neighbour], capsys)
    assert (record["text"], record["decoded"]) == (neighbour, text)  # the only candidate
    assert read(folder, image, [neighbour, text], capsys)["text"] == text  # the likelier one
    far = "".join(other[other[c]] for c in text)  # four substitutions: no candidate, the reading stays
    assert read(folder, image, [far], capsys)["text"] == text
    model = deploy.TextRecognizer(deploy.find_model(folder))
    assert (
        model.read([cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)[:, :, None]], Lexicon([neighbour]))[0].text
        == neighbour
    )
    with pytest.raises(ModelFilesError, match="lexicon"):
        Lexicon.read(folder / "missing.txt")
