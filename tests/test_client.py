"""The ClientApp's round at a site, without Flower: secret noise, lost state, site policy.

A simulated site of the smoke phantom cohort (generated once per module) trains through
``fedsynth.client.app.train_round`` exactly as Flower's ClientApp would call it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsynth.client import app as client_app
from fedsynth.client.site import SiteIdentity, check_site_policy, identify_site, load_site_data
from fedsynth.client.state import LostStateError
from fedsynth.common.config import load_config
from fedsynth.common.errors import ConfigError
from fedsynth.server.app import initial_generator

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("client-cache")


def _cfg(cache: Path, *extra: str):
    return load_config(SMOKE, [f"data.cache_dir={cache}", "train.batch_size=1", *extra])


def _request(cfg, run_dir: Path, server_round: int = 1, weights=None) -> client_app.TrainRequest:
    weights = initial_generator(cfg) if weights is None else weights
    return client_app.TrainRequest(
        cfg=cfg, server_round=server_round, rounds=cfg.federation.rounds, run_dir=str(run_dir),
        weights=weights, digest=client_app.weights_digest(weights),
    )  # fmt: skip


def _site(run_dir: Path, index: int = 0) -> SiteIdentity:
    return identify_site({"partition-id": index, "num-partitions": 3}, run_dir)


def _released(content) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in content.array_records["arrays"].items()}


def _replay(cfg, site: SiteIdentity, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the server can compute: the site's round rerun from everything it knows -- the
    config, the site's name, the global weights it sent -- and, worst case, the site's data."""
    from fedsynth.common.gan.trainer import LocalTrainer

    trainer = LocalTrainer(
        cfg, load_site_data(cfg, site), site=site.name,
        planned_steps=cfg.federation.rounds * cfg.federation.local_steps,
        seed=client_app.public_site_seed(cfg, site),
    )  # fmt: skip
    trainer.set_generator_weights(weights)
    trainer.train_steps(cfg.federation.local_steps)
    return trainer.get_generator_weights()


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a)))


def test_server_cannot_replay_a_sites_round(tmp_path, cache_dir):
    """Given the config, the global weights and the site's reply, a replay of the site's round
    lands about as far from the release as the round moved the weights: the noise is secret.
    (On the code that seeded the noise from the config, the distance was exactly 0.)"""
    cfg = _cfg(cache_dir)
    site = _site(tmp_path / "run")
    req = _request(cfg, tmp_path / "run")
    released = _released(client_app.train_round(site, req))
    moved = _distance(released, req.weights)
    assert moved > 0
    assert _distance(_replay(cfg, site, req.weights), released) > 0.2 * moved


def test_insecure_reproducible_noise_is_replayable_which_is_why_it_is_labelled(tmp_path, cache_dir):
    # The control of the test above: with the public-seed option the same replay is exact.
    cfg = _cfg(cache_dir, "privacy.insecure_reproducible_noise=true")
    site = _site(tmp_path / "run")
    req = _request(cfg, tmp_path / "run")
    released = _released(client_app.train_round(site, req))
    assert _distance(_replay(cfg, site, req.weights), released) == 0.0


def test_a_lost_state_dir_is_refused_unless_the_operator_forfeits_it(tmp_path, cache_dir):
    cfg = _cfg(cache_dir)
    run_dir = tmp_path / "run"
    site = _site(run_dir)
    client_app.train_round(site, _request(cfg, run_dir, server_round=1))
    (site.state_dir / client_app.STATE_FILE).unlink()  # the accountant and secret are gone
    with pytest.raises(LostStateError, match="accountant"):
        client_app.train_round(site, _request(cfg, run_dir, server_round=2))
    other = _site(run_dir, index=1)  # a whole state dir missing at round 2
    with pytest.raises(LostStateError, match="round 2"):
        client_app.train_round(other, _request(cfg, run_dir, server_round=2))
    forfeit = SiteIdentity(site.name, site.index, site.state_dir, None, forfeit_lost_state=True)
    content = client_app.train_round(forfeit, _request(cfg, run_dir, server_round=2))
    assert content.metric_records["metrics"]["steps-total"] == cfg.federation.local_steps


