"""ReliabilityMonitor: patience logic, crash-safe extxyz, complete JSON-lines log, errors."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest

from probe_md.lammps.driver import predicted_error_text
from probe_md.lammps.monitor import (
    FLAGGED_FILE,
    LOG_FILE,
    PLOT_FILE,
    SAMPLED_FILE,
    SUMMARY_FILE,
    MonitorConfig,
    ReliabilityMonitor,
    parse_actions,
)


def frame(n_atoms: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "importances": rng.uniform(0.5, 1.5, n_atoms),
        "species": ["Cu"] * n_atoms,
        "positions": rng.uniform(0.0, 3.6, (n_atoms, 3)),
        "cell": np.diag([3.6, 3.6, 3.6]),
    }


def feed(monitor: ReliabilityMonitor, probabilities, every: int = 10):
    return [
        monitor.observe(step=i * every, probability=p, logit=float(np.log(p / (1 - p))), **frame(seed=i))
        for i, p in enumerate(probabilities)
    ]


def test_patience_counts_consecutive_flagged_checks_only(tmp_path):
    monitor = ReliabilityMonitor(MonitorConfig(every=10, threshold=0.5, patience=3), tmp_path)
    decisions = feed(monitor, [0.9, 0.4, 0.3, 0.8, 0.2, 0.1, 0.05, 0.01])
    assert [d.flagged for d in decisions] == [False, True, True, False, True, True, True, True]
    assert [d.consecutive_flagged for d in decisions] == [0, 1, 2, 0, 1, 2, 3, 4]
    # halts exactly once, at the third consecutive flagged check (step 60)
    assert [d.halt for d in decisions] == [False] * 6 + [True, False]
    assert monitor.halted_at_ == 60
    summary = monitor.finish(print_summary=False)
    assert summary["halted"] and summary["halt_step"] == 60
    assert summary["flagged_checks"] == 6 and summary["frames_written"] == 6
    assert summary["first_flagged_step"] == 10


def test_actions_select_dump_and_halt(tmp_path):
    only_dump = ReliabilityMonitor(MonitorConfig(patience=1, actions=("dump",)), tmp_path / "a")
    assert not any(d.halt for d in feed(only_dump, [0.1, 0.1]))
    assert only_dump.frames_written_ == 2
    only_halt = ReliabilityMonitor(MonitorConfig(patience=1, actions="halt"), tmp_path / "b")
    decisions = feed(only_halt, [0.1])
    assert decisions[0].halt and not decisions[0].dump
    assert not (tmp_path / "b" / FLAGGED_FILE).exists()
    assert parse_actions("none") == ()
    with pytest.raises(ValueError, match="unknown on-drop action 'explode'"):
        parse_actions("dump,explode")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="threshold"):
        MonitorConfig(threshold=1.5)
    with pytest.raises(ValueError, match="patience"):
        MonitorConfig(patience=0)
    with pytest.raises(ValueError, match="every"):
        MonitorConfig(every=0)


def test_flagged_frames_read_back_with_importances(tmp_path):
    monitor = ReliabilityMonitor(MonitorConfig(threshold=0.5, patience=10), tmp_path)
    feed(monitor, [0.9, 0.2, 0.3])
    frames = ase.io.read(tmp_path / FLAGGED_FILE, index=":")
    assert len(frames) == 2
    expected = frame(seed=1)
    atoms = frames[0]
    assert atoms.info["step"] == 10
    assert atoms.info["reliability"] == pytest.approx(0.2)
    assert atoms.info["logit"] == pytest.approx(np.log(0.2 / 0.8))
    assert atoms.get_chemical_symbols() == expected["species"]
    np.testing.assert_allclose(atoms.positions, expected["positions"], err_msg="positions changed on write")
    np.testing.assert_allclose(atoms.arrays["importance"], expected["importances"], err_msg="importances lost")
    np.testing.assert_allclose(atoms.cell.array, expected["cell"])
    assert atoms.pbc.all()


def test_sampled_frames_are_every_nth_step_flagged_or_not(tmp_path):
    """sample_every=20: steps 0, 20, 40 go to sampled.extxyz whatever their verdict (0.99999 is
    never flagged, 0.2 is); flagged.extxyz is unchanged by it."""
    monitor = ReliabilityMonitor(MonitorConfig(every=10, threshold=0.5, patience=10, sample_every=20), tmp_path)
    decisions = feed(monitor, [0.99999, 0.2, 0.3, 0.9, 0.99])
    assert [d.sample for d in decisions] == [True, False, True, False, True]
    sampled = ase.io.read(tmp_path / SAMPLED_FILE, index=":")
    assert [a.info["step"] for a in sampled] == [0, 20, 40]
    assert sampled[0].info["reliability"] == pytest.approx(0.99999)
    np.testing.assert_allclose(sampled[1].arrays["importance"], frame(seed=2)["importances"])
    assert [a.info["step"] for a in ase.io.read(tmp_path / FLAGGED_FILE, index=":")] == [10, 20]
    summary = monitor.finish(print_summary=False)
    assert summary["frames_sampled"] == 3 and summary["frames_written"] == 2
    assert summary["files"]["sampled"] == str(tmp_path / SAMPLED_FILE)


def test_sample_every_must_be_a_multiple_of_every():
    with pytest.raises(ValueError, match=r"sample-every must be a positive multiple of every \(10\), got 15"):
        MonitorConfig(every=10, sample_every=15)
    with pytest.raises(ValueError, match="got 0"):
        MonitorConfig(every=10, sample_every=0)
    assert MonitorConfig(every=10).sample_every is None


def test_file_holds_only_complete_frames_after_each_write(tmp_path):
    """After every append the file parses completely: a crash between frames loses nothing."""
    monitor = ReliabilityMonitor(MonitorConfig(threshold=0.5, patience=100), tmp_path)
    for i in range(3):
        feed(monitor, [0.1])
        assert len(ase.io.read(tmp_path / FLAGGED_FILE, index=":")) == i + 1
    # no temp files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [FLAGGED_FILE, LOG_FILE]


def test_jsonl_logs_every_check_and_is_flushed(tmp_path):
    monitor = ReliabilityMonitor(MonitorConfig(threshold=0.5, patience=2), tmp_path)
    feed(monitor, [0.9, 0.8])
    # readable mid-run (flushed per line), before finish()
    lines = (tmp_path / LOG_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 10]
    feed(monitor, [0.4, float("nan")])
    summary = monitor.finish(print_summary=False)
    records = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert len(records) == 4 == summary["checks"]
    assert records[-1]["probability"] is None and records[-1]["flagged"]  # nan is flagged, logged as null
    assert records[-1]["halt"] is True
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["checks"] == 4
    assert (tmp_path / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_non_writer_rank_touches_no_files(tmp_path):
    monitor = ReliabilityMonitor(MonitorConfig(patience=1), tmp_path / "rank1", writer=False)
    decisions = feed(monitor, [0.1])
    assert decisions[0].halt
    monitor.finish()
    assert not (tmp_path / "rank1").exists()


def test_output_dir_under_a_file_is_one_line_error(tmp_path):
    """Works as root too (unlike a chmod-locked folder): nothing can be created below a regular file."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    for target in (blocker / "out", blocker / "out" / "sub"):
        with pytest.raises(PermissionError, match=rf"output directory .*{target.name} is not writable .*: choose "
                                                  "another with --out$"):
            ReliabilityMonitor(MonitorConfig(), target)


