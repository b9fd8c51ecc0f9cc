"""The operations CLI (`graphcred status`, `renew`, `inspect secret`, `version`): cluster reads and their
printable views."""
