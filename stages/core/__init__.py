"""Shared machinery of the stages: artifacts, image I/O, devices, distributed, checkpoints, metrics."""
