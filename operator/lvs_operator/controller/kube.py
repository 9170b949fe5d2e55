"""A small JSON REST client over the `kubernetes` package's configuration and connection pool.

Why not the generated API classes: the operator moves plain JSON (custom objects, status,
lists with pagination) and needs one error type with the HTTP status; the generated models
would only be converted back to dicts. Synchronous on purpose: the operator calls it from a
thread pool (`asyncio.to_thread`), which also bounds concurrent requests.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

__all__ = ["ApiError", "KubeAPI", "load_client"]


class ApiError(Exception):
    """A request the API server refused or could not be sent (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status or 'unreachable'}: {message}")
        self.status = status
        self.message = message


def load_client(kubeconfig: str | None) -> client.ApiClient:
    """kubeconfig file if given; in-cluster config inside a pod; else the default kubeconfig."""
    import os

    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    configuration.connection_pool_maxsize = 16
    return client.ApiClient(configuration)


class KubeAPI:
    def __init__(self, api_client: client.ApiClient, timeout: float = 30.0) -> None:
        self.api = api_client
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        _, url, headers, _, _ = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            auth_settings=["BearerToken"],
        )
        try:  # the REST layer serialises `body` itself (JSON for every +json content type)
            resp = self.api.call_api(
                method, url, header_params=headers, body=body, _request_timeout=self.timeout
            )
            raw = resp.read()  # type: ignore[no-untyped-call]
        except ApiException as exc:
            raise ApiError(exc.status or 0, _reason(exc.body) or str(exc.reason)) from exc
        except Exception as exc:  # urllib3 / socket errors: the server is not reachable
            raise ApiError(0, str(exc)) from exc
        if resp.status >= 400:
            raise ApiError(resp.status, _reason(raw) or str(resp.reason))
        return json.loads(raw) if raw else {}

    def get(self, path: str, **query: str) -> dict[str, Any]:
        return self.request("GET", path, query=query)

    def list_all(self, path: str, kind: str, api_version: str, page: int = 500
                 ) -> tuple[list[dict[str, Any]], str]:
        """Every item (with kind and apiVersion filled in) and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = {"limit": str(page)}
            if token:
                query["continue"] = token
            out = self.request("GET", path, query=query)
            for item in out.get("items") or ():
                item.setdefault("kind", kind)
                item.setdefault("apiVersion", api_version)
                items.append(item)
            meta = out.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def iter_list(self, path: str, kind: str, api_version: str) -> Iterator[dict[str, Any]]:
        yield from self.list_all(path, kind, api_version)[0]

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body=body)

    def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return self.request("PATCH", path, body=ops, content_type="application/json-patch+json")

    def delete(self, path: str) -> None:
        try:
            self.request("DELETE", path)
        except ApiError as exc:
            if exc.status != 404:
                raise


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _reason(raw: Any) -> str:
    try:
        body = json.loads(raw)
    except (TypeError, ValueError):
        return str(raw or "")[:500]
    return str(body.get("message") or "") if isinstance(body, dict) else ""
