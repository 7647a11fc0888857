"""The gateway (`shoal router start`): the broker API for every partition, forwarded to owners."""
