"""The front process: owns the public port, supervises workers, hands out connections."""
