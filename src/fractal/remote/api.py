"""A client for the Lambda Cloud REST API v1, as Lambda's published OpenAPI document describes it.

Every success is {"data": ...}; every error is {"error": {"code", "message", "suggestion"?}}
and is raised as LambdaAPIError, whose text says what to do. Only HTTP 429 is retried (with
backoff), and a GET (which changes nothing) is also retried when no answer came or a 5xx
did; a POST is not: a retried launch that had in fact succeeded would bill twice, so the
caller decides (instances.launch looks for the instance by name instead).

The API key is read from LAMBDA_API_KEY or ~/.lambda_cloud/lambda_keys and is never
printed, logged or put in an exception; only where it came from is ever shown.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://cloud.lambda.ai/api/v1"
API_KEY_ENV = "LAMBDA_API_KEY"
API_URL_ENV = "FRACTAL_LAMBDA_API_URL"
KEYS_FILE = Path("~/.lambda_cloud/lambda_keys")

# Statuses from the API's Instance schema, grouped as launchers treat them.
NOT_READY = ("booting", "unhealthy")
GONE = ("terminating", "terminated", "preempted")

INSUFFICIENT_CAPACITY = "instance-operations/launch/insufficient-capacity"

_HINTS = {
    "global/invalid-api-key": "the key is invalid, expired or deleted: create one at "
    "https://cloud.lambda.ai/api-keys and put it in ${env} or {file} (a line `api_key = <KEY>`)",
    "global/account-inactive": "the Lambda account is inactive: check billing at https://cloud.lambda.ai",
    "global/invalid-parameters": "the request was malformed; if it came from executor.yaml, check the "
    "lambda section (instance_types, regions, ssh_key)",
    "global/object-does-not-exist": "check the name or id: `fractal lambda types` lists types and "
    "regions, `fractal lambda status` lists instances",
    "global/quota-exceeded": "terminate instances you no longer need (`fractal lambda status`) or ask "
    "Lambda support for a higher quota",
    INSUFFICIENT_CAPACITY: "add more instance_types or regions to the lambda section of "
    ".fractal/executor.yaml, or retry later (`fractal lambda types` shows capacity now)",
    "instance-operations/launch/file-system-in-wrong-region": "launch in the file system's region",
}


class LambdaAPIError(RuntimeError):
    """An error answer from the API (or no answer at all: code 'fractal/unreachable')."""

    def __init__(self, code: str, message: str, *, status: int | None, call: str, suggestion: str = "",
                 key_source: str = ""):
        self.code = code
        self.message = message
        self.status = status
        self.call = call
        self.suggestion = suggestion
        hint = _HINTS.get(code, "")
        if code.startswith("provider/"):
            hint = "Lambda's upstream provider is having trouble: retry in a few minutes"
        hint = hint.replace("${env}", API_KEY_ENV).replace("{file}", str(KEYS_FILE))
        if code == "global/invalid-api-key" and key_source:
            hint = f"the key from {key_source} was refused; " + hint
        text = f"Lambda API {call}: {message} [{code}" + (f", HTTP {status}]" if status else "]")
        if suggestion:
            text += f"; Lambda suggests: {suggestion}"
        if hint:
            text += f"; {hint}"
        super().__init__(text)


@dataclasses.dataclass(frozen=True)
class Retry:
    """Backoff on HTTP 429, as SkyPilot does: up to 6 tries, ~10 s first wait, x1.6, cap 100 s."""
    tries: int = 6
    first_wait: float = 10.0
    factor: float = 1.6
    max_wait: float = 100.0
    jitter: float = 0.25  # fraction of the wait added at random, so parallel clients spread out


@dataclasses.dataclass
class Instance:
    id: str
    name: str
    status: str
    ip: str | None
    region: str
    type_name: str
    price_cents_per_hour: int
    raw: dict[str, Any]

    @property
    def private_ip(self) -> str | None:
        """Its address on the region's private network (the API sometimes leaves it out)."""
        return self.raw.get("private_ip") or None

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Instance:
        itype = d.get("instance_type") or {}
        return cls(id=d["id"], name=d.get("name") or "", status=d.get("status", ""), ip=d.get("ip") or None,
                   region=(d.get("region") or {}).get("name", ""), type_name=itype.get("name", ""),
                   price_cents_per_hour=int(itype.get("price_cents_per_hour") or 0), raw=d)

    @property
    def ready(self) -> bool:
        return self.status == "active" and bool(self.ip)

    @property
    def gone(self) -> bool:
        return self.status in GONE


@dataclasses.dataclass
class InstanceTypeOffer:
    name: str
    description: str
    price_cents_per_hour: int
    regions_with_capacity: list[str]
    raw: dict[str, Any]


def load_api_key(environ: dict[str, str] | None = None, keys_file: Path | None = None) -> tuple[str, str]:
    """Returns (key, where it came from). The source, never the key, is what errors show."""
    environ = os.environ if environ is None else environ
    if environ.get(API_KEY_ENV, "").strip():
        return environ[API_KEY_ENV].strip(), f"${API_KEY_ENV}"
    path = (keys_file or KEYS_FILE).expanduser()
    if path.exists():
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            name, sep, value = line.partition("=")
            if sep and name.strip() == "api_key" and value.strip():
                return value.strip(), str(path)
        raise LambdaAPIError("fractal/no-api-key", f"{path} has no `api_key = <KEY>` line", status=None,
                             call="reading the API key")
    raise LambdaAPIError("fractal/no-api-key", f"no API key: set {API_KEY_ENV} or write `api_key = <KEY>` "
                         f"to {KEYS_FILE} (create a key at https://cloud.lambda.ai/api-keys)",
                         status=None, call="reading the API key")


