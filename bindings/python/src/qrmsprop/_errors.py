"""Status codes -> Python exceptions carrying qrms_last_error().

Every exception raised for a failing library call is a QrmsError (with
.status, .status_name and .message) and also the built-in exception a Python
user expects: the alpha/centered/optim_bits rules raise NotImplementedError,
argument rules ValueError, and so on.
"""
from . import _lib


class QrmsError(Exception):
    """A failing qrmsprop call. .status is the qrms_status_t, .message the
    library's message (qrms_last_error(), which names the function and the rule)."""

    status = None

    def __init__(self, message, status=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    @property
    def status_name(self):
        return status_string(self.status) if self.status is not None else "unknown status"


class InvalidArgumentError(QrmsError, ValueError):
    """QRMS_ERROR_INVALID_ARGUMENT"""

    status = _lib.ERROR_INVALID_ARGUMENT


class QrmsNotImplementedError(QrmsError, NotImplementedError):
    """QRMS_ERROR_NOT_IMPLEMENTED (alpha == 0, centered, optim_bits not 8/32)"""

    status = _lib.ERROR_NOT_IMPLEMENTED


class DeviceError(QrmsError, RuntimeError):
    """QRMS_ERROR_DEVICE (no such device, no CUDA support, pointer on the wrong device)"""

    status = _lib.ERROR_DEVICE


class OutOfMemoryError(QrmsError, MemoryError):
    """QRMS_ERROR_OUT_OF_MEMORY"""

    status = _lib.ERROR_OUT_OF_MEMORY


class BadStateError(QrmsError, RuntimeError):
    """QRMS_ERROR_BAD_STATE (a state blob that load() rejects; the optimizer is unchanged)"""

    status = _lib.ERROR_BAD_STATE


class InternalError(QrmsError, RuntimeError):
    """QRMS_ERROR_INTERNAL"""

    status = _lib.ERROR_INTERNAL


_BY_STATUS = {
    _lib.ERROR_INVALID_ARGUMENT: InvalidArgumentError,
    _lib.ERROR_NOT_IMPLEMENTED: QrmsNotImplementedError,
    _lib.ERROR_DEVICE: DeviceError,
    _lib.ERROR_OUT_OF_MEMORY: OutOfMemoryError,
    _lib.ERROR_BAD_STATE: BadStateError,
    _lib.ERROR_INTERNAL: InternalError,
}


def status_string(status):
    """qrms_status_string(status)."""
    return _lib.load_library().qrms_status_string(status).decode("utf-8", "replace")


def error_for(status, message):
    cls = _BY_STATUS.get(status)
    if cls is None:
        return QrmsError(message, status)
    return cls(message)


def check(status):
    """Raises the exception for a non-zero status, with this thread's last error."""
    if status == _lib.SUCCESS:
        return
    lib = _lib.load_library()
    # qrms_last_error is per thread and valid until the thread's next failing
    # call: read it now, on the thread that made the call.
    raw = lib.qrms_last_error()
    message = raw.decode("utf-8", "replace") if raw else ""
    if not message:
        message = status_string(status)
    raise error_for(status, message)
