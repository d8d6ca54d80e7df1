"""One error tree for everything a user or an upstream can cause.

    CoeError                      status  type
    ├── ConfigError                 500   config_error        bad experts.yaml / settings
    ├── InvalidRequest              400   invalid_request_error
    │   ├── EgressRefused           400   invalid_request_error the egress policy refuses it
    │   ├── NoExpertWithinPolicy    400   invalid_request_error a request's `coe` policy keeps
    │   │                                                       every expert out
    │   ├── PayloadTooLarge         413   invalid_request_error
    │   └── RequestTimeout          408   invalid_request_error the client sent its body too slowly
    ├── Unauthorized                401   authentication_error missing or wrong key / token
    ├── NotFound                    404   not_found_error
    │   └── ModelNotFound           404   invalid_request_error (code model_not_found)
    ├── Conflict                    409   conflict_error      the resource already exists / in use
    ├── RateLimited                 429   rate_limit_error    a key's request budget is spent
    ├── RoutingError                500   routing_error       every router abstained
    │   └── RouterBusy              503   router_busy         a router cannot decide now (its
    │                                                         encoder's queue is full); the
    │                                                         pipeline moves to its next router
    ├── StoreUnavailable            503   store_unavailable
    └── UpstreamError               502   upstream_error      one expert call failed
        ├── UpstreamTimeout         504   upstream_timeout
        ├── UpstreamStatus          502   upstream_error      5xx/429 answer (400 when the expert
        │   │                                                 rejected the request itself)
        │   └── ExpertAuthFailed    502   upstream_error      401/403: our key for it is wrong
        ├── ExpertUnavailable       503   expert_unavailable  a pool could not swap it in (retried)
        └── AllExpertsFailed        502   upstream_error      every candidate failed (keeps all)

The gateway turns any CoeError into OpenAI's error shape with `to_openai()`; `error_body`
builds that shape for errors raised outside the tree (HTTP, validation, middleware).

An UpstreamError's `message` is what a client may read: the expert and the kind of failure,
never an internal URL, host or upstream body. `detail` says everything else, for the log
(credentials redacted); `code` names the kind (upstream_timeout, expert_unreachable, ...).
"""

from __future__ import annotations

from typing import Any


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object; every error we send, as a response or a stream event, is one."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class CoeError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_openai(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, param=self.param, code=self.code)


class ConfigError(CoeError):
    error_type = "config_error"


class InvalidRequest(CoeError):
    status_code = 400
    error_type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(CoeError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Conflict(CoeError):
    status_code = 409
    error_type = "conflict_error"


class RateLimited(CoeError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(InvalidRequest):
    status_code = 408
    code = "request_timeout"


class NotFound(CoeError):
    status_code = 404
    error_type = "not_found_error"


class ModelNotFound(NotFound):
    error_type = "invalid_request_error"
    code = "model_not_found"


class RoutingError(CoeError):
    error_type = "routing_error"


class RouterBusy(RoutingError):
    status_code = 503
    error_type = "router_busy"


class StoreUnavailable(CoeError):
    status_code = 503
    error_type = "store_unavailable"


class EgressRefused(InvalidRequest):
    """An expert endpoint the egress policy refuses (coe.security.egress)."""

    code = "egress_refused"


class NoExpertWithinPolicy(InvalidRequest):
    """A request's routing policy (allow, deny, max_cost) leaves no expert that may answer
    (coe.routing.policy)."""

    code = "no_expert_within_policy"


class UpstreamError(CoeError):
    status_code = 502
    error_type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        expert: str | None = None,
        url: str | None = None,
        detail: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message, code=code)
        self.expert = expert
        self.url = url  # already redacted by whoever raised it; for the log, never a client
        self.detail = detail or message

    @property
    def retryable(self) -> bool:
        """Whether another expert may succeed where this one failed."""
        return True

    @property
    def replica_retryable(self) -> bool:
        """Whether another replica of the same expert may succeed."""
        return self.retryable


class UpstreamTimeout(UpstreamError):
    status_code = 504
    error_type = "upstream_timeout"
    code = "upstream_timeout"


class UpstreamStatus(UpstreamError):
    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: str = "",
        expert: str | None = None,
        url: str | None = None,
        detail: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message, expert=expert, url=url, detail=detail, code=code)
        self.status = status
        self.body = body
        if 400 <= status < 500 and status not in (401, 403, 429):
            # The expert rejected the request itself: that is the client's error to fix.
            self.status_code = 400
            self.error_type = "invalid_request_error"

    @property
    def retryable(self) -> bool:
        # 4xx from an expert means our request is wrong for it; another replica says the same.
        return self.status >= 500 or self.status == 429


class ExpertAuthFailed(UpstreamStatus):
    """The expert answered 401/403: the gateway's own credentials for it are wrong, which the
    client cannot fix. Another expert may answer; another replica (same key) would not."""

    code = "expert_auth_failed"

    @property
    def retryable(self) -> bool:
        return True

    @property
    def replica_retryable(self) -> bool:
        return False


class ExpertUnavailable(UpstreamError):
    """A pool could not make the expert resident (swap failed or cooling down); try another."""

    status_code = 503
    error_type = "expert_unavailable"
    code = "expert_unavailable"


class AllExpertsFailed(UpstreamError):
    code = "all_experts_failed"

    def __init__(self, message: str, failures: list[UpstreamError]):
        super().__init__(message, detail="; ".join(f.detail for f in failures) or message)
        self.failures = failures
        codes = {f.code for f in failures if f.code is not None}
        if len(codes) == 1 and all(f.code is not None for f in failures):
            self.code = codes.pop()  # one kind of failure: say which
        worst = max((f.status_code for f in failures), default=502)
        self.status_code = (
            504 if worst == 504 and all(isinstance(f, UpstreamTimeout) for f in failures) else 502
        )
