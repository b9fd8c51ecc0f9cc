"""Kubernetes I/O: the API calls a pass makes, the metadata watches that tell which Secrets and ServiceAccounts
changed, shared reads, Events, and how the API is reached."""
