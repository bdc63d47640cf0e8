"""Serving: ``mlflow models serve`` /invocations against in-process `predict_scene`.

The model is the default preset's architecture, randomly initialised (speed does not depend on
the weights), logged as the project's pyfunc, registered and aliased ``champion`` in a temporary
SQLite registry, and served by a real ``mlflow models serve --env-manager local`` (one worker) on
a loopback port.

Throughput: the windows `predict_scene` slides over the scene (same size, overlap, batch size)
are read on pre's grid and posted in batches to /invocations with the scene's statistics as
params; the probabilities come back as JSON. The in-process side is `predict_scene` on the same
scene (which also blends and writes the GeoTIFF). Both are timed alternately, best of the repeats.

JSON share: the client's encoding and decoding are timed in the loop; the server's share is the
same work replayed in-process with MLflow's own functions (``scoring_server`` parsing the body
against the signature, ``predictions_to_json``) on the same bodies. Share = (client + server
JSON seconds) / /invocations seconds.

Latency: one 256 px pair (N=1) posted repeatedly by 1 and by 4 concurrent clients; p50 and p95 of
the request time, beside the in-process forward of the same pair.

Memory (``serving-rss``, `bench_serving_rss`): peak RSS of ``python -m mlops_assets.serving``
(cd-serving) with its default bounds, for a full 1 Mpx request and for the worst body under the
64 MiB limit posted by two clients at once.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import requests
import torch

from benchmarks.common import (
    PERF_SCENE,
    BenchResult,
    Target,
    cached_scene,
    load_average,
    open_scene,
    ratio,
)
from mlops_assets.core.cd.config import InferenceConfig, TrainConfig
from mlops_assets.core.cd.infer import predict_scene
from mlops_assets.core.cd.model import build_unet, model_spec
from mlops_assets.core.cd.raster import positions
from mlops_assets.core.cd.registry import log_cd_model
from mlops_assets.core.cd.tiles import scene_stats
from mlops_assets.core.tracking import CHAMPION, Tracker, load_pyfunc_model
from mlops_assets_tests.processes import ServerProcess, free_port, mlflow_models_serve

NAME = "change-detection-unet"


def _register(root: Path) -> Tracker:
    tracker = Tracker(f"sqlite:///{root / 'mlflow.db'}", "bench-serving", root / "artifacts")
    config = TrainConfig()
    torch.manual_seed(0)
    trained = SimpleNamespace(model=build_unet(8, config).eval(), spec=model_spec(8, config))
    with tracker.run("bench-serving", {}) as run_id:
        uri = log_cd_model(tracker, run_id, trained, 0.5)  # type: ignore[arg-type]
    version = tracker.register(NAME, uri, run_id, {}, "benchmark model")
    tracker.set_alias(NAME, CHAMPION, str(version.version))
    return tracker


@dataclasses.dataclass
class _JsonClock:
    client: float = 0.0
    server: float = 0.0


def _windows(scene: Path, config: InferenceConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Raw pre and post windows ([C, T, T] float32) where `predict_scene` puts its windows."""
    pres: list[np.ndarray] = []
    posts: list[np.ndarray] = []
    with open_scene(scene) as pair:
        size = min(config.tile_size, pair.height, pair.width)
        stride = size - min(config.overlap, size // 2)
        cols = positions(pair.width, size, stride)
        for row in positions(pair.height, size, stride):
            strip = pair.read_rows(row, size)
            for col in cols:
                pres.append(strip.pre[:, :, col : col + size].astype(np.float32))
                posts.append(strip.post[:, :, col : col + size].astype(np.float32))
    return pres, posts


def _server_json_seconds(model: Any, body: str, predictions: np.ndarray) -> float:
    """What the scoring server spends on this body's JSON: parse to tensors, predictions out."""
    from mlflow.pyfunc import scoring_server

    schema = model.metadata.get_input_schema()
    started = time.perf_counter()
    data, _ = scoring_server._split_data_and_params(body)  # pyright: ignore[reportPrivateUsage]
    scoring_server.infer_and_parse_data(data, schema)
    scoring_server.predictions_to_json(predictions, io.StringIO())
    return time.perf_counter() - started


def _post(address: str, body: str) -> requests.Response:
    response = requests.post(
        f"{address}/invocations",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=300,
    )
    response.raise_for_status()
    return response


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _latencies(address: str, body: str, concurrency: int, requests_each: int) -> list[float]:
    times: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(requests_each):
            started = time.perf_counter()
            _post(address, body)
            with lock:
                times.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def bench_serving(size: int = 1024, repeats: int = 2, requests_each: int = 10) -> list[BenchResult]:
    """Throughput, JSON share and latency of /invocations beside in-process inference."""
    scene = cached_scene(PERF_SCENE, size)
    config = InferenceConfig(device="cpu")
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        tracker = _register(root)
        model = load_pyfunc_model(tracker, f"models:/{NAME}@{CHAMPION}")
        net = model.unwrap_python_model().net
        multiple = 2 ** TrainConfig().encoder_depth
        with open_scene(scene) as pair:
            pre_stats, post_stats = scene_stats(pair)
        params = {
            "pre_mean": pre_stats.mean,
            "pre_std": pre_stats.std,
            "post_mean": post_stats.mean,
            "post_std": post_stats.std,
        }
        pres, posts = _windows(scene, config)
        batches = [
            (np.stack(pres[i : i + config.batch_size]), np.stack(posts[i : i + config.batch_size]))
            for i in range(0, len(pres), config.batch_size)
        ]
        model_uri = f"models:/{NAME}@{CHAMPION}"
        with mlflow_models_serve(model_uri, tracker.tracking_uri, root / "serve.log") as server:
            address = server.address
            clock = _JsonClock()

            def served_scene() -> None:
                for pre, post in batches:
                    t0 = time.perf_counter()
                    inputs = {"pre": pre.tolist(), "post": post.tolist()}
                    body = json.dumps({"inputs": inputs, "params": params})
                    t1 = time.perf_counter()
                    response = _post(address, body)
                    t2 = time.perf_counter()
                    predictions = np.asarray(response.json()["predictions"], np.float32)
                    t3 = time.perf_counter()
                    clock.client += (t1 - t0) + (t3 - t2)
                    clock.server += _server_json_seconds(model, body, predictions)

            def in_process() -> None:
                with open_scene(scene) as pair:
                    predict_scene(
                        pair, net, pre_stats, post_stats, config, root / "map.tif", device, multiple
                    )

            served_times: list[float] = []
            local_times: list[float] = []
            clocks: list[_JsonClock] = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                in_process()
                local_times.append(time.perf_counter() - t0)
                clock = _JsonClock()
                t0 = time.perf_counter()
                served_scene()
                served_times.append(time.perf_counter() - t0 - clock.server)  # replay excluded
                clocks.append(clock)

            best = int(np.argmin(served_times))
            json_seconds = clocks[best].client + clocks[best].server
            share = json_seconds / served_times[best]

            rng = np.random.default_rng(0)
            pair256 = {
                role: rng.integers(200, 3000, (1, 4, 256, 256)).astype(np.float32)
                for role in ("pre", "post")
            }
            body = json.dumps({"inputs": {k: v.tolist() for k, v in pair256.items()}})
            _post(address, body)  # warm-up
            load = load_average()
            lat1 = _latencies(address, body, 1, requests_each)
            lat4 = _latencies(address, body, 4, requests_each)
            local_lat = []
            python_model = model.unwrap_python_model()
            for _ in range(requests_each):
                t0 = time.perf_counter()
                python_model.predict(None, pair256, None)
                local_lat.append(time.perf_counter() - t0)

    mpx = size * size / 1e6
    served_rate, local_rate = mpx / min(served_times), mpx / min(local_times)
    common = {
        "scene": f"{PERF_SCENE.scene_id}-{size}",
        "windows": len(pres),
        "tile_size": config.tile_size,
        "batch_size": config.batch_size,
        "load_average_1m_before_latency": round(load[0], 2),
    }
    return [
        BenchResult(
            name=f"serving throughput ({size} px)",
            unit="Mpx/s",
            measured=served_rate,
            reference=local_rate,
            ratio=ratio(served_rate, local_rate),
            target=Target("ratio", ">=", 0.0),
            judged=False,
            note="/invocations (mlflow models serve, 1 worker) vs in-process predict_scene on "
            f"the same {len(pres)} windows; best of {repeats}; informational (no target)",
            details={**common, "served_seconds": served_times, "local_seconds": local_times},
        ),
        BenchResult(
            name="serving JSON share",
            unit="%",
            measured=100 * share,
            reference=None,
            target=Target("measured", "<=", 100.0),
            judged=False,
            note="client encode/decode + the server's parse and predictions_to_json (replayed "
            "in-process on the same bodies) over the /invocations time",
            details={
                **common,
                "client_json_seconds": clocks[best].client,
                "server_json_seconds": clocks[best].server,
                "served_seconds": served_times[best],
            },
        ),
        *[
            BenchResult(
                name=f"serving latency 256 px, concurrency {c}",
                unit="s",
                measured=_percentile(lat, 50),
                reference=_percentile(local_lat, 50),
                ratio=ratio(_percentile(lat, 50), _percentile(local_lat, 50)),
                target=Target("measured", "<=", 1e9),
                judged=False,
                note=f"p50 (p95 {_percentile(lat, 95):.3f} s) of {len(lat)} requests of one pair; "
                "reference: the pyfunc's predict in-process",
                details={
                    **common,
                    "p50_s": _percentile(lat, 50),
                    "p95_s": _percentile(lat, 95),
                    "local_p50_s": _percentile(local_lat, 50),
                    "local_p95_s": _percentile(local_lat, 95),
                    "seconds": lat,
                },
            )
            for c, lat in ((1, lat1), (4, lat4))
        ],
    ]


# Memory of one request at cd-serving's bounds -----------------------------------------------


def _rss_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of ``pid`` in MiB, from /proc."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found


def _body(windows: int, worst: bool) -> str:
    """A 4-band request of ``windows`` 256 px pairs: uint16 values, or 4-byte numbers (``0.5,``)."""
    rng = np.random.default_rng(0)
    shape = (windows, 4, 256, 256)
    if worst:  # as many numbers as bytes allow: the parse's worst case per body byte
        arrays = {r: rng.integers(0, 10, shape) + 0.5 for r in ("pre", "post")}
        inputs = {k: v.tolist() for k, v in arrays.items()}
        return json.dumps({"inputs": inputs}, separators=(",", ":"))
    arrays = {r: rng.integers(200, 3000, shape).astype(np.float32) for r in ("pre", "post")}
    return json.dumps({"inputs": {k: v.tolist() for k, v in arrays.items()}})


def _peak_of(tracker: Tracker, root: Path, body: str, clients: int) -> dict[str, Any]:
    """A fresh ``python -m mlops_assets.serving`` (defaults); ``clients`` post ``body`` at once."""
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    argv = [sys.executable, "-m", "mlops_assets.serving", "--model", f"{NAME}@{CHAMPION}"]
    argv += ["--port", str(port), "--poll-seconds", "3600"]
    env = {"MLFLOW_TRACKING_URI": tracker.tracking_uri, "MLOPS_HOME": str(root / "home")}
    server = ServerProcess(argv, f"http://127.0.0.1:{port}", root / "follower.log", env)
    with server:
        assert server.process is not None
        idle = _rss_mib(server.process.pid)["VmRSS"]

        def post(_: int) -> int:
            url = f"{server.address}/invocations"
            headers = {"Content-Type": "application/json"}
            return requests.post(url, data=body, headers=headers, timeout=1200).status_code

        with ThreadPoolExecutor(clients) as pool:
            statuses = list(pool.map(post, range(clients)))
        peak = _rss_mib(server.process.pid)["VmHWM"]
    return {"idle_mib": idle, "peak_mib": peak, "statuses": statuses, "body_mib": len(body) / 2**20}


def bench_serving_rss(limit_mib: float = 3072.0) -> list[BenchResult]:
    """Peak RSS of cd-serving for requests at its default bounds (body 64 MiB, 1 at a time).

    The default preset's model, as in `bench_serving`, behind the follower with its defaults.
    Two cases, each on a fresh server (peak RSS only grows): a full `MAX_PIXELS` request (1 Mpx,
    4 bands of uint16 values, which the model answers), and two concurrent clients each posting
    the worst body under the limit (4-byte numbers, the most Python objects per byte; over the
    pixel bound, so answered 400 after the parse). The target is the Kubernetes manifest's
    4Gi limit less a margin: ``limit_mib``.
    """
    from mlops_assets.core.cd.pyfunc_model import MAX_PIXELS
    from mlops_assets.serving.follower import DEFAULT_MAX_BODY_BYTES

    windows_full = MAX_PIXELS // (256 * 256)
    windows_worst = DEFAULT_MAX_BODY_BYTES // (8 * 4 * 256 * 256) - 1  # just under the limit
    cases = [
        ("full 1 Mpx request", _body(windows_full, worst=False), 1),
        ("worst body under the limit, 2 clients", _body(windows_worst, worst=True), 2),
    ]
    results: list[BenchResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-rss-") as tmp:
        root = Path(tmp)
        tracker = _register(root)
        for label, body, clients in cases:
            assert len(body) <= DEFAULT_MAX_BODY_BYTES, (label, len(body))
            found = _peak_of(tracker, root, body, clients)
            results.append(
                BenchResult(
                    name=f"serving peak RSS, {label}",
                    unit="MiB",
                    measured=found["peak_mib"],
                    reference=found["idle_mib"],
                    target=Target("measured", "<=", limit_mib),
                    note=f"python -m mlops_assets.serving, defaults; body {found['body_mib']:.1f}"
                    f" MiB; answers {found['statuses']}; reference = idle RSS",
                    details={**found, "load_average_1m": round(load_average()[0], 2)},
                )
            )
    return results
