"""Seeded stimulus builders: token batches plus the positions that matter."""

from .random_tokens import RepeatedTokens, random_token_ids, repeated_random_tokens, token_pool
from .text import paragraphs, read_text

__all__ = ["RepeatedTokens", "paragraphs", "random_token_ids", "read_text", "repeated_random_tokens", "token_pool"]
