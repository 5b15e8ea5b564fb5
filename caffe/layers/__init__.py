"""Every layer family; importing this package registers all built-in layer types."""

from caffe.layers import input, utility  # noqa: F401
