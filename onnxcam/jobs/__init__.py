"""Batch jobs over image files: explain (every task), evaluate, fit BroadCAM; the pipeline and the Ray engine."""