def test_a_restarted_site_continues_its_noise_stream_from_its_state_dir(tmp_path, cache_dir):
    """Round 2 of a site restored from a copy of its state dir (a new process) equals round 2
    of the site that kept running: the secret and the RNG states come back with the state."""
    import shutil

    cfg = _cfg(cache_dir)
    weights = initial_generator(cfg)
    kept, restarted = _site(tmp_path / "a"), _site(tmp_path / "b")
    client_app.train_round(kept, _request(cfg, tmp_path / "a", 1, weights))
    shutil.copytree(kept.state_dir, restarted.state_dir)
    client_app._SESSIONS.clear()  # as if the Ray worker had restarted
    second = _request(cfg, tmp_path / "b", 2, weights)
    b = _released(client_app.train_round(restarted, second))
    a = _released(client_app.train_round(kept, _request(cfg, tmp_path / "a", 2, weights)))
    assert _distance(a, b) == 0.0


def test_deployed_site_refuses_reproducible_noise(tmp_path):
    node = {"data-path": str(tmp_path), "site-name": "site-a", "max-epsilon": 10, "max-delta": 1e-4}
    site = identify_site(node, None)
    cfg = load_config(None, ["privacy.insecure_reproducible_noise=true"])
    with pytest.raises(ConfigError, match="insecure_reproducible_noise"):
        check_site_policy(cfg, site)
    check_site_policy(load_config(None), site)


# --------------------------------------------------------------------------- the site's budget


def test_the_budget_is_fixed_at_the_first_round(tmp_path, cache_dir):
    cfg = _cfg(cache_dir)
    run_dir = tmp_path / "run"
    site = _site(run_dir)
    client_app.train_round(site, _request(cfg, run_dir, server_round=1))
    for over, key in [
        ("privacy.target_epsilon=20", "privacy.target_epsilon"),
        ("privacy.delta=1e-5", "privacy.delta"),
        ("privacy.max_grad_norm=2", "privacy.max_grad_norm"),
        ("train.batch_size=2", "train.batch_size"),  # the sample rate
        ("privacy.enabled=false", "privacy.enabled"),
    ]:
        with pytest.raises(ConfigError, match=key):
            client_app.train_round(site, _request(_cfg(cache_dir, over), run_dir, server_round=2))


def test_a_deployed_site_needs_its_own_ceiling_and_consent_to_train_without_dp(tmp_path):
    node = {"data-path": str(tmp_path), "site-name": "site-a"}
    for missing in ("max-epsilon", "max-delta"):
        ceiling = {"max-epsilon": 10, "max-delta": 1e-4}
        del ceiling[missing]
        with pytest.raises(ConfigError, match=missing):
            check_site_policy(load_config(None), identify_site({**node, **ceiling}, None))
    full = {**node, "max-epsilon": 10, "max-delta": 1e-4}
    check_site_policy(load_config(None), identify_site(full, None))
    no_dp = load_config(None, ["privacy.enabled=false"])
    with pytest.raises(ConfigError, match="allow-no-dp"):
        check_site_policy(no_dp, identify_site(full, None))
    check_site_policy(no_dp, identify_site({**full, "allow-no-dp": "true"}, None))
    with pytest.raises(ConfigError, match="allow-no-dp"):
        identify_site({**full, "allow-no-dp": "maybe"}, None)


# --------------------------------------------------------------------------- what leaves a site


def _neighbouring_folders(cfg, root: Path) -> tuple[Path, Path]:
    """Two BraTS folders with the same number of patients, differing in exactly one."""
    import shutil

    from fedsynth.common.data.cohort import load_split, resolve_cohort

    cohort = resolve_cohort(cfg)
    split = load_split(cohort)
    mine, other = sorted(split.sites["site-0"]), sorted(split.sites["site-1"])
    folders = []
    for name, subjects in (("d", mine), ("d-prime", [*mine[:-1], other[0]])):
        for subject in subjects:
            shutil.copytree(cohort / subject, root / name / subject)
        folders.append(root / name)
    return folders[0], folders[1]


