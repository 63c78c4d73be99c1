"""The live stream, shared by the agent and the collector: per-second values from live samples
(metrics.py), the alert rules' language (expr.py, rules.py), their evaluation (engine.py),
notification sinks (sinks.py), the OpenMetrics/Prometheus exposition (openmetrics.py) and the
view `para top` shows (view.py).

It is its own part beneath the agent and the collector because both evaluate the same rules:
the agent on its own node when no collector can see it (para/agent/livenode.py), the collector
over the cluster.  It imports only para.formats and para.errors, and nothing here imports
pyarrow or duckdb: the agent's sampling process stays small (para/agent/lean.py).
"""
