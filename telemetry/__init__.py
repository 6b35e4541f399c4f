"""qnet's telemetry: record schema, MQTT publisher with outbox, MQTT -> InfluxDB bridge.

Imports nothing of drivers/ or controller/. Private modules are re-exported
here (``import X as X`` marks a re-export).
"""

# -- re-exports of the modules go below, one block per module --
