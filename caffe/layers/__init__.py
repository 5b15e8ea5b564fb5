"""Every layer family; importing this package registers all built-in layer types.

Families follow Caffe's layer catalogue: ``input`` (Input, DummyData, MemoryData), ``vision``
(convolution, pooling, crop), ``core`` (InnerProduct, Embed, Scale, Bias, Parameter),
``normalization`` (LRN, MVN, BatchNorm), ``neuron`` (element-wise activations, Dropout),
``utility`` (split/concat/slice/reshape/reductions, Softmax), ``loss`` (losses, Accuracy),
``recurrent`` (RNN, LSTM, LSTMUnit), ``data``, ``window_data``, ``dense_image_data`` and ``image_seg_data``
(Data, ImageData, WindowData, SegNet's DenseImageData, DeepLab's ImageSegData: prefetching readers),
``detection`` (the SSD fork's Normalize, Permute, PriorBox, DetectionOutput), ``detection_evaluate`` (its
evaluation during training, DetectionEvaluate, and the mean AP), ``multibox_loss`` (its training loss,
MultiBoxLoss), ``annotated_data`` (its training data, AnnotatedData: images with boxes, augmented), ``hdf5``
(HDF5Data, HDF5Output), ``python`` (user layers), ``forks`` (BN, Upsample, Interp, ShuffleChannel, Axpy, the
depthwise convolutions of Caffe's forks), ``rcnn`` (ROIPooling, PSROIPooling, Proposal of the Faster R-CNN /
R-FCN forks), ``rcnn_training`` (their training layers: SmoothL1Loss, SmoothL1LossOHEM, BoxAnnotatorOHEM),
``yolo`` (the YOLO ports' detection outputs and Reorg), ``yolo_training`` (MobileNet-YOLO's Yolov3 and
RegionLoss), ``assisted_excitation`` (its AssistedExcitation), ``detectnet`` and ``detectnet_eval``
(DIGITS' DetectNet from NVIDIA/caffe: DetectNetTransformation, L1Loss, its clustering and scoring layers) and
``face`` (the face recognition forks' CenterLoss
and MarginInnerProduct), and for text recognition (senlinuc/caffe_ocr) ``sequence`` (Transpose, Reverse,
ReverseTime), ``ctc`` (WarpCTCLoss, CTCGreedyDecoder), junhyukoh's ``Lstm`` in ``recurrent`` and Tongcheng's
``dense_block`` (DenseBlock), with DeepDetect's (jolibrain/caffe) CtcLoss and LabelsequenceAccuracy in ``ctc`` and
ContinuationIndicator in ``sequence``.
"""

from caffe.layers import (  # noqa: F401
    annotated_data,
    assisted_excitation,
    core,
    ctc,
    data,
    dense_block,
    dense_image_data,
    detection,
    detection_evaluate,
    detectnet,
    detectnet_eval,
    face,
    forks,
    hdf5,
    image_seg_data,
    input,
    loss,
    multibox_loss,
    neuron,
    normalization,
    python,
    rcnn,
    rcnn_training,
    recurrent,
    sequence,
    utility,
    vision,
    window_data,
    yolo,
    yolo_training,
)


def __getattr__(name: str) -> object:
    """``L.<Type>`` for pycaffe's ``from caffe import layers as L``: that import finds this package, so the
    NetSpec layer constructors are served here (layer types are CamelCase, the family modules lowercase)."""
    if name[:1].isupper():
        from caffe.net_spec import layers

        return getattr(layers, name)
    raise AttributeError(f"module 'caffe.layers' has no attribute {name!r}")
