"""Fine-tune an SSD detector on boxes of your own: OpenCV's res10 face detector, end to end.

    python examples/ssd/finetune_res10.py [--images DIR] [--iters 100] [--out DIR]

The steps are a Caffe SSD user's, with the same files and commands:

1. images and their boxes as Pascal VOC XML files (``--images DIR``: every ``*.jpg`` with a ``.xml`` of the
   same name, objects named ``face``); without ``--images``, a demo set is made from the assets' face photos,
   labelled with the detector's own detections (a smoke run of the pipeline, not a better detector);
2. a label map and ``caffe create_annoset``: the images and boxes as an LMDB of AnnotatedDatum records;
3. the training net: the one the res10 ``.caffemodel`` itself embeds (AnnotatedData with its augmentation,
   the ResNet-10 body, MultiBoxLoss), read from the file, pointed at the new LMDB;
4. ``caffe train --solver solver.prototxt --weights res10_300x300_ssd_iter_140000.caffemodel``;
5. ``caffe detect`` with the fine-tuned weights, next to the original's detections.

Uses the model files in the shared assets (CAFFE_TEST_ASSETS, default ../shared/assets).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import escape

from google.protobuf import text_format

from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_net_param_binary

ROOT = Path(__file__).resolve().parent.parent.parent
ASSETS = Path(os.environ.get("CAFFE_TEST_ASSETS", ROOT.parent / "shared" / "assets"))
DEPLOY = ASSETS / "models" / "res10_ssd_face_prototxt_only" / "deploy.prototxt"
WEIGHTS = ASSETS / "models" / "res10_ssd_face" / "res10_300x300_ssd_iter_140000.caffemodel"
DEMO_IMAGES = [ASSETS / "models" / "mtcnn_face_caffe" / name for name in ("test1.jpg", "test2.jpg")]
LABEL_MAP = 'item { name: "none_of_the_above" label: 0 display_name: "background" }\n' + (
    'item { name: "face" label: 1 display_name: "face" }\n'
)


def caffe(*args: str, capture: bool = False) -> str:
    """Run the ``caffe`` command (this Python's), stopping on failure."""
    result = subprocess.run(
        [sys.executable, "-m", "caffe", *args], check=False, text=True, stdout=subprocess.PIPE if capture else None
    )
    if result.returncode != 0:
        sys.exit(f"caffe {args[0]} failed (exit {result.returncode})")
    return result.stdout or ""


def detect(weights: Path, images: list[Path], threshold: float = 0.5) -> list[dict]:
    """``caffe detect``'s JSON results for ``images`` with the deploy net and ``weights``."""
    out = caffe(
        "detect", "--model", str(DEPLOY), "--weights", str(weights), "--mean", "104,117,123",
        "--threshold", str(threshold),
        "--format", "json", *map(str, images), capture=True,
    )  # fmt: skip
    return json.loads(out)


def voc_xml(image: Path, width: int, height: int, boxes: list[list[float]]) -> str:
    """A Pascal VOC annotation of ``image`` with one ``face`` object per box (pixel corners)."""
    objects = "".join(
        "<object><name>face</name><difficult>0</difficult><bndbox>"
        f"<xmin>{x0:.0f}</xmin><ymin>{y0:.0f}</ymin><xmax>{x1:.0f}</xmax><ymax>{y1:.0f}</ymax>"
        "</bndbox></object>"
        for x0, y0, x1, y1 in boxes
    )
    return (
        f"<annotation><filename>{escape(image.name)}</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{objects}</annotation>\n"
    )


def demo_set(folder: Path) -> None:
    """The demo images, copied with the original detector's detections as their VOC boxes."""
    folder.mkdir(parents=True, exist_ok=True)
    for found in detect(WEIGHTS, DEMO_IMAGES):
        image = Path(found["input"])
        shutil.copy(image, folder / image.name)
        boxes = [d["box"] for d in found["detections"]]
        (folder / image.name).with_suffix(".xml").write_text(voc_xml(image, found["width"], found["height"], boxes))


def training_net(source: Path, batch: int) -> pb.NetParameter:
    """The training net embedded in the res10 .caffemodel (its TRAIN layers, without weights), reading ``source``."""
    net = read_net_param_binary(WEIGHTS)
    keep = [layer for layer in net.layer if not any(rule.phase == pb.TEST for rule in layer.include)]
    del net.layer[:]
    for layer in keep:
        del layer.blobs[:]
        layer.ClearField("phase")
        if layer.type == "AnnotatedData":
            layer.data_param.source, layer.data_param.batch_size = str(source), batch
        net.layer.append(layer)
    return net


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="a folder of *.jpg images, each with its VOC .xml")
    parser.add_argument("--iters", type=int, default=100, help="training iterations (default 100)")
    parser.add_argument("--batch", type=int, default=2, help="images per iteration (default 2)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 0.0001)")
    parser.add_argument("--out", type=Path, default=Path("ssd_finetune"), help="working folder (default ssd_finetune)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    images = args.images.resolve() if args.images else out / "images"
    if args.images is None:
        print("== 1. demo images, labelled with the detector's own detections", flush=True)
        demo_set(images)
    pairs = sorted(p for p in images.glob("*.jpg") if p.with_suffix(".xml").is_file())
    if not pairs:
        sys.exit(f"{images}: no *.jpg with a .xml of the same name")
    (out / "labelmap.prototxt").write_text(LABEL_MAP)
    (out / "list.txt").write_text("".join(f"{p.name} {p.with_suffix('.xml').name}\n" for p in pairs))
    print(f"== 2. caffe create_annoset: {len(pairs)} images", flush=True)
    caffe(
        "create_annoset", "--label_map_file", str(out / "labelmap.prototxt"), "--encoded", "--encode_type", "jpg",
        f"{images}/", str(out / "list.txt"), str(out / "train_lmdb"),
    )  # fmt: skip
    print("== 3. the training net the .caffemodel embeds, reading the new LMDB", flush=True)
    (out / "train.prototxt").write_text(text_format.MessageToString(training_net(out / "train_lmdb", args.batch)))
    solver = pb.SolverParameter(
        net=str(out / "train.prototxt"), base_lr=args.lr, lr_policy="fixed", momentum=0.9, weight_decay=0.0005,
        max_iter=args.iters, display=max(1, args.iters // 10), snapshot_prefix=str(out / "res10_finetuned"),
        solver_mode=pb.SolverParameter.CPU, random_seed=1,
    )  # fmt: skip
    (out / "solver.prototxt").write_text(text_format.MessageToString(solver))
    print(f"== 4. caffe train: {args.iters} iterations", flush=True)
    caffe("train", "--solver", str(out / "solver.prototxt"), "--weights", str(WEIGHTS))
    tuned = out / f"res10_finetuned_iter_{args.iters}.caffemodel"
    print("== 5. caffe detect: original and fine-tuned", flush=True)
    for name, weights in (("original", WEIGHTS), ("fine-tuned", tuned)):
        for found in detect(weights, pairs):
            boxes = ", ".join(f"{d['confidence']:.3f} at {[round(v) for v in d['box']]}" for d in found["detections"])
            print(f"{name:>10} {Path(found['input']).name}: {boxes or 'nothing'}")
    print(f"fine-tuned weights: {tuned}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
