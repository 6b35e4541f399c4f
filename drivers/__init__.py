"""qnet's instrument drivers: transports, one module per instrument model, and sim/ emulators.

Imports nothing of controller/ or telemetry/. Private modules are re-exported
here (``import X as X`` marks a re-export).
"""

from ._tagsource import TagSource as TagSource

# -- re-exports of the other modules go below, one block per module --