def test_neighbouring_sites_replies_differ_only_in_the_noised_generator(tmp_path, cache_dir):
    """The real ClientApp, fed a real train message, at two sites whose data differ in one
    patient: after Flower's serialisation every metric is identical; only the generator
    (DP-noised) differs. Also the exact set of keys a reply carries."""
    import time

    from flwr.app import Context, Message, Metadata, RecordDict
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

    from fedsynth.common import wire

    cfg = _cfg(cache_dir)
    d, d_prime = _neighbouring_folders(cfg, tmp_path / "data")
    weights = initial_generator(cfg)
    config = wire.request_config(cfg, "", rounds=cfg.federation.rounds)
    config[wire.SERVER_ROUND] = 1
    replies = []
    for i, folder in enumerate((d, d_prime)):
        node = {"data-path": str(folder), "state-dir": str(tmp_path / f"state-{i}"),
                "site-name": "site-0", "max-epsilon": 10.0, "max-delta": 1e-4}  # fmt: skip
        content = RecordDict({wire.ARRAYS: wire.generator_record(weights), wire.CONFIG: config})
        meta = Metadata(
            run_id=1, message_id=f"m{i}", src_node_id=0, dst_node_id=1, reply_to_message_id="",
            group_id="1", created_at=time.time(), ttl=3600.0, message_type="train",
        )  # fmt: skip
        msg = Message(content, metadata=meta)
        reply = client_app.app(msg, Context(1, 1, node, RecordDict(), {}))
        assert not reply.has_error(), reply.error
        replies.append(recorddict_from_proto(recorddict_to_proto(reply.content)))
    a, b = (r.metric_records[wire.METRICS] for r in replies)
    assert set(a) == set(b) == set(wire.REPLY_METRICS)
    assert dict(a) == dict(b)
    assert set(replies[0]) == {wire.ARRAYS, wire.METRICS}
    ga, gb = (wire.weights_of(r.array_records[wire.ARRAYS]) for r in replies)
    assert set(ga) == set(weights) and _distance(ga, gb) > 0
    for i in range(2):  # the data-dependent values stayed in the site's own log
        log = (tmp_path / f"state-{i}" / client_app.LOG_FILE).read_text()
        assert '"slices"' in log and '"loss_d"' in log


# --------------------------------------------------------------------------- the ClientApp


def test_a_repeated_request_is_answered_from_the_stored_reply(tmp_path, cache_dir):
    """A resumed server asking the same round again gets the same reply: no new noise, no
    new privacy spent."""
    cfg = _cfg(cache_dir)
    site = _site(tmp_path / "run")
    req = _request(cfg, tmp_path / "run")
    first = client_app.train_round(site, req)
    again = client_app.train_round(site, req)
    a, b = first.metric_records["metrics"], again.metric_records["metrics"]
    assert (a["resent"], b["resent"]) == (0, 1)
    assert b["steps-total"] == a["steps-total"] == cfg.federation.local_steps
    assert _distance(_released(first), _released(again)) == 0.0


def test_a_failing_site_replies_with_an_error_naming_itself(tmp_path):
    import time

    from flwr.app import Context, Message, Metadata, RecordDict

    from fedsynth.common import wire

    cfg = load_config(SMOKE)
    config = wire.request_config(cfg, "", rounds=1)
    config[wire.SERVER_ROUND] = 1
    content = RecordDict({wire.ARRAYS: wire.generator_record({}), wire.CONFIG: config})
    meta = Metadata(
        run_id=1, message_id="m", src_node_id=0, dst_node_id=1, reply_to_message_id="",
        group_id="1", created_at=time.time(), ttl=3600.0, message_type="train",
    )  # fmt: skip
    node = {"data-path": str(tmp_path), "site-name": "site-7"}  # no ceiling: refused
    with pytest.raises(client_app.SiteError, match=r"\[site site-7\].*max-epsilon"):
        client_app.app(Message(content, metadata=meta), Context(1, 1, node, RecordDict(), {}))


def test_the_trainer_state_is_durable_before_the_reply_exists_and_only_it(
    tmp_path, cache_dir, monkeypatch
):
    """What must survive a crash is synced before the round's reply is even stored: the
    trainer state (accountant, noise secret) is fsynced and its directory entry too. The
    stored reply and the site's log are written without a directory / file sync: nothing
    resumes from them (a lost reply means the repeated round is trained again, and
    accounted), and each sync costs milliseconds of the round's critical path."""
    import os

    from fedsynth.common.io import atomic

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    cfg = _cfg(cache_dir)
    site = _site(tmp_path / "run")
    client_app.train_round(site, _request(cfg, tmp_path / "run"))
    state = str(site.state_dir / client_app.STATE_FILE)
    reply = str(site.state_dir / client_app.REPLY_FILE)
    folder = str(site.state_dir)
    renamed = [path for kind, path in events if kind == "rename"]
    state_at, reply_at = renamed.index(state), renamed.index(reply)
    assert state_at < reply_at
    after_state = events[events.index(("rename", state)) :]
    assert after_state[1] == ("fsync", folder)  # the state's directory entry, at once
    before_reply = events[: events.index(("rename", reply))]
    assert ("fsync", folder) not in events[len(before_reply) :]  # reply: no directory sync
    assert not any(p.endswith(client_app.LOG_FILE) for kind, p in events if kind == "fsync")


