"""Data: read and validate datasets, render them with the chat template, mask, split, batch."""
