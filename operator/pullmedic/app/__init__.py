"""Entry points: the command line, the runner, kopf handlers, explain."""
