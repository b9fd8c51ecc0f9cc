"""The test bed: a real Kubernetes control plane and an Entra-protocol token issuer, for tests, demo, bench."""
