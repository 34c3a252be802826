"""loom's benchmark suite: run ``pytest benchmarks/`` (see ``benchmarks/README.md``)."""
