"""tunecraft: fine-tune pre-trained language models on your own data, evaluate, deploy."""

__version__ = "0.1.0"
