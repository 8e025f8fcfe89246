"""mLSTM: TFLA Triton kernels (``tfla``) and PyTorch references (``reference``)."""
