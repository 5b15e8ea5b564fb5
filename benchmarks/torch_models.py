"""The four benchmark networks written by hand as plain ``torch.nn.Module``s (no caffe code involved).

Each module mirrors one deploy prototxt layer for layer (same kernel sizes, strides, pads, groups,
Caffe's ceil-mode pooling, Caffe's LRN) and lists, in :meth:`CaffeMirror.caffe_params`, which
torch sub-module receives the blobs of which Caffe layer. :func:`load_from_net` copies the
weights from a built ``caffe.Net`` (``net.params[layer][i].data``):

* Convolution / InnerProduct: ``weight`` = blob 0, ``bias`` = blob 1;
* BatchNorm: Caffe stores ``mean*s``, ``var*s`` and ``s`` -> running_mean = blob0/s,
  running_var = blob1/s (0 when s == 0, as Caffe);
* Scale (after a BatchNorm, as in ResNet): the BatchNorm2d's affine ``weight``/``bias``.

Caffe's LRN (ACROSS_CHANNELS) is ``x * (k + alpha/size * sum_{size neighbouring channels} x^2)^-beta``
with the window centred and zero padded; ``torch.nn.LocalResponseNorm(size, alpha, beta, k)``
computes exactly that (it averages the padded squares over ``size`` channels, then ``*alpha + k``),
so it is used as is. Caffe's pooling rounds the output size up (ceil) and drops a last window that
would start in the padding: ``nn.MaxPool2d(..., ceil_mode=True)`` does the same.

``forward`` returns what the Caffe net outputs (``prob`` after Softmax, or SqueezeNet's global
pool); :meth:`CaffeMirror.logits` returns the blob before the Softmax, for tighter checks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


def conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups, bias=True)


def caffe_max_pool(k: int, stride: int, pad: int = 0) -> nn.MaxPool2d:
    return nn.MaxPool2d(k, stride=stride, padding=pad, ceil_mode=True)


class CaffeMirror(nn.Module):
    """Base: a net with a ``logits`` part and an optional Softmax head."""

    softmax: bool = True
    logit_blob: str = ""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.logits(x)
        return torch.softmax(y, dim=1) if self.softmax else y

    def caffe_params(self) -> Iterator[tuple[str, str, nn.Module]]:
        """(caffe layer name, kind, torch module) with kind in conv, fc, bn, scale."""
        raise NotImplementedError


# ---------------------------------------------------------------------------- AlexNet
class AlexNet(CaffeMirror):
    """bvlc_alexnet deploy: 5 convs (groups 2 on conv2/4/5), LRN after relu1/relu2, 3 FCs, softmax."""

    logit_blob = "fc8"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv(3, 96, 11, stride=4)
        self.norm1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.pool1 = caffe_max_pool(3, 2)
        self.conv2 = conv(96, 256, 5, pad=2, groups=2)
        self.norm2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.pool2 = caffe_max_pool(3, 2)
        self.conv3 = conv(256, 384, 3, pad=1)
        self.conv4 = conv(384, 384, 3, pad=1, groups=2)
        self.conv5 = conv(384, 256, 3, pad=1, groups=2)
        self.pool5 = caffe_max_pool(3, 2)
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, 1000)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.5)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        r = self.relu
        x = self.pool1(self.norm1(r(self.conv1(x))))
        x = self.pool2(self.norm2(r(self.conv2(x))))
        x = r(self.conv3(x))
        x = r(self.conv4(x))
        x = self.pool5(r(self.conv5(x)))
        x = torch.flatten(x, 1)
        x = self.drop(r(self.fc6(x)))
        x = self.drop(r(self.fc7(x)))
        return self.fc8(x)

    def caffe_params(self) -> Iterator[tuple[str, str, nn.Module]]:
        for n in ("conv1", "conv2", "conv3", "conv4", "conv5"):
            yield n, "conv", getattr(self, n)
        for n in ("fc6", "fc7", "fc8"):
            yield n, "fc", getattr(self, n)


# ---------------------------------------------------------------------------- SqueezeNet v1.0
class Fire(nn.Module):
    def __init__(self, prefix: str, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.prefix = prefix
        self.squeeze = conv(cin, squeeze, 1)
        self.expand1 = conv(squeeze, expand, 1)
        self.expand3 = conv(squeeze, expand, 3, pad=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.relu(self.squeeze(x))
        return torch.cat([self.relu(self.expand1(s)), self.relu(self.expand3(s))], dim=1)


class SqueezeNetV10(CaffeMirror):
    """SqueezeNet v1.0 (DeepScale deploy): conv1 7x7/2, fire2-9 with max pools after conv1, fire4 and
    fire8, dropout, conv_final 1x1 **with pad 1** (as that prototxt has it), ReLU, global average pool.
    No softmax: the net's output is ``pool_final`` (N, 1000, 1, 1)."""

    softmax = False
    logit_blob = "pool_final"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv(3, 96, 7, stride=2)
        self.pool1 = caffe_max_pool(3, 2)
        self.fire2 = Fire("fire2", 96, 16, 64)
        self.fire3 = Fire("fire3", 128, 16, 64)
        self.fire4 = Fire("fire4", 128, 32, 128)
        self.pool4 = caffe_max_pool(3, 2)
        self.fire5 = Fire("fire5", 256, 32, 128)
        self.fire6 = Fire("fire6", 256, 48, 192)
        self.fire7 = Fire("fire7", 384, 48, 192)
        self.fire8 = Fire("fire8", 384, 64, 256)
        self.pool8 = caffe_max_pool(3, 2)
        self.fire9 = Fire("fire9", 512, 64, 256)
        self.drop9 = nn.Dropout(0.5)
        self.conv_final = conv(512, 1000, 1, pad=1)
        self.relu = nn.ReLU(inplace=True)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu(self.conv1(x)))
        x = self.pool4(self.fire4(self.fire3(self.fire2(x))))
        x = self.pool8(self.fire8(self.fire7(self.fire6(self.fire5(x)))))
        x = self.drop9(self.fire9(x))
        x = self.relu(self.conv_final(x))
        return torch.mean(x, dim=(2, 3), keepdim=True)  # Caffe's global AVE pooling

    def fires(self) -> list[Fire]:
        return [getattr(self, f"fire{i}") for i in range(2, 10)]

    def caffe_params(self) -> Iterator[tuple[str, str, nn.Module]]:
        yield "conv1", "conv", self.conv1
        for f in self.fires():
            yield f"{f.prefix}/conv1x1_1", "conv", f.squeeze
            yield f"{f.prefix}/conv1x1_2", "conv", f.expand1
            yield f"{f.prefix}/conv3x3_2", "conv", f.expand3
        yield "conv_final", "conv", self.conv_final


