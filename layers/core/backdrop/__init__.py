"""Backdrop core: plain Python that knows nothing of Lambda event shapes."""
