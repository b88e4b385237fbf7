"""Throughput and memory figures of the bridge's hot paths, printed as a table.

Run ``python -m benchmarks`` (``--quick`` for a smoke run with small sizes). Nothing here passes
or fails: the figures are for comparing one change against another on the same machine.
"""
