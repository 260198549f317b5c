# cuecam opt-out companion: MicroPython runs this file at boot on the Raspberry Pi Pico W.
# It reads /companion.json (written by `cuecam provision --companion NAME`) and runs until power-off.
import asyncio

from cuecam_companion import core, hw

asyncio.run(core.main(hw.Pico()))
