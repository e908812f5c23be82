"""--json, --quiet and --no-progress on every command; the final summary names every output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from fedsynth.cli import build_parser, main
from fedsynth.cli._common import Summary, stdout_to
from fedsynth.common.progress import ENV_NO_PROGRESS, progress_hidden


def test_every_command_takes_the_output_options():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        options = set(parser._option_string_actions)
        assert {"--quiet", "-q", "--no-progress", "--json"} <= options, name
    # validate-data keeps its own --json OUT (a report file), not the summary switch
    args = build_parser().parse_args(["validate-data", "d", "--json", "r.json"])
    assert args.json == "r.json" and not hasattr(args, "json_summary")


def test_json_summary_is_the_only_thing_on_stdout(tmp_path, capfd):
    assert main(["certs", "--out", str(tmp_path / "c"), "--sites", "a,b", "--json"]) == 0
    out, err = capfd.readouterr()
    summary = json.loads(out)  # exactly one JSON document, nothing else
    assert summary["command"] == "certs" and summary["ok"] and summary["error"] is None
    paths = summary["outputs"].values()
    assert len(paths) == 8 and all(os.path.isfile(p) for p in paths)
    assert str(tmp_path / "c" / "sites" / "b" / "auth.pub") in paths


def test_a_failed_command_says_so_in_json_and_on_stderr(tmp_path, capfd):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "ca.crt").write_text("x")
    assert main(["certs", "--out", str(tmp_path / "c"), "--sites", "a", "--json"]) == 2
    out, err = capfd.readouterr()
    summary = json.loads(out)
    assert not summary["ok"] and summary["exit_code"] == 2 and "ca.crt" in summary["error"]
    assert "fedsynth certs: error:" in err and "ca.crt" in err


def test_text_summary_names_every_output_and_quiet_prints_nothing(tmp_path, capfd):
    assert main(["certs", "--out", str(tmp_path / "c"), "--sites", "a"]) == 0
    out, _ = capfd.readouterr()
    assert out.startswith("development certificates for 1 sites\n")
    assert str(tmp_path / "c" / "ca.crt") in out and str(tmp_path / "c" / "sites" / "a") in out
    assert main(["certs", "--out", str(tmp_path / "d"), "--sites", "a", "-q"]) == 0
    assert capfd.readouterr() == ("", "")


def test_stdout_redirect_catches_writes_to_file_descriptor_1(capfd):
    """Flower, Ray's forwarded worker output and C code write to fd 1, not sys.stdout."""
    with stdout_to(sys.stderr, 2):
        print("python-level")
        os.write(1, b"fd-level\n")
        subprocess.run(["echo", "child-process"], check=True)
    print("after")
    out, err = capfd.readouterr()
    assert out == "after\n"
    assert err.split() == ["python-level", "fd-level", "child-process"]


def test_summary_text_and_json_agree(tmp_path):
    s = Summary("x", "did it", {"run": tmp_path}, {"epsilon": 1.5})
    assert s.to_text() == f"did it\n  run      {tmp_path}\n  epsilon  1.5"
    assert s.to_json()["outputs"] == {"run": str(tmp_path)} and s.to_json()["facts"]["epsilon"]


def test_hidden_progress_reaches_child_processes_and_is_restored(monkeypatch):
    """The switch is an environment variable, so Ray's workers and subprocesses see it."""
    monkeypatch.delenv(ENV_NO_PROGRESS, raising=False)
    code = "from fedsynth.common.progress import progress_enabled; print(progress_enabled())"
    env_path = {"PYTHONPATH": os.pathsep.join(sys.path)}

    def child() -> str:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, **env_path}, check=True)  # fmt: skip
        return done.stdout.strip()

    with progress_hidden():
        assert child() == "False"
    assert child() == "True" and ENV_NO_PROGRESS not in os.environ
