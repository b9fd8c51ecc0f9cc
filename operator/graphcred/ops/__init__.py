"""The operations CLI (`graphcred status`, `renew`, `doctor`, ...): cluster reads and their printable views."""
