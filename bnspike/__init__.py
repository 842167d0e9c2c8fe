"""bnspike: a PyTorch sandbox for delayed loss spikes in batch-normalized linear models."""
__version__ = "0.1.0"
