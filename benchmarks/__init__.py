"""Throughput and memory figures of the bridge's hot paths, printed as a table.

Run ``python -m benchmarks`` (``--quick`` for a smoke run with small sizes). Nothing here passes
or fails: the figures are for comparing one change against another on the same machine.

``python -m benchmarks.targets [--quick]`` measures the real bridge (its own process) against the
performance targets over loopback UDP and TCP, with a fake Asterisk and a swarm of watchers
(``benchmarks/load.py``), and prints pass/fail per target. ``python -m benchmarks.soak`` runs
the bridge for minutes under churning subscriptions.
"""
