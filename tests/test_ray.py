"""`lookalike index --ray`: the workers as Ray actors on a local Ray instance of 2 CPUs. The library
they build equals the local pool's, feature for feature; an actor killed mid-run is started again and
its batch asked again, and nothing is lost or written twice."""

import os
import signal
import subprocess
import sys

import numpy as np
import psutil
import pytest
from photos import encode

from lookalike import indexer
from lookalike.library import Library

ENGINES = ["phash", "color", "global", "local"]


def test_without_ray_nothing_of_it_is_imported():
    code = "import sys, lookalike.cli, lookalike.indexer, lookalike.service; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="the Ray tests need lookalike[ray]")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("gallery")
    for name in sorted(photos)[:20]:
        (folder / f"{name}.jpg").write_bytes(encode(photos[name].convert("RGB")))
    return folder


def same_library(a: Library, b: Library) -> None:
    assert sorted((r.file_name, r.image_id, r.digest) for r in a.store.records()) == sorted(
        (r.file_name, r.image_id, r.digest) for r in b.store.records()
    )
    for engine in ENGINES:
        ids_a, features_a = a.store.read_features(engine)
        ids_b, features_b = b.store.read_features(engine)
        assert ids_a.tolist() == ids_b.tolist(), engine
        if engine == "local":
            for x, y in zip(features_a, features_b):
                assert np.array_equal(x.xy, y.xy) and np.array_equal(x.descriptors, y.descriptors)
        else:
            assert np.array_equal(features_a, features_b), engine
    for image_id in a.store.feature_ids("phash").tolist():
        assert a.store.thumbnail(image_id) == b.store.thumbnail(image_id)


def extractors() -> set[int]:
    """The pids of the Ray actors' processes (Ray names them after the actor class)."""
    return {p.pid for p in psutil.process_iter(["cmdline"]) if "ray::Extractor" in " ".join(p.info["cmdline"] or [])}


def test_ray_builds_the_library_the_local_pool_builds(tmp_path, gallery, local_ray):
    with Library(tmp_path / "pool", ENGINES) as by_pool, Library(tmp_path / "ray", ENGINES) as by_ray:
        stages = []
        indexer.run(by_pool, gallery, workers=2)
        report = indexer.run(by_ray, gallery, ray="auto", on_start=lambda stage, n: stages.append((stage, n)))
        assert report.indexed == 20 and not report.failed
        assert stages == [("fast engines", 20), ("local", 20)]
        same_library(by_pool, by_ray)
        assert indexer.run(by_ray, gallery, ray="auto").unchanged == 20  # a second run skips them all
    assert local_ray.is_initialized()  # a cluster it did not start is left running


def test_an_actor_killed_mid_run_is_started_again_and_nothing_is_lost_or_written_twice(tmp_path, gallery, local_ray):
    killed, later = [], set()

    def kill_the_actors(job, error):
        if killed:
            later.update(extractors())
            return
        killed.extend(extractors())
        for pid in killed:
            os.kill(pid, signal.SIGKILL)

    with Library(tmp_path / "pool", ENGINES) as by_pool, Library(tmp_path / "ray", ENGINES) as by_ray:
        indexer.run(by_pool, gallery, workers=2)
        report = indexer.run(by_ray, gallery, ray="auto", on_done=kill_the_actors)
        assert killed and later - set(killed)  # killed with batches to do, and started again
        assert report.indexed == 20 and not report.failed
        same_library(by_pool, by_ray)
        for engine in ENGINES:  # each feature written once: one journal entry per image
            assert by_ray.store.journal_seq(engine) == 20, engine
