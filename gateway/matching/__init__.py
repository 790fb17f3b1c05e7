"""Image-text matching: does this text describe this photo? A score per candidate text,
from the model's own next-token probabilities of "yes" and "no" (instruction.py)."""
