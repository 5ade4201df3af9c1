"""``archviz bench``: our engine against the plain per-(style, seed) diffusers loop, side by
side on the same models and sweep (see README.md, "Benchmark", and BENCHMARKS.md)."""
