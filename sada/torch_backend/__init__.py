"""SADA on torch tensors (any device and dtype). Importing this package imports torch."""
