"""cuecam on-device firmware: camera -> person detection -> ring buffer -> local HTTP API."""

__version__ = "0.1.0"
