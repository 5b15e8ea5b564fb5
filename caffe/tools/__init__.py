"""The ``caffe`` command and Caffe's tools (each also installed under its original console name)."""
