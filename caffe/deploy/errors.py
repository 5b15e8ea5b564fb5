"""The errors of :mod:`caffe.deploy`."""

from __future__ import annotations

import os

from caffe.errors import DataError

PathLike = str | os.PathLike


class ModelFilesError(DataError):
    """A folder, archive or file that does not give a usable model, or a model file that cannot be read."""


class ImageDecodeError(DataError, OSError):
    """Bytes that are not a readable image."""
