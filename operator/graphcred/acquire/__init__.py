"""Credential to token: reading credential material, the token request (MSAL, pinned HTTPS, deadlines, the
allowed authorities), and what guards the authority (the circuit breaker, one request shared by identical ones)."""
