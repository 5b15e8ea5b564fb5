"""Numerical kernels the layers call where PyTorch's own is slow for Caffe's shapes (maths only: no
configuration, no blobs)."""
