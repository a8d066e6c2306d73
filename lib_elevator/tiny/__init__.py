"""Tiny random-weight models built from the real architectures' classes, saved in the real on-disk
layouts. They drive the `--demo` run and the tests; nothing here is downloaded."""
