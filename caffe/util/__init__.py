"""Utilities shared by the command line, the servers and the studio: glog lines, progress, threads, databases."""
