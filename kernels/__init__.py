"""Our kernels: Tiled Flash Linear Attention (TFLA) for the mLSTM."""
