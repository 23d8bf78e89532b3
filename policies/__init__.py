"""Everything about model weights: loading, serving, losses, trainers and adapters."""
