"""Console-script entry points under Caffe's original tool names (each runs ``caffe <name>``)."""

import sys

from caffe.tools.cli import main, run_tool

upgrade_net_proto_text = run_tool("upgrade_net_proto_text")
upgrade_net_proto_binary = run_tool("upgrade_net_proto_binary")
upgrade_solver_proto_text = run_tool("upgrade_solver_proto_text")
convert_imageset = run_tool("convert_imageset")
compute_image_mean = run_tool("compute_image_mean")
convert_mnist_data = run_tool("convert_mnist_data")
convert_cifar_data = run_tool("convert_cifar_data")
extract_features = run_tool("extract_features")
parse_log = run_tool("parse_log")
plot_training_log = run_tool("plot_training_log")
draw_net = run_tool("draw_net")


def download_model_binary() -> int:
    """``download_model_binary DIR``: Caffe's ``scripts/download_model_binary.py``, as ``caffe zoo download``."""
    return main(["zoo", "download", *sys.argv[1:]])
