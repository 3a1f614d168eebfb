"""rrproxy's load-test harness: `python -m loadtest --help`."""
