"""Builders used by the tests and benchmarks only: tiny random models saved to a folder, synthetic features.

Nothing in the runtime package imports this module."""
