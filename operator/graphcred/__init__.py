"""graphcred: keeps Entra ID app-only tokens fresh in Kubernetes Secrets."""

__version__ = "0.1.0"
