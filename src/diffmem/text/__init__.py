"""Offline text side of the embedded worlds: a word-level tokenizer and a small text encoder."""
