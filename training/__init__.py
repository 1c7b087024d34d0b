"""Offline training of the ZN generator: config, data, the GAN loop (single process or torchrun
DDP), evaluation with the physics metrics, and plots."""
