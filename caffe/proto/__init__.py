"""Protobuf schema (caffe.proto) and its generated Python module caffe_pb2."""
