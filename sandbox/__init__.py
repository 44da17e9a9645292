"""Dev/test infrastructure: a real local control plane, registries and a node emulator.

Not part of the operator package or its image.
"""
