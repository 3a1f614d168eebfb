"""Apps the end-to-end tests run under rrproxy (imported as tests.apps.X:handler)."""
