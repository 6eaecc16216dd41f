"""Measuring ganfast: the benchmark suite's cases (cases.py) and its runner (suite.py, `ganfast
bench`), the timing harness, the device-operation and memory-traffic counter, and the static GPU
resource report. The deep-dive scripts and the pytest-benchmark files stay in the source tree's
benchmarks/ directory and import the same cases."""
