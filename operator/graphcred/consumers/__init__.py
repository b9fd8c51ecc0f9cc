"""Consumers of token Secrets that never see a refresh (--watch-consumers): which pods read a token in a way no
refresh reaches, the pod watch that finds them, and the reports on their credentials."""
