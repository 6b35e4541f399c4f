"""Emulators of qnet's instruments and the physics of the emulated testbed."""

from .server import free_port as free_port