# ---------------------------------------------------------------------------- GoogLeNet
class Inception(nn.Module):
    def __init__(self, prefix: str, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        self.prefix = prefix
        self.b1 = conv(cin, c1, 1)
        self.b3r = conv(cin, c3r, 1)
        self.b3 = conv(c3r, c3, 3, pad=1)
        self.b5r = conv(cin, c5r, 1)
        self.b5 = conv(c5r, c5, 5, pad=2)
        self.pool = caffe_max_pool(3, 1, pad=1)
        self.proj = conv(cin, cp, 1)
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.relu
        return torch.cat(
            [
                r(self.b1(x)),
                r(self.b3(r(self.b3r(x)))),
                r(self.b5(r(self.b5r(x)))),
                r(self.proj(self.pool(x))),
            ],
            dim=1,
        )

    def caffe_params(self) -> Iterator[tuple[str, str, nn.Module]]:
        p = self.prefix
        yield from (
            (f"{p}/1x1", "conv", self.b1),
            (f"{p}/3x3_reduce", "conv", self.b3r),
            (f"{p}/3x3", "conv", self.b3),
            (f"{p}/5x5_reduce", "conv", self.b5r),
            (f"{p}/5x5", "conv", self.b5),
            (f"{p}/pool_proj", "conv", self.proj),
        )


class GoogLeNet(CaffeMirror):
    """bvlc_googlenet deploy (Inception v1): stem with two LRNs, inception 3a-5b, 7x7 average pool,
    dropout, classifier, softmax (no auxiliary heads in deploy)."""

    logit_blob = "loss3/classifier"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv(3, 64, 7, stride=2, pad=3)
        self.pool1 = caffe_max_pool(3, 2)
        self.norm1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv2_reduce = conv(64, 64, 1)
        self.conv2 = conv(64, 192, 3, pad=1)
        self.norm2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.pool2 = caffe_max_pool(3, 2)
        self.i3a = Inception("inception_3a", 192, 64, 96, 128, 16, 32, 32)
        self.i3b = Inception("inception_3b", 256, 128, 128, 192, 32, 96, 64)
        self.pool3 = caffe_max_pool(3, 2)
        self.i4a = Inception("inception_4a", 480, 192, 96, 208, 16, 48, 64)
        self.i4b = Inception("inception_4b", 512, 160, 112, 224, 24, 64, 64)
        self.i4c = Inception("inception_4c", 512, 128, 128, 256, 24, 64, 64)
        self.i4d = Inception("inception_4d", 512, 112, 144, 288, 32, 64, 64)
        self.i4e = Inception("inception_4e", 528, 256, 160, 320, 32, 128, 128)
        self.pool4 = caffe_max_pool(3, 2)
        self.i5a = Inception("inception_5a", 832, 256, 160, 320, 32, 128, 128)
        self.i5b = Inception("inception_5b", 832, 384, 192, 384, 48, 128, 128)
        self.pool5 = nn.AvgPool2d(7, stride=1)
        self.drop = nn.Dropout(0.4)
        self.classifier = nn.Linear(1024, 1000)
        self.relu = nn.ReLU(inplace=True)

    def inceptions(self) -> list[Inception]:
        return [self.i3a, self.i3b, self.i4a, self.i4b, self.i4c, self.i4d, self.i4e, self.i5a, self.i5b]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        r = self.relu
        x = self.norm1(self.pool1(r(self.conv1(x))))
        x = self.pool2(self.norm2(r(self.conv2(r(self.conv2_reduce(x))))))
        x = self.pool3(self.i3b(self.i3a(x)))
        x = self.pool4(self.i4e(self.i4d(self.i4c(self.i4b(self.i4a(x))))))
        x = self.pool5(self.i5b(self.i5a(x)))
        x = self.drop(torch.flatten(x, 1))
        return self.classifier(x)

    def caffe_params(self) -> Iterator[tuple[str, str, nn.Module]]:
        yield "conv1/7x7_s2", "conv", self.conv1
        yield "conv2/3x3_reduce", "conv", self.conv2_reduce
        yield "conv2/3x3", "conv", self.conv2
        for m in self.inceptions():
            yield from m.caffe_params()
        yield "loss3/classifier", "fc", self.classifier


# ---------------------------------------------------------------------------- ResNet-50 1by2 (open_nsfw)
class ConvBN(nn.Module):
    """Convolution (with bias, as the prototxt) + BatchNorm + Scale, as one Conv2d and one affine BatchNorm2d."""

    def __init__(self, name: str, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0) -> None:
        super().__init__()
        self.caffe_name = name  # conv_<name>, bn_<name>, scale_<name>
        self.conv = conv(cin, cout, k, stride=stride, pad=pad)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def caffe_params(self) -> Iterator[tuple[str, str, nn.Module]]:
        yield f"conv_{self.caffe_name}", "conv", self.conv
        yield f"bn_{self.caffe_name}", "bn", self.bn
        yield f"scale_{self.caffe_name}", "scale", self.bn


class Bottleneck(nn.Module):
    """1x1 (stride s) -> 3x3 -> 1x1 x4, projection shortcut (1x1 stride s) on each stage's first block."""

    def __init__(self, stage: int, block: int, cin: int, width: int, stride: int) -> None:
        super().__init__()
        p = f"stage{stage}_block{block}"
        self.shortcut = ConvBN(f"{p}_proj_shortcut", cin, width * 4, 1, stride=stride) if block == 0 else None
        self.a = ConvBN(f"{p}_branch2a", cin, width, 1, stride=stride)
        self.b = ConvBN(f"{p}_branch2b", width, width, 3, pad=1)
        self.c = ConvBN(f"{p}_branch2c", width, width * 4, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x) if self.shortcut is not None else x
        y = self.c(self.relu(self.b(self.relu(self.a(x)))))
        return self.relu(identity + y)

    def caffe_params(self) -> Iterator[tuple[str, str, nn.Module]]:
        if self.shortcut is not None:
            yield from self.shortcut.caffe_params()
        for m in (self.a, self.b, self.c):
            yield from m.caffe_params()


class ResNet50Half(CaffeMirror):
    """open_nsfw ResNet-50 1by2: conv_1 7x7/2 (+BN+Scale+ReLU), 3x3/2 max pool (ceil: 112 -> 56),
    stages of 3, 4, 6, 3 bottlenecks with widths 32, 64, 128, 256 (outputs x4), stride 2 on the
    first 1x1 of stages 1-3, 7x7 average pool, fc_nsfw (2 classes), softmax."""

    logit_blob = "fc_nsfw"

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN("1", 3, 64, 7, stride=2, pad=3)
        self.pool1 = caffe_max_pool(3, 2)
        blocks: list[nn.Module] = []
        cin = 64
        for stage, (n, width) in enumerate(((3, 32), (4, 64), (6, 128), (3, 256))):
            for b in range(n):
                blocks.append(Bottleneck(stage, b, cin, width, stride=2 if (b == 0 and stage > 0) else 1))
                cin = width * 4
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AvgPool2d(7, stride=1)
        self.fc = nn.Linear(1024, 2)
        self.relu = nn.ReLU(inplace=True)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu(self.stem(x)))
        x = self.pool(self.blocks(x))
        return self.fc(torch.flatten(x, 1))

    def caffe_params(self) -> Iterator[tuple[str, str, nn.Module]]:
        yield from self.stem.caffe_params()
        for b in self.blocks:
            yield from b.caffe_params()  # type: ignore[operator]
        yield "fc_nsfw", "fc", self.fc


