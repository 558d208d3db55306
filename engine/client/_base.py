"""What the sync and the asyncio client share besides the plans: settings, auth, batching."""

from __future__ import annotations

from typing import Any, TypeVar

from engine.client._batched import BatchedIngest, CallProcessor
from engine.client._core import ClientCore, RetryPolicy
from engine.client._env import settings_from_env
from engine.client._feedback import FeedbackBatcher, feedback_create_batch
from engine.client._http import SyncDriver
from engine.common._config import MAX_REQUEST_BYTES
from engine.wire.feedback import FeedbackCreateReq

__all__ = ["ClientBase"]

C = TypeVar("C", bound="ClientBase")


class ClientBase:
    """Construction, ``from_env``, ``set_auth`` and ``get_call_processor`` of both clients.

    Extra keyword-only settings beyond the seed's: ``wandb_base_url`` (where
    ``ensure_project_exists`` goes; by default derived from the trace server URL),
    ``api_key``, ``timeout_s`` (per request), ``retry_budget_s`` (all attempts of one
    request), ``engine_options`` (passed to the :class:`engine.Engine` of batched mode).
    """

    def __init__(self, trace_server_url: str, should_batch: bool = False,
                 remote_request_bytes_limit: int = MAX_REQUEST_BYTES, *,
                 wandb_base_url: str | None = None, api_key: str | None = None,
                 timeout_s: float = 60.0, retry_budget_s: float = 30.0,
                 engine_options: dict[str, Any] | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._core = ClientCore(trace_server_url,
                                remote_request_bytes_limit=remote_request_bytes_limit,
                                wandb_base_url=wandb_base_url, api_key=api_key)
        self.trace_server_url = str(self._core.trace_url)
        self.should_batch = should_batch
        self.remote_request_bytes_limit = remote_request_bytes_limit
        self._timeout_s = timeout_s
        self._retry = RetryPolicy(budget_s=retry_budget_s)
        self._batched: BatchedIngest | None = None
        self._feedback_driver: SyncDriver | None = None
        if should_batch:
            options = dict(engine_options or {})
            if api_key:
                options["api_key"] = api_key
            feedback = FeedbackBatcher(self._send_feedback_batch)
            # the URL as given: its credentials, if any, are the engine's sender's too
            self._batched = BatchedIngest(trace_server_url, feedback, options)

    @classmethod
    def from_env(cls: type[C], should_batch: bool = False) -> C:
        """A client for ``WF_TRACE_SERVER_URL`` / ``WANDB_BASE_URL`` with ``WANDB_API_KEY``
        or the netrc key (see ``engine.client._env``)."""
        settings = settings_from_env()
        client = cls(settings.trace_server_url, should_batch,
                     wandb_base_url=settings.wandb_base_url)
        if settings.api_key:
            client.set_auth(("api", settings.api_key))
        return client

    def set_auth(self, auth: tuple[str, str]) -> None:
        """HTTP Basic auth with the key of ``(user, key)``; the user sent is always ``api``."""
        _user, api_key = auth
        self._core.set_api_key(api_key)
        if self._batched is not None:
            self._batched.set_api_key(api_key)

    def get_call_processor(self) -> CallProcessor | None:
        """The batched-ingest handle (``flush(timeout_s)``, ``stats()``); None unless batching."""
        return None if self._batched is None else CallProcessor(self._batched)

    def _send_feedback_batch(self, items: list[FeedbackCreateReq]) -> object:
        """Runs on the feedback thread: always through a blocking driver."""
        driver = self._feedback_driver
        if driver is None:
            driver = self._feedback_driver = SyncDriver(self._core, self._retry, self._timeout_s)
        return driver.run(feedback_create_batch(self._core, items))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.trace_server_url!r}, "
                f"should_batch={self.should_batch})")
