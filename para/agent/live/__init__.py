"""The live stream: per-second values from live samples (metrics.py), the alert rules'
language (expr.py, rules.py), their evaluation (engine.py), notification sinks (sinks.py),
the OpenMetrics/Prometheus exposition (openmetrics.py), the view `para top` shows (view.py),
and the agent's own use of them on its node (node.py).

It sits in the agent because the agent is the first to evaluate rules (on its own node, when
no collector can see it); the collector runs the same engine over the cluster and `para top`
the same view, both importing it from upstream.  Nothing here imports pyarrow or duckdb: the
agent's sampling process stays small (para/agent/lean.py).
"""
