"""No secret in a URI that is shown or stored."""

from __future__ import annotations

import pytest

from mlops_assets.core.redact import redact_text, redact_uri
from mlops_assets.core.store.lakefs import LakeFSStore
from mlops_assets.core.store.types import StoreUnavailableError
from mlops_assets_tests.conftest import free_port


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://TOKEN123@mlflow:5000", "http://***@mlflow:5000"),
        ("https://u:pw@host/p?x=1", "https://u:***@host/p?x=1"),
        ("https://host/?access_token=abc&page=2", "https://host/?access_token=***&page=2"),
        ("https://host/run?token=abc", "https://host/run?token=***"),
        (
            "https://bucket.s3.amazonaws.com/k.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIA%2F20260101&X-Amz-Signature=deadbeef&versionId=3",
            "https://bucket.s3.amazonaws.com/k.tif?X-Amz-Algorithm=***"
            "&X-Amz-Credential=***&X-Amz-Signature=***&versionId=3",
        ),
        ("https://acct.blob.core.windows.net/c/b?sv=2020&sig=abc%3D", None),
        ("https://host/cb#access_token=abc&state=1", "https://host/cb#access_token=***&state=1"),
        ("http://host:5000/#/experiments/1", "http://host:5000/#/experiments/1"),
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
    ],
)
def test_tokens_passwords_and_query_credentials_are_masked(uri: str, shown: str | None) -> None:
    if shown is None:
        shown = uri.replace("sig=abc%3D", "sig=***")
    assert redact_uri(uri) == shown


def test_every_uri_in_a_message_is_redacted() -> None:
    message = (
        "API request to http://TOKEN@mlflow:5000/api/2.0/runs failed; retry "
        "'https://h/?access_token=SECRET' later"
    )
    assert redact_text(message) == (
        "API request to http://***@mlflow:5000/api/2.0/runs failed; retry "
        "'https://h/?access_token=***' later"
    )


def test_a_lakefs_endpoint_with_credentials_never_shows_them() -> None:
    store = LakeFSStore(
        f"http://admin:hunter2@127.0.0.1:{free_port()}", "AKIAKEY", "SECRETKEY", "scenes"
    )
    assert "hunter2" not in repr(store)
    with pytest.raises(StoreUnavailableError) as info:
        store.resolve("main")
    assert "hunter2" not in str(info.value) and "SECRETKEY" not in str(info.value)