class LambdaClient:
    def __init__(self, api_key: str, base_url: str = DEFAULT_API_URL, *, key_source: str = "",
                 retry: Retry = Retry(), timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep):
        self._key = api_key
        self.base_url = base_url.rstrip("/")
        self.key_source = key_source
        self.retry = retry
        self.timeout = timeout
        self._sleep = sleep

    def __repr__(self) -> str:  # the key stays out of tracebacks and debuggers' summaries
        return f"LambdaClient({self.base_url!r}, key from {self.key_source or 'argument'})"

    @classmethod
    def from_environment(cls, base_url: str | None = None, **kwargs: Any) -> LambdaClient:
        key, source = load_api_key()
        url = base_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL
        return cls(key, url, key_source=source, **kwargs)

    # -- transport -----------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        call = f"{method} {path}"
        data = None if body is None else json.dumps(body).encode()
        wait = self.retry.first_wait
        for attempt in range(1, self.retry.tries + 1):
            last = attempt == self.retry.tries
            req = urllib.request.Request(self.base_url + path, data=data, method=method)
            req.add_header("Authorization", f"Bearer {self._key}")
            req.add_header("Accept", "application/json")
            if data is not None:
                req.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return self._payload(resp.status, resp.read(), call)
            except urllib.error.HTTPError as e:
                raw = e.read()
                status = e.code
                retry_after = e.headers.get("Retry-After") if e.headers else None
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", e)
                if method == "GET" and not last:
                    self._pause(wait, None, call, attempt, f"no answer ({reason})")
                    wait *= self.retry.factor
                    continue
                raise LambdaAPIError("fractal/unreachable", f"cannot reach {self.base_url} ({reason}); check "
                                     f"the network or {API_URL_ENV}", status=None, call=call) from None
            if (status == 429 or (method == "GET" and status >= 500)) and not last:
                self._pause(wait, retry_after, call, attempt, f"HTTP {status}")
                wait *= self.retry.factor
                continue
            return self._payload(status, raw, call)
        raise AssertionError("unreachable")  # the loop returns or raises on its last try

    def _pause(self, wait: float, retry_after: str | None, call: str, attempt: int, why: str) -> None:
        pause = min(wait, self.retry.max_wait)
        if retry_after and retry_after.strip().isdigit():
            pause = max(pause, float(retry_after))
        pause *= 1 + random.uniform(0, self.retry.jitter)
        verb = "throttled" if why == "HTTP 429" else "failed"
        log.info("Lambda API %s %s (%s); retrying in %.1f s (try %d of %d)", verb, call, why, pause, attempt + 1,
                 self.retry.tries)
        self._sleep(pause)

    def _payload(self, status: int, raw: bytes, call: str) -> Any:
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {}
        if 200 <= status < 300 and isinstance(doc, dict) and "data" in doc:
            return doc["data"]
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict) and err.get("code"):
            raise LambdaAPIError(str(err["code"]), str(err.get("message", "")), status=status, call=call,
                                 suggestion=str(err.get("suggestion") or ""), key_source=self.key_source)
        if status == 429:
            raise LambdaAPIError("fractal/rate-limited", f"still throttled after {self.retry.tries} tries",
                                 status=status, call=call)
        if status == 401:  # some gateways answer 401 without the envelope
            raise LambdaAPIError("global/invalid-api-key", "unauthorized", status=status, call=call,
                                 key_source=self.key_source)
        raise LambdaAPIError("fractal/unexpected-response", f"HTTP {status} without the documented envelope",
                             status=status, call=call)

    # -- endpoints -----------------------------------------------------------------------

    def instance_types(self) -> dict[str, InstanceTypeOffer]:
        out = {}
        for name, entry in self._request("GET", "/instance-types").items():
            t = entry.get("instance_type", {})
            out[name] = InstanceTypeOffer(
                name=name, description=t.get("description", ""),
                price_cents_per_hour=int(t.get("price_cents_per_hour") or 0),
                regions_with_capacity=[r["name"] for r in entry.get("regions_with_capacity_available", [])],
                raw=entry)
        return out

    def launch(self, region: str, instance_type: str, ssh_key_name: str, name: str = "",
               tags: dict[str, str] | None = None) -> str:
        body: dict[str, Any] = {"region_name": region, "instance_type_name": instance_type,
                                "ssh_key_names": [ssh_key_name], "quantity": 1}
        if name:
            body["name"] = name[:64]
        if tags:
            body["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        ids = self._request("POST", "/instance-operations/launch", body)["instance_ids"]
        return ids[0]

    def terminate(self, instance_ids: list[str]) -> list[Instance]:
        data = self._request("POST", "/instance-operations/terminate", {"instance_ids": list(instance_ids)})
        return [Instance.from_api(d) for d in data.get("terminated_instances", [])]

    def instances(self) -> list[Instance]:
        return [Instance.from_api(d) for d in self._request("GET", "/instances")]

    def instance(self, instance_id: str) -> Instance:
        return Instance.from_api(self._request("GET", f"/instances/{instance_id}"))

    def ssh_keys(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/ssh-keys"))

    def add_ssh_key(self, name: str, public_key: str) -> dict[str, Any]:
        return self._request("POST", "/ssh-keys", {"name": name, "public_key": public_key})

