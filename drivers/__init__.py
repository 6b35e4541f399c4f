"""qnet's instrument drivers: transports, one module per instrument model, and sim/ emulators.

Imports nothing of controller/ or telemetry/. Private modules are re-exported here.
"""

from ._tagsource import TagSource

# -- re-exports of the other modules go below, one block per module --

__all__ = ["TagSource"]
