"""I/O-free protocol helpers (HTTP response building, dates, error pages)."""
