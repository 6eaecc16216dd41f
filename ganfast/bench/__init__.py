"""Measuring ganfast: the timing harness, the device-operation and memory-traffic counter, and the
static GPU resource report. The benchmark cases themselves live in the source tree's
benchmarks/ directory and run with `ganfast bench`."""
