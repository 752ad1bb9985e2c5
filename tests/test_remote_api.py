"""The Lambda API client against the double (which follows shared/docs/lambda-cloud-api.md)."""
from __future__ import annotations

import base64
import json
import time
import urllib.request

import pytest

from fractal.remote.api import GONE, LambdaAPIError, LambdaClient, Retry, load_api_key


def client(double, key=None, **kwargs) -> LambdaClient:
    return LambdaClient(key or double.api_key, double.url, key_source="$LAMBDA_API_KEY", **kwargs)


def _key_named(double, c: LambdaClient) -> str:
    return c.add_ssh_key("me", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFake me")["name"]


def test_launch_boots_then_is_active_with_an_ip_then_terminates(lambda_double):
    c = client(lambda_double)
    key = _key_named(lambda_double, c)
    instance_id = c.launch("us-west-1", "gpu_1x_a100_sxm4", key, name="fractal-test")
    assert len(instance_id) == 32 and int(instance_id, 16) >= 0
    booting = c.instance(instance_id)
    assert (booting.status, booting.ip, booting.ready) == ("booting", None, False)
    assert booting.price_cents_per_hour == 129 and booting.region == "us-west-1"
    time.sleep(lambda_double.boot_seconds + 0.05)
    active = c.instance(instance_id)
    assert active.status == "active" and active.ip == "127.0.0.1" and active.ready
    assert [i.id for i in c.instances()] == [instance_id]
    [terminated] = c.terminate([instance_id])
    assert terminated.status in GONE
    time.sleep(lambda_double.terminate_seconds + 0.05)
    assert c.instances() == []
    assert c.instance(instance_id).status == "terminated"


def test_responses_use_the_documented_envelopes(lambda_double):
    def raw(path, key):
        req = urllib.request.Request(lambda_double.url + path, headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, doc = raw("/instance-types", lambda_double.api_key)
    assert status == 200 and set(doc) == {"data"}
    entry = doc["data"]["gpu_1x_a100_sxm4"]
    assert entry["instance_type"]["price_cents_per_hour"] == 129
    assert [r["name"] for r in entry["regions_with_capacity_available"]] == ["us-west-1", "us-east-1"]
    assert doc["data"]["gpu_8x_h100_sxm5"]["regions_with_capacity_available"] == []
    status, doc = raw("/instances/" + "0" * 32, lambda_double.api_key)
    assert status == 404 and doc["error"]["code"] == "global/object-does-not-exist"
    status, doc = raw("/instances", "wrong")
    assert status == 401 and doc["error"]["code"] == "global/invalid-api-key" and "message" in doc["error"]


def test_the_double_accepts_basic_auth_with_the_key_as_user(lambda_double):
    token = base64.b64encode(f"{lambda_double.api_key}:".encode()).decode()
    req = urllib.request.Request(lambda_double.url + "/instances", headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(req) as r:
        assert json.loads(r.read()) == {"data": []}


def test_429_is_retried_with_growing_backoff(lambda_double):
    waits: list[float] = []
    c = client(lambda_double, retry=Retry(tries=6, first_wait=10, factor=1.6, max_wait=100, jitter=0),
               sleep=waits.append)
    lambda_double.inject("GET", "/instances", 429, times=3)
    assert c.instances() == []
    assert waits == pytest.approx([10, 16, 25.6])
    assert [s for m, p, s in lambda_double.requests if p.endswith("/instances")] == [429, 429, 429, 200]


def test_429_gives_up_after_the_last_try(lambda_double):
    c = client(lambda_double, retry=Retry(tries=3, first_wait=0.001), sleep=lambda s: None)
    lambda_double.inject("GET", "/instance-types", 429, times=5)
    with pytest.raises(LambdaAPIError) as e:
        c.instance_types()
    assert e.value.status == 429 and "3 tries" in str(e.value)


def test_other_errors_are_not_retried(lambda_double):
    """A POST is not retried on a 5xx (a launch that did happen would bill twice); a GET is."""
    c = client(lambda_double, sleep=lambda s: pytest.fail("slept on a non-429 error"))
    lambda_double.inject("POST", "/instance-operations/terminate", 503, code="provider/internal-unavailable")
    with pytest.raises(LambdaAPIError) as e:
        c.terminate(["0" * 32])
    assert e.value.code == "provider/internal-unavailable" and "retry in a few minutes" in str(e.value)
    assert len([p for m, p, s in lambda_double.requests if p.endswith("/terminate")]) == 1


def test_a_get_is_retried_after_no_answer_or_a_gateway_page(lambda_double):
    waits: list[float] = []
    c = client(lambda_double, retry=Retry(first_wait=0.01, jitter=0), sleep=waits.append, timeout=0.5)
    lambda_double.inject("GET", "/instances", 0)  # the connection closes without an answer
    lambda_double.inject("GET", "/instances", 502, html=True)
    lambda_double.slow("GET", "/instances", 1.0)  # longer than the client's timeout
    assert c.instances() == []
    assert len(waits) == 3
    lambda_double.inject("GET", "/instances", 502, html=True, times=10)
    with pytest.raises(LambdaAPIError) as e:
        c.instances()
    assert e.value.code == "fractal/unexpected-response" and e.value.status == 502


def test_launch_rate_limit_answers_429_and_the_client_waits_it_out(lambda_double):
    lambda_double.launch_interval = 0.3  # the real API allows about one launch per 12 s
    c = client(lambda_double, retry=Retry(first_wait=0.15, jitter=0))
    key = _key_named(lambda_double, c)
    first = c.launch("us-west-1", "gpu_1x_a10", key)
    second = c.launch("us-east-1", "gpu_1x_a10", key)
    c.terminate([first, second])
    assert 429 in [s for m, p, s in lambda_double.requests if p.endswith("/launch")]


@pytest.mark.parametrize("code, status, advice", [
    ("global/invalid-api-key", 401, "LAMBDA_API_KEY"),
    ("global/account-inactive", 403, "billing"),
    ("global/invalid-parameters", 400, "malformed"),
    ("global/object-does-not-exist", 404, "fractal lambda types"),
    ("global/quota-exceeded", 400, "higher quota"),
    ("instance-operations/launch/insufficient-capacity", 400, "instance_types or regions"),
    ("instance-operations/launch/file-system-in-wrong-region", 400, "region"),
    ("provider/internal-unavailable", 503, "retry"),
])
def test_every_error_code_becomes_a_message_that_says_what_to_do(lambda_double, code, status, advice):
    c = client(lambda_double)
    lambda_double.inject("POST", "/instance-operations/launch", status, code=code)
    with pytest.raises(LambdaAPIError) as e:
        c.launch("us-west-1", "gpu_1x_a10", "k")
    assert e.value.code == code and e.value.status == status
    assert advice in str(e.value) and "POST /instance-operations/launch" in str(e.value)


def test_launch_validation_follows_the_doc(lambda_double):
    c = client(lambda_double)
    with pytest.raises(LambdaAPIError) as e:
        c.launch("us-west-1", "gpu_1x_a10", "no-such-key")
    assert e.value.code == "global/object-does-not-exist"
    key = _key_named(lambda_double, c)
    with pytest.raises(LambdaAPIError) as e:
        c.launch("us-west-1", "gpu_8x_h100_sxm5", key)
    assert e.value.code == "instance-operations/launch/insufficient-capacity"
    with pytest.raises(LambdaAPIError) as e:
        c.launch("mars-1", "gpu_1x_a10", key)
    assert e.value.code == "global/object-does-not-exist"
    assert lambda_double.running() == []


def test_invalid_key_message_names_the_source_never_the_key(lambda_double):
    secret = "sk-this-must-never-appear-" + "x" * 20
    c = LambdaClient(secret, lambda_double.url, key_source="/home/u/.lambda_cloud/lambda_keys")
    with pytest.raises(LambdaAPIError) as e:
        c.instances()
    text = str(e.value) + repr(e.value) + repr(c)
    assert e.value.code == "global/invalid-api-key" and "lambda_keys" in text
    assert secret not in text


def test_unreachable_api_is_a_clear_error():
    c = LambdaClient("k", "http://127.0.0.1:9/api/v1", timeout=2, retry=Retry(tries=2, first_wait=0.01))
    with pytest.raises(LambdaAPIError) as e:
        c.instances()
    assert e.value.code == "fractal/unreachable" and "FRACTAL_LAMBDA_API_URL" in str(e.value)


def test_api_key_from_env_then_keys_file(tmp_path):
    keys = tmp_path / "lambda_keys"
    keys.write_text("# comment\napi_key = from-file\n")
    assert load_api_key({"LAMBDA_API_KEY": " from-env "}, keys) == ("from-env", "$LAMBDA_API_KEY")
    assert load_api_key({}, keys) == ("from-file", str(keys))
    with pytest.raises(LambdaAPIError, match="no API key"):
        load_api_key({}, tmp_path / "missing")
    keys.write_text("token = nope\n")
    with pytest.raises(LambdaAPIError, match="no `api_key = <KEY>` line"):
        load_api_key({}, keys)
