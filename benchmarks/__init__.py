"""Performance benchmarks of the harness's fast paths against the mmpose reference paths (`python -m benchmarks.<name>`)."""
