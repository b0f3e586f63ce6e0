"""Benchmarks of the evidence: `dakd bench results` (DAKD Table 1 in kind) and `dakd bench perf`."""
