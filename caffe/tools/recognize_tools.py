"""``caffe recognize``: the text in images, read by a CTC text recogniser (senlinuc/caffe_ocr's CRNN nets).

``caffe recognize [FLAGS] [MODEL] INPUT...``: MODEL and INPUTs as ``caffe classify`` takes them (the fork's
model folder: ``deploy.prototxt``, ``model.caffemodel``, ``label.txt``, ``mean.binaryproto`` or
``mean_values.txt``). The model is a :class:`caffe.deploy.TextRecognizer`: each image (a tall one turned a
quarter turn) is resized to the net's input height keeping its aspect ratio, at most ``--max_width`` wide
(``--squash``: to the input's size), prepared with ``--channel_swap``, ``--raw_scale``, the pixel mean and
``--input_scale``, and its best path is decoded; with ``--lexicon`` the text is the nearby word the scores
make likeliest (:mod:`caffe.deploy.lexicon`). Printed: one line per input, ``NAME: TEXT``, or ``--format=json``
(text and classes, and the best path's text). Unreadable inputs are reported and skipped (exit status 1).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from caffe import deploy
from caffe.tools import classify_tools as common
from caffe.tools.flags import ToolParser
from caffe.tools.registry import command

log = logging.getLogger("caffe")

USAGE = """caffe recognize [FLAGS] [MODEL] INPUT [INPUT ...]

Read the line of text in images, folders, URLs or video frames with a CTC text recogniser (a CRNN net of
senlinuc/caffe_ocr: convolutions, LSTMs, CTCGreedyDecoder) and print it."""


def _parser() -> ToolParser:
    p = ToolParser("caffe recognize", USAGE)
    common.add_model_flags(p, "Labels: one a line, the blank's line 'blank' (the fork's label.txt)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="What is printed")
    p.add_bool("squash", "Squash images to the net's input size instead of keeping their aspect ratio")
    p.add_argument("--max_width", type=int, default=None, help="Widest input (default: 16 times the net's)")
    p.add_argument("--lexicon", help="Words, one a line: the nearby word the scores make likeliest (caffe_ocr's)")
    common.add_pixel_flags(p, interpolation="opencv")
    common.add_input_flags(p, "read", batch_size=None)
    return p


@command("recognize", "read a line of text in images with a CTC text recogniser (CRNN): the text")
def recognize(argv: list[str]) -> int:
    parser = _parser()
    started = common.start_model_command(parser, argv, ("every",))
    if isinstance(started, int):
        return started
    args, files, inputs = started
    settings = common.pixel_settings(args)
    model = deploy.TextRecognizer(files, settings, keep_aspect=not args.squash, max_width=args.max_width)
    log.info("Model: %s, weights %s; %s", files.deploy, files.weights, model.softmax_reason)
    lexicon = deploy.Lexicon.read(args.lexicon) if args.lexicon else None
    if lexicon is not None:
        log.info("Lexicon: %s, %d words with their capitalized and upper-case forms", args.lexicon, lexicon.size)
    records: list[dict[str, Any]] = []
    done = 0
    for item in common.input_reader(args, model.input_shape[0]).images(inputs, records):
        reading = model.read([item.pixels], lexicon)[0]
        record = {"input": item.name, "text": reading.text, "classes": reading.classes}
        records.append({**record, "decoded": reading.decoded} if lexicon is not None else record)
        done += 1
        if args.format == "text":
            print(f"{item.name}: {reading.text}", flush=True)
    if args.format == "json":
        print(json.dumps(records, indent=2, ensure_ascii=False))
    failed = len(records) - done
    log.info("Read %d input(s)%s", done, f"; {failed} could not be read" if failed else "")
    return 1 if failed or not done else 0
