"""qnet's telemetry: record schema, MQTT publisher with outbox, MQTT -> InfluxDB bridge.

Imports nothing of drivers/ or controller/. Private modules are re-exported here.
"""

__all__: list[str] = []
