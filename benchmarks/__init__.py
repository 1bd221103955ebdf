"""Benchmark assets for sada: tiny real diffusion models (UNet, MMDiT) and a digit classifier, trained on sklearn digits."""
