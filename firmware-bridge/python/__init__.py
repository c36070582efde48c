"""vsm_edge.bridge: the serial link to microcontroller firmware.

A sans-I/O frame codec and session state machine plus a Trio serial
transport; imports nothing else of vsm_edge.
"""

__all__: list[str] = []
