"""Benchmarks of the search: overhead, input pipeline, search efficiency. Not tests: run with
`python -m benchmarks.run [--quick]`."""
