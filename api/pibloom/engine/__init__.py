"""Model loading and the continuous-batching inference engine."""
