"""Reusable layers: recurrent stacks, our own LSTM layer, the fused softmax, native kernels."""
