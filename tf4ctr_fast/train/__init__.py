"""Training: the FuxiCTR-protocol trainer, metrics, checkpoints, run log and plots.

Import the submodules directly (`from tf4ctr_fast.train.trainer import train`); this package
imports nothing itself, so the numpy-only metrics load without torch or matplotlib.
"""
