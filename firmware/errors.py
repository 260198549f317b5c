"""One exception root for cuecam; every user-facing error says what to do next."""

from __future__ import annotations


class CuecamError(Exception):
    """Root of every error cuecam raises on purpose."""

    exit_code = 1


class ConfigError(CuecamError):
    """A board config is malformed; the message names file, line and key."""

    exit_code = 2

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class ModelError(CuecamError):
    """A model file is missing, altered, unreadable or of the wrong shape."""

    exit_code = 3


class InferenceError(CuecamError):
    """The inference runtime or accelerator cannot be used."""

    exit_code = 3


class CameraError(CuecamError):
    """A camera or replay source cannot be opened or read. ``kind``: open, read, hang or frame
    (the backend returned something that is not a whole RGB frame)."""

    exit_code = 3

    def __init__(self, message: str, *, kind: str = "read") -> None:
        super().__init__(message)
        self.kind = kind


class AuthError(CuecamError):
    """The API token cannot be found or created."""

    exit_code = 3


class GpioError(CuecamError):
    """The opt-out button or status LED cannot be set up on the configured pins."""

    exit_code = 3


class TlsError(CuecamError):
    """The device certificate or its key (api.tls) cannot be loaded."""

    exit_code = 3
