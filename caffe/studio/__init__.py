"""Studio: the DIGITS-style web app (``caffe studio``)."""
