"""One exception hierarchy for the whole control plane.

Core code raises only these. Each face maps them once: the CLI prints the message on one
line and exits with ``exit_code``; the API returns an RFC 9457 problem body with
``http_status``. The class docstring is the default message.
"""

from __future__ import annotations


class BizosError(Exception):
    """Unexpected bizosctl failure."""

    exit_code = 1
    http_status = 500
    code = "error"
    #: A background job that failed with this error is tried again later (with backoff):
    #: the cause is expected to pass (a server restarting, a target held by another run).
    retryable = False

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "error").strip()
        super().__init__(self.message)


class InvalidInput(BizosError):
    """Invalid input."""

    exit_code = 2
    http_status = 422
    code = "invalid-input"


class NotFound(BizosError):
    """Not found."""

    exit_code = 3
    http_status = 404
    code = "not-found"


class AlreadyExists(InvalidInput):
    """Already exists."""

    http_status = 409
    code = "already-exists"


class Conflict(InvalidInput):
    """The request conflicts with the current state."""

    http_status = 409
    code = "conflict"


class ConfigError(InvalidInput):
    """The configuration is not usable."""

    code = "config"


class OperationFailed(BizosError):
    """The operation failed."""

    code = "operation-failed"


class Busy(BizosError):
    """Another operation holds this target; try again when it has finished."""

    http_status = 409
    code = "busy"
    retryable = True


class ServerUnavailable(BizosError):
    """A database server could not be reached."""

    http_status = 503
    code = "server-unavailable"
    retryable = True


class TenantNotWritable(BizosError):
    """The tenant does not accept writes now."""

    http_status = 423
    code = "tenant-not-writable"
    retryable = True


class TenantSuspended(TenantNotWritable):
    """The tenant is suspended: its data and credentials are refused."""

    http_status = 423
    code = "tenant-suspended"
    retryable = False  # banned by the platform: retrying until someone lifts it only spins


class QueryFailed(InvalidInput):
    """The SQL statement failed."""

    code = "query-failed"


class KeyringError(BizosError):
    """The keyring could not be used."""

    code = "keyring"


class KeyDestroyed(KeyringError):
    """The key version was destroyed: values under it can never be decrypted again."""

    code = "key-destroyed"


class DecryptionFailed(BizosError):
    """A value could not be decrypted (wrong key, tampered value or associated data)."""

    code = "decryption-failed"


class Unauthorized(BizosError):
    """Invalid credentials."""

    http_status = 401
    code = "unauthorized"


class InvalidToken(Unauthorized):
    """Invalid or expired session token."""

    code = "invalid-token"


class Forbidden(BizosError):
    """Not allowed."""

    http_status = 403
    code = "forbidden"


class TooManyRequests(BizosError):
    """Too many requests; wait before trying again."""

    http_status = 429
    code = "too-many-requests"
    retryable = True

    def __init__(self, message: str | None = None, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        #: Seconds to wait (the API's ``Retry-After``).
        self.retry_after = max(1, int(retry_after + 0.999))


class TenantMoving(TenantNotWritable):
    """The tenant is moving: writes pause briefly; retry in a moment."""

    http_status = 503
    code = "tenant-moving"


class InvalidSignature(Unauthorized):
    """The webhook signature does not verify."""

    code = "invalid-signature"


class BudgetExceeded(BizosError):
    """The tenant's AI budget for this month is spent: the call was refused."""

    http_status = 402
    code = "budget-exceeded"


class ProviderFailed(BizosError):
    """The model provider did not answer."""

    http_status = 502
    code = "provider-failed"
    retryable = True

    def __init__(
        self,
        message: str | None = None,
        *,
        reason: str = "error",
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        #: timeout | connect | rate-limited | server-error | rejected | malformed
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class Interrupted(BizosError):
    """Interrupted (Ctrl-C); run the same command again to continue."""

    exit_code = 130  # 128 + SIGINT, what a shell reports for a process Ctrl-C stopped
    http_status = 499
    code = "interrupted"


class ProviderError(OperationFailed):
    """A cloud provider (Neon, Supabase) failed the request; run the same command again."""

    http_status = 502
    code = "provider"
    retryable = True


class ProviderAuth(InvalidInput):
    """The cloud provider refused the token."""

    code = "provider-auth"


class ProjectGone(NotFound):
    """The cloud project does not exist (any more) at the provider."""
