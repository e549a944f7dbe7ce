"""Training: data readers and trainers for the emotion heads and the ERC models."""
