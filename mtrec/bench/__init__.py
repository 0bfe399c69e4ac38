"""Benchmarks: `python -m mtrec.bench accuracy ...` (models side by side on one split, see
`mtrec.bench.accuracy`) and `python -m mtrec.bench speed ...` (throughput, `mtrec.bench.speed`)."""
