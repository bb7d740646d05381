"""The local fine-tuning service: OpenAI's files and fine-tuning jobs API on `tunecraft serve`."""
