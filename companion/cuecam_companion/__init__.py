"""The cuecam opt-out companion: the privacy sign's button, on a Raspberry Pi Pico W (MicroPython).

core: the companion itself (button, LED, Wi-Fi, signed opt-outs to every paired board);
hw: the Pico's pins, radio and watchdog (machine, network: imported only on the Pico);
fakes: the same parts in software, for tests and the sim; http: the HTTP client over sockets.
Runs unchanged under CPython for quick tests (compat).
"""

VERSION = "1.0"