def test_summary_shows_small_reliabilities_with_significant_digits(tmp_path):
    from probe_md.lammps.monitor import format_summary

    monitor = ReliabilityMonitor(MonitorConfig(actions="none"), tmp_path)
    feed(monitor, [0.9, 0.0000123, 0.4])
    text = format_summary(monitor.finish(print_summary=False))
    assert "min reliability 1.23e-05" in text


def test_adaptive_interval_follows_the_warn_level(tmp_path, capsys):
    config = MonitorConfig(every=10, every_when_low=2, warn=0.8, actions="none")
    assert [config.interval_after(p) for p in (0.9, 0.79, float("nan"))] == [10, 2, 2]
    monitor = ReliabilityMonitor(config, tmp_path)
    decisions = feed(monitor, [0.9, 0.7, 0.75, 0.95])
    assert [d.next_every for d in decisions] == [10, 2, 2, 10]
    out = capsys.readouterr().out
    assert "below 0.8: checking every 2 step(s)" in out and "recovered: checking every 10 step(s)" in out
    with pytest.raises(ValueError, match="divisor of every"):
        MonitorConfig(every=10, every_when_low=3)
    with pytest.raises(ValueError, match=r"warn must be a probability in \[threshold, 1\)"):
        MonitorConfig(threshold=0.5, warn=0.4)


def test_restore_continues_patience_and_counts(tmp_path):
    records = [{"step": 0, "probability": 0.9, "logit": 2.2, "flagged": False, "consecutive_flagged": 0,
                "dump": False, "halt": False},
               {"step": 10, "probability": 0.1, "logit": -2.2, "flagged": True, "consecutive_flagged": 1,
                "dump": True, "halt": False}]
    monitor = ReliabilityMonitor(MonitorConfig(patience=2), tmp_path)
    monitor.restore(records, frames_written=1)
    decision = monitor.check(20, 0.2, -1.4)
    assert decision.consecutive_flagged == 2 and decision.halt
    summary = monitor.summary()
    assert summary["checks"] == 3 and summary["frames_written"] == 1 and summary["first_step"] == 0
    assert [json.loads(line)["step"] for line in (tmp_path / LOG_FILE).read_text().splitlines()] == [20]


def test_predicted_error_is_logged_restored_and_written_with_flagged_frames(tmp_path):
    monitor = ReliabilityMonitor(MonitorConfig(threshold=0.5, patience=10), tmp_path)
    monitor.check(0, 0.9, 2.2, (0.02, 0.015, 0.03))  # median, lower, upper
    decision = monitor.check(10, 0.2, -1.4, (0.035, 0.028, 0.044))
    monitor.write_frame(decision, **frame())
    monitor.check(20, 0.9, 2.2, (float("nan"),) * 3)  # a head without it
    monitor.check(30, 0.01, -4.6, (3.2, 2.5, float("inf")))  # beyond the head's training errors
    records = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [r["predicted_error"] for r in records] == [[0.02, 0.015, 0.03], [0.035, 0.028, 0.044], None,
                                                       [3.2, 2.5, None]]
    atoms = ase.io.read(tmp_path / FLAGGED_FILE)
    np.testing.assert_allclose(atoms.info["predicted_error"], [0.035, 0.028, 0.044])
    resumed = ReliabilityMonitor(MonitorConfig(threshold=0.5, patience=10), tmp_path / "resumed")
    resumed.restore(records, frames_written=1)
    assert resumed.checks_[1].predicted_error == (0.035, 0.028, 0.044) and resumed.checks_[2].predicted_error is None
    assert resumed.checks_[3].predicted_error == (3.2, 2.5, float("inf"))
    assert predicted_error_text(resumed.checks_[1]) == "; p = 0.2, predicted error 0.035 (0.028-0.044)"
    assert predicted_error_text(resumed.checks_[3]) == (
        "; p = 0.01, predicted error over 2.5 (beyond the head's training errors)")
    assert predicted_error_text(resumed.checks_[2]) == ""
