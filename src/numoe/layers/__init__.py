"""Building blocks shared by the architectures in numoe.models."""
