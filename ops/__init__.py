"""The `livefeed` CLI, process runner, compare harness, benchmarks and deployment files."""
