"""Data: Datum databases (LMDB, LevelDB), image decoding, Caffe's transformation and prefetching."""
