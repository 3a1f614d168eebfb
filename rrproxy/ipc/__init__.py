"""Front <-> worker channel: the message format (no I/O) and the socket glue."""
