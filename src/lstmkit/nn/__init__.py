"""Neural-network layers of our own (a fused LSTM stack for the CPU)."""
