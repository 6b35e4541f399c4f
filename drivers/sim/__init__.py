"""Emulators of qnet's instruments and the physics of the emulated testbed."""
