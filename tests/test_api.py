"""``churnseg api`` against a real server on loopback: reads, auth, owners, feedback, rescore."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import uvicorn
import yaml

from churnseg.pipelines.api import create_app
from churnseg.pipelines.api.auth import token_digest
from churnseg.pipelines.config import ConfigError, load_config
from tests.conftest import copy_state

ADMIN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
OWNER = "owner-token-0123456789abcdef"
NOBODY = "noscope-token-0123456789abcdef"


@dataclass(frozen=True)
class Api:
    """A running server and what the tests need to know about it."""

    url: str
    config: Path
    owner_id: str
    own_customer: str
    other_customer: str

    def db(self, sql: str) -> pd.DataFrame:
        state = yaml.safe_load(self.config.read_text())["state_dir"]
        with sqlite3.connect(Path(state) / "scores.db") as con:
            return pd.read_sql(sql, con)

    def call(
        self, method: str, path: str, token: str | None = None, **kwargs: object
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def api(trained_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    path = copy_state(trained_state, tmp_path_factory.mktemp("api") / "state")
    assignments = Api("", path, "", "", "").db(
        "SELECT customer_id, owner_id FROM customer_assignments WHERE owner_id IS NOT NULL "
        "ORDER BY owner_id, customer_id"
    )
    owner_id = str(assignments["owner_id"].iloc[0])
    own = str(assignments.loc[assignments["owner_id"] == owner_id, "customer_id"].iloc[0])
    other = str(assignments.loc[assignments["owner_id"] != owner_id, "customer_id"].iloc[0])
    config = yaml.safe_load(path.read_text())
    config["api"] = {
        "rescore_workers": 1,
        "tokens": [
            {"name": "ops", "token_env": "CHURNSEG_TEST_ADMIN", "scopes": list(_SCOPES)},
            {"name": "analyst", "token_sha256": token_digest(READER)},
            {"name": "anna", "token_sha256": token_digest(OWNER), "owner_id": owner_id,
             "scopes": list(_SCOPES)},
            {"name": "nobody", "token_sha256": token_digest(NOBODY), "scopes": []},
        ]
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    os.environ["CHURNSEG_TEST_ADMIN"] = ADMIN
    app = create_app(load_config(str(path)))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    yield Api(f"http://127.0.0.1:{port}", path, owner_id, own, other)
    server.should_exit = True
    thread.join(timeout=10)
    os.environ.pop("CHURNSEG_TEST_ADMIN", None)


_SCOPES = ("read", "rescore", "feedback")


def no_trace(response: httpx.Response) -> None:
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text


def test_health_needs_no_token_and_says_what_is_served(api: Api) -> None:
    response = api.call("GET", "/health")
    assert response.status_code == 200, response.text
    newest = api.db("SELECT MAX(snapshot_date) AS s FROM customer_scores")["s"].iloc[0]
    assert response.json() == {"status": "ok", "schema_version": 4, "snapshot": newest}
    assert api.call("GET", "/openapi.json").json()["info"]["title"] == "churnseg"


def test_a_customer_reads_as_published_with_its_owner(api: Api) -> None:
    response = api.call("GET", f"/customers/{api.own_customer}", READER)
    assert response.status_code == 200, response.text
    body = response.json()
    row = api.db(
        f"SELECT * FROM customer_scores_latest WHERE customer_id = '{api.own_customer}'"
    ).iloc[0]
    assert body["customer_id"] == api.own_customer and body["owner_id"] == api.owner_id
    assert body["churn_probability"] == row["churn_probability"]
    assert (body["segment_name"], body["value_tier"], body["risk_band"]) == (
        row["segment_name"],
        row["value_tier"],
        row["risk_band"],
    )
    assert "; ".join(body["top_reasons"]) == (row["top_reasons"] or "")
    assert response.headers["X-Request-ID"]


@pytest.mark.parametrize(
    ("token", "status", "detail"),
    [
        (None, 401, "missing bearer token"),
        ("wrong-token-0123456789", 401, "invalid token"),
        (NOBODY, 403, "token 'nobody' lacks scope 'read'"),
    ],
)
def test_reads_without_a_valid_token_or_scope_are_refused(
    api: Api, token: str | None, status: int, detail: str
) -> None:
    response = api.call("GET", f"/customers/{api.own_customer}", token)
    assert (response.status_code, response.json()) == (status, {"detail": detail})
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_an_owner_reads_only_their_own_customers(api: Api) -> None:
    assert api.call("GET", f"/customers/{api.own_customer}", OWNER).status_code == 200
    other = api.call("GET", f"/customers/{api.other_customer}", OWNER)
    unknown = api.call("GET", "/customers/NO-SUCH-ID", OWNER)
    # The same answer as for an id that does not exist: nothing to learn by probing.
    assert (other.status_code, unknown.status_code) == (404, 404)
    assert other.json() == {"detail": f"customer {api.other_customer!r} not found"}
    assert api.call("GET", f"/customers/{api.other_customer}", READER).status_code == 200


def test_bad_ids_are_refused_with_a_4xx(api: Api) -> None:
    assert api.call("GET", "/customers/NO-SUCH-ID", READER).status_code == 404
    response = api.call("GET", "/customers/a%20b", READER)
    assert response.status_code == 422, response.text
    no_trace(response)


def test_a_correction_is_stored_with_its_author_and_audited(api: Api) -> None:
    body = {
        "kind": "correction",
        "customer_id": api.own_customer,
        "field": "value_tier",
        "value": "A",
        "reason": "signed a three-year contract",
    }
    response = api.call("POST", "/feedback", OWNER, json=body)
    assert response.status_code == 201, response.text
    receipt = response.json()
    stored = api.db(
        f"SELECT * FROM customer_feedback WHERE feedback_id = '{receipt['feedback_id']}'"
    )
    columns = ["kind", "customer_id", "author", "field", "value", "reason"]
    assert stored[columns].iloc[0].tolist() == [
        "correction", api.own_customer, "anna", "value_tier", "A", "signed a three-year contract",
    ]  # fmt: skip
    audit = api.db(f"SELECT * FROM api_audit WHERE audit_id = '{response.headers['X-Request-ID']}'")
    assert audit[["actor", "path", "customer_id", "status"]].iloc[0].tolist() == [
        "anna", "/feedback", api.own_customer, 201,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"kind": "correction", "field": "value_tier", "value": "D", "reason": "xyz"}, 422,
         "value_tier must be one of A, B, C; got 'D'"),
        ({"kind": "correction", "field": "churn_probability", "value": "0", "reason": "xyz"},
         422, "field must be one of value_tier, lifecycle_stage, segment_name"),
        ({"kind": "correction", "field": "value_tier", "value": "A"}, 422, "reason"),
        ({"kind": "contact", "contacted_at": "yesterday"}, 422, "contacted_at"),
        ({"kind": "praise"}, 422, "does not match any of the expected tags"),
    ],
)  # fmt: skip
def test_bad_feedback_is_refused_clearly_and_audited(
    api: Api, body: dict[str, str], status: int, says: str
) -> None:
    response = api.call("POST", "/feedback", ADMIN, json={"customer_id": api.own_customer, **body})
    assert response.status_code == status, response.text
    assert says in response.text
    no_trace(response)
    request_id = response.headers["X-Request-ID"]
    audit = api.db(f"SELECT status, detail FROM api_audit WHERE audit_id = '{request_id}'")
    assert audit["status"].tolist() == [status]
    assert audit["detail"].iloc[0], "the audit says why it was refused"


def test_feedback_on_another_owners_customer_or_without_scope_is_refused(api: Api) -> None:
    contact = {"kind": "contact", "contacted_at": "2026-01-05T10:00:00Z", "channel": "call"}
    theirs = api.call(
        "POST", "/feedback", OWNER, json={**contact, "customer_id": api.other_customer}
    )
    assert theirs.status_code == 404
    reader = api.call(
        "POST", "/feedback", READER, json={**contact, "customer_id": api.own_customer}
    )
    assert (reader.status_code, reader.json()) == (
        403,
        {"detail": "token 'analyst' lacks scope 'feedback'"},
    )
    anonymous = api.call(
        "POST", "/feedback", None, json={**contact, "customer_id": api.own_customer}
    )
    assert anonymous.status_code == 401
    audit = api.db("SELECT actor, status FROM api_audit WHERE status IN (401, 403, 404)")
    actors = [a if isinstance(a, str) else None for a in audit["actor"]]
    assert {(None, 401), ("analyst", 403), ("anna", 404)} <= set(
        zip(actors, audit["status"], strict=True)
    )


def test_rescore_publishes_an_intraday_row_with_the_corrections(api: Api) -> None:
    correction = {
        "kind": "correction",
        "customer_id": api.other_customer,
        "field": "lifecycle_stage",
        "value": "growing",
        "reason": "new project starting",
    }
    assert api.call("POST", "/feedback", ADMIN, json=correction).status_code == 201
    response = api.call("POST", f"/customers/{api.other_customer}/rescore", ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["update_kind"] == "intraday" and body["run_id"].startswith("api-")
    assert body["lifecycle_stage"] == "growing", "the correction overrides the model"
    row = api.db(f"SELECT * FROM customer_scores_latest WHERE customer_id = '{api.other_customer}'")
    assert row["churn_probability"].iloc[0] == body["churn_probability"]
    assert row["run_id"].iloc[0] == body["run_id"]
    audit = api.db(f"SELECT * FROM api_audit WHERE audit_id = '{response.headers['X-Request-ID']}'")
    assert audit["status"].tolist() == [200] and audit["actor"].tolist() == ["ops"]


def test_rescore_is_refused_for_others_customers_unknown_ids_and_readers(api: Api) -> None:
    theirs = api.call("POST", f"/customers/{api.other_customer}/rescore", OWNER)
    assert theirs.status_code == 404
    unknown = api.call("POST", "/customers/NO-SUCH-ID/rescore", ADMIN)
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"detail": "customer 'NO-SUCH-ID' has no rows in the sources"},
    )
    reader = api.call("POST", f"/customers/{api.own_customer}/rescore", READER)
    assert reader.status_code == 403
    for response in (theirs, unknown, reader):
        no_trace(response)


def test_the_api_refuses_to_start_without_a_usable_token(
    trained_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from churnseg.pipelines.config import ApiTokenConfig

    config = load_config(str(trained_state / "config.yaml"))
    monkeypatch.delenv("CHURNSEG_API_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="environment variable CHURNSEG_API_TOKEN is not set"):
        create_app(config)  # the default config's token

    def with_tokens(*tokens: ApiTokenConfig) -> object:
        api = config.api.model_copy(update={"tokens": list(tokens)})
        return config.model_copy(update={"api": api})

    with pytest.raises(ConfigError, match=r"api\.tokens is empty"):
        create_app(with_tokens())  # type: ignore[arg-type]
    monkeypatch.setenv("CHURNSEG_SHORT", "short")
    with pytest.raises(ConfigError, match="has 5 characters; use at least 16"):
        create_app(with_tokens(ApiTokenConfig(name="x", token_env="CHURNSEG_SHORT")))  # type: ignore[arg-type]


def test_concurrent_rescores_are_computed_together(api: Api) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ids = api.db("SELECT customer_id FROM customer_scores_latest ORDER BY customer_id LIMIT 6")
    with ThreadPoolExecutor(6) as pool:
        responses = list(
            pool.map(
                lambda c: api.call("POST", f"/customers/{c}/rescore", ADMIN), ids["customer_id"]
            )
        )
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    runs = {r.json()["run_id"] for r in responses}
    # One run at a time: the first request's run, then one run for everyone who arrived during it.
    assert len(runs) <= 2, runs