BUILDERS: dict[str, type[CaffeMirror]] = {
    "alexnet": AlexNet,
    "squeezenet": SqueezeNetV10,
    "googlenet": GoogLeNet,
    "resnet50": ResNet50Half,
}


# ---------------------------------------------------------------------------- weights from a caffe.Net
def load_from_net(model: CaffeMirror, net) -> CaffeMirror:
    """Copy ``net.params`` into ``model``; every Caffe layer with blobs and every torch tensor must be used."""
    params = net.params
    used: set[str] = set()
    filled: set[int] = set()

    def put(dst: torch.Tensor, src: np.ndarray, what: str) -> None:
        src_t = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32))
        if src_t.numel() != dst.numel():
            raise ValueError(f"{what}: caffe blob has {tuple(src.shape)}, torch tensor {tuple(dst.shape)}")
        with torch.no_grad():
            dst.copy_(src_t.reshape(dst.shape))
        filled.add(id(dst))

    for name, kind, mod in model.caffe_params():
        if name not in params:
            raise KeyError(f"caffe net has no parameters for layer '{name}'")
        blobs = [b.data for b in params[name]]
        used.add(name)
        if kind in ("conv", "fc"):
            put(mod.weight, blobs[0], f"{name} weight")
            if mod.bias is not None:
                if len(blobs) < 2:
                    raise ValueError(f"{name}: the torch layer has a bias, the caffe layer has none")
                put(mod.bias, blobs[1], f"{name} bias")
        elif kind == "bn":
            s = float(np.asarray(blobs[2]).reshape(-1)[0])
            factor = 0.0 if s == 0 else 1.0 / s
            put(mod.running_mean, blobs[0] * factor, f"{name} mean")
            put(mod.running_var, blobs[1] * factor, f"{name} var")
        elif kind == "scale":
            put(mod.weight, blobs[0], f"{name} gamma")
            put(mod.bias, blobs[1], f"{name} beta")
        else:
            raise ValueError(kind)
    missing = [n for n in params if n not in used]
    if missing:
        raise ValueError(f"caffe layers with parameters not mapped to the torch module: {missing}")
    unfilled = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if id(t) not in filled]
    unfilled = [n for n in unfilled if not n.endswith("num_batches_tracked")]
    if unfilled:
        raise ValueError(f"torch tensors not loaded from the caffe net: {unfilled}")
    return model.eval()
