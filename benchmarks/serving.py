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
"""

from __future__ import annotations

import dataclasses
import io
import json
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
from mlops_assets_tests.processes import mlflow_models_serve

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
