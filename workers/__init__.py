"""Example worker apps, used by the docs, the tests and the load tests."""
