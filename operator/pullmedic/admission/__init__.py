"""The admission webhook: serves the core admission rules over HTTPS."""