def test_a_worker_keeps_two_sites_trainers_and_reloads_one_whose_state_moved_on(
    tmp_path, cache_dir, monkeypatch
):
    """Flower gives each message to any idle worker, so sites move between workers. A worker
    keeps the trainers of the last two sites it served: a site that comes back is not
    rebuilt, and when another worker trained it meanwhile, the kept trainer reloads the
    state file that worker saved and trains exactly as a trainer rebuilt from it would."""
    import shutil

    built: list[str] = []

    class CountingTrainer(client_app.LocalTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self.site)

    monkeypatch.setattr(client_app, "LocalTrainer", CountingTrainer)
    sessions = type(client_app._SESSIONS)()
    monkeypatch.setattr(client_app, "_SESSIONS", sessions)
    cfg = _cfg(cache_dir, "federation.rounds=4")  # a budget planned for 4 rounds
    weights = initial_generator(cfg)
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    sites = [_site(run_a, 0), _site(run_a, 1)]
    for server_round in (1, 2):
        for site in sites:
            client_app.train_round(site, _request(cfg, run_a, server_round, weights))
    assert sorted(built) == ["site-0", "site-1"]  # one build each, then kept
    # Round 3 of site-0 on another worker (its own trainer, built from the state file) ...
    kept = dict(sessions)
    sessions.clear()
    client_app.train_round(sites[0], _request(cfg, run_a, 3, weights))
    assert built.count("site-0") == 2
    shutil.copytree(sites[0].state_dir, _site(run_b, 0).state_dir)  # the state after round 3
    # ... then round 4 back on this worker: its kept trainer is at round 2 and reloads.
    sessions.clear()
    sessions.update(kept)
    reused = _released(client_app.train_round(sites[0], _request(cfg, run_a, 4, weights)))
    assert built.count("site-0") == 2  # no rebuild
    sessions.clear()  # reference: a trainer rebuilt from the same state file
    rebuilt = _released(client_app.train_round(_site(run_b, 0), _request(cfg, run_b, 4, weights)))
    assert built.count("site-0") == 3
    assert reused and _distance(reused, {k: weights[k] for k in reused}) > 0  # it trained
    assert _distance(reused, rebuilt) == 0.0


def _metrics(content) -> dict:
    return dict(next(iter(content.metric_records.values())))


def test_a_kept_trainer_reloads_even_when_the_state_file_looks_unchanged(
    tmp_path, cache_dir, monkeypatch
):
    """Inode numbers are reused and clocks are coarse: another worker's save can leave the
    state file with the same (inode, mtime, size) as this worker's last save. The step count
    inside the file still differs, so the kept trainer reloads instead of replaying noise and
    samples another worker already used (and under-counting the accountant)."""
    sessions = type(client_app._SESSIONS)()
    monkeypatch.setattr(client_app, "_SESSIONS", sessions)
    monkeypatch.setattr(client_app, "_stamp", lambda p: (1, 1, 1) if p.is_file() else None)
    cfg = _cfg(cache_dir, "federation.rounds=3")
    weights = initial_generator(cfg)
    site = _site(tmp_path / "a", 0)
    client_app.train_round(site, _request(cfg, tmp_path / "a", 1, weights))
    kept = dict(sessions)
    sessions.clear()  # round 2 on another worker
    client_app.train_round(site, _request(cfg, tmp_path / "a", 2, weights))
    sessions.clear()
    sessions.update(kept)  # round 3 back here: the kept trainer is at round 1
    reply = client_app.train_round(site, _request(cfg, tmp_path / "a", 3, weights))
    steps = cfg.federation.local_steps
    assert _metrics(reply)["steps-total"] == 3 * steps  # continued from round 2's state


def test_a_trainer_that_failed_mid_round_is_not_kept(tmp_path, cache_dir, monkeypatch):
    sessions = type(client_app._SESSIONS)()
    monkeypatch.setattr(client_app, "_SESSIONS", sessions)
    cfg = _cfg(cache_dir, "federation.rounds=2")
    weights = initial_generator(cfg)
    site = _site(tmp_path / "a", 0)

    def broken(self, steps):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(client_app.LocalTrainer, "train_steps", broken)
    with pytest.raises(RuntimeError):
        client_app.train_round(site, _request(cfg, tmp_path / "a", 1, weights))
    assert len(sessions) == 0  # its in-memory state is not what its file says
