"""The control loops: grouping pods into decisions, scheduling, remediation, status, audit."""
