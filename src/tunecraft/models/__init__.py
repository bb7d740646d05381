"""Models: resolve a name or path to a local Hugging Face directory, and load it safely."""
