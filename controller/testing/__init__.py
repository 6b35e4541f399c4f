"""Testing helpers shipped with qnet, shared by tests/, hil_tests/ and benchmarks/.

* :mod:`controller.testing.servers`: the real mosquitto, VictoriaMetrics and InfluxDB 1.x
  on free loopback ports (started and stopped by process id);
* :mod:`controller.testing.pipeline`: the telemetry pipeline (publisher -> mosquitto ->
  ``qnet bridge`` -> database) for end-to-end tests and benchmarks;
* :mod:`controller.testing.flood`: the command-flood scenario against a running daemon.

Like PyMeasure's ``pymeasure.test``, they ship inside the package so suites and
benchmarks never import ``tests/``.
"""
