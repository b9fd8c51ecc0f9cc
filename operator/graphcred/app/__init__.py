"""The process: the command line, settings, logging, leader election, the kopf wiring and the composition root."""
