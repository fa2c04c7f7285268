"""Reusable layers: recurrent stacks, the fused softmax layer, native kernels."""
