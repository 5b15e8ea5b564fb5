"""``TextRecognizer``: a deployable CTC text recogniser (senlinuc/caffe_ocr's CRNN nets) reading a line of text.

It is a :class:`~caffe.deploy.model.DeployModel` (the same files, labels and mean) whose net ends in a
``CTCGreedyDecoder`` (each image's classes) or in the time-major (T, N, C) scores such a decoder reads (decoded
here the same way: best class per step, repeats merged, blanks dropped). Images are prepared as the fork's
``ocr_test`` does: one at least twice as tall as wide is turned a quarter turn clockwise; each is resized with
OpenCV's bilinear interpolation to the net's input height keeping its aspect ratio (width ``H * w // h``, at
least 1, at most ``max_width``: 16 times the input's by default, so that a sliver of an image cannot make a
forward of gigabytes), and the net is reshaped to that width (``keep_aspect=False`` squashes every image to the
input's size instead); the per-channel mean (``mean.binaryproto``'s, or ``mean_values.txt``) is subtracted from the
0-255 BGR pixels. The text joins the labels of the classes (the fork's ``label.txt``: one label a line, the
blank's line ``blank``); without labels it is the class numbers. With a :class:`~caffe.deploy.lexicon.Lexicon`
the text is the nearby word the scores make likeliest (the fork's English mode; see that module).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from caffe.deploy.errors import ModelFilesError
from caffe.deploy.files import ModelFiles
from caffe.deploy.images import resize_image
from caffe.deploy.lexicon import Lexicon, best_by_ctc
from caffe.deploy.model import DeployModel, Settings, output_producer, producing_layer
from caffe.layers.ctc import greedy_decode

BLANK_LABEL = "blank"


@dataclass(frozen=True)
class Reading:
    """One image's decoded classes and their text (with a lexicon: the word chosen, ``decoded`` the best path's)."""

    classes: list[int]
    text: str
    decoded: str = ""


def is_text_recognizer(net: Any, output: str | None = None) -> bool:
    """Whether the net's ``output`` (default: its last) is written by a CTCGreedyDecoder."""
    return output_producer(net, output or net.outputs[-1]) == "CTCGreedyDecoder"


class TextRecognizer(DeployModel):
    """A CRNN-style text recogniser with its preprocessing and labels (see the module); arguments as
    :class:`DeployModel`'s, and ``keep_aspect``. An output that is neither a CTCGreedyDecoder's nor (T, N, C)
    scores is a ModelFilesError."""

    interpolation = "opencv"

    def __init__(
        self,
        files: ModelFiles,
        settings: Settings | None = None,
        *,
        keep_aspect: bool = True,
        max_width: int | None = None,
        **kw: Any,
    ) -> None:
        settings = settings or Settings()
        if settings.mean_mode is None:
            settings = replace(settings, mean_mode="pixel")  # a mean image fits one width only
        self.keep_aspect = keep_aspect
        super().__init__(files, settings, **kw)
        self.max_width = int(max_width) if max_width is not None else 16 * self.input_shape[2]
        if self.max_width < 1:
            raise ModelFilesError(f"max_width {self.max_width}: must be at least 1")
        if keep_aspect and self.mean is not None and self.mean.array.shape[1:] != (1, 1):
            raise ModelFilesError("a mean image fits one input width only: subtract its pixel mean (mean mode pixel)")

    def count_classes(self) -> int:
        """The classes of the scores the text is decoded from (their third axis)."""
        net = self.net
        layer = producing_layer(net, self.output)
        self.decoder_blank: int | None = None
        self.scores_blob = self.output
        if layer is not None and net.layer_dict[layer].type == "CTCGreedyDecoder":
            self.scores_blob = net.bottom_names[layer][0]
            self.decoder_blank = int(net.layer_dict[layer].layer_param.ctc_decoder_param.blank_index)
        shape = tuple(net.blobs[self.scores_blob].shape)
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 1):
            raise ModelFilesError(
                f"{self.files.deploy}: blob '{self.scores_blob}' has shape {shape}; a CTC text recogniser ends in "
                "(T, N, C) class scores or a CTCGreedyDecoder reading them"
            )
        classes = int(shape[2])
        if self.decoder_blank is not None and self.decoder_blank < 0:
            self.decoder_blank = classes - 1
        return classes

    def normalization(self) -> tuple[bool, str]:
        """No softmax: the text is the best path through the scores."""
        how = "the net's CTCGreedyDecoder" if self.decoder_blank is not None else "best-path decoding here"
        return False, f"blob '{self.scores_blob}' holds {self.classes} class scores per step: text by {how}"

    @property
    def blank(self) -> int:
        """The blank class: the decoder's, else the label ``blank``, else 0."""
        if self.decoder_blank is not None:
            return self.decoder_blank
        return self.labels.index(BLANK_LABEL) if BLANK_LABEL in self.labels else 0

    def prepare_line(self, pixels: np.ndarray) -> np.ndarray:
        """H x W x C uint8 pixels (the net's channels) -> the 1 x C x H x W' input (see the module)."""
        h, w = pixels.shape[:2]
        if 2 * w <= h:
            pixels = np.ascontiguousarray(np.rot90(pixels, k=-1))
            h, w = w, h
        c, height, width = self.input_shape
        if self.keep_aspect:
            width = min(max(1, height * w // h), self.max_width)
        prep = replace(self.preprocessing, input_shape=(c, height, width), image_size=None)
        resized = resize_image(pixels, height, width, "squash", interpolation=prep.interpolation)
        return prep.to_input(resized)[np.newaxis]

    def read(self, images: Sequence[np.ndarray], lexicon: Lexicon | None = None) -> list[Reading]:
        """The classes and text of H x W x C uint8 images (one forward each: widths differ)."""
        return [self.read_input(self.prepare_line(pixels), lexicon) for pixels in images]

    def read_input(self, batch: np.ndarray, lexicon: Lexicon | None = None) -> Reading:
        """The reading of one prepared 1 x C x H x W input."""
        output, raw = self.run_blobs(batch, None, [self.output, self.scores_blob])
        scores = torch.from_numpy(raw).reshape(raw.shape[0], raw.shape[1], -1)
        if self.decoder_blank is not None:
            classes = [int(v + 0.5) for v in output.reshape(-1) if v >= 0]  # -1 pads the end
        else:
            classes = greedy_decode(scores, self.blank, True)[0]
        if not self.labels:
            return Reading(classes, " ".join(map(str, classes)))
        text = "".join(self.label(c) for c in classes)
        if lexicon is None:
            return Reading(classes, text, text)
        word = best_by_ctc(scores[:, 0], lexicon.near(text, min(2, len(text) // 3)), self.labels, self.blank)
        return Reading(classes, word or text, text)

    def describe(self) -> dict[str, Any]:
        """:meth:`DeployModel.describe` with ``kind``, the blank and the resizing."""
        extra = {"kind": "text", "blank": self.blank, "keep_aspect": self.keep_aspect, "max_width": self.max_width}
        return {**super().describe(), **extra}
