"""Helpers that know nothing of graphcred: timestamps, backoff."""
