"""Pure decisions: references, keyring, policy, diagnosis, detection, planning.

Synchronous and typed; imports nothing outside ``pullmedic.core`` but the standard library.
"""
