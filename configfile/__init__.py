"""Reading config files: one YAML loader for every qnet config (node, daemon, HIL, bridge, testbed).

Every config goes through :func:`load_mapping`, which differs from ``yaml.safe_load`` in
what an operator needs from it:

- a duplicate key anywhere (``current_setpoint_a`` twice in one ``limits``) is an error
  naming the file, the line and the key, instead of the second silently winning: a
  repeated key can widen a safety limit or make every user an admin;
- a syntax error names the file and the line (not ``"<unicode string>"``);
- the result remembers the line of every key, so a later validation error can say where
  (:meth:`YamlDoc.where`).

This room imports nothing of ours, so every other room may use it.
"""

from __future__ import annotations

from ._loader import ConfigFileError, YamlDoc, load_mapping, nearest

__all__ = ["ConfigFileError", "YamlDoc", "load_mapping", "nearest"]
