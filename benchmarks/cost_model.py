"""The cost model of `nbs/50_costs.ipynb`, measured outside the notebook (issue #39, item 3).

    .venv/bin/python benchmarks/cost_model.py [--ladder paper|smoke] [--archs llama gemma3] [--repeats 3] [--threads 1]
    .venv/bin/python benchmarks/cost_model.py --from benchmarks/cost_model.json   # refit and rewrite, no measuring

Measures every stage of the ladder's random-weight models, each in a fresh process (`ortho_nbs.costs.measure_stages`:
the project's own `residual_states`, `kfac_factors`, `kronecker_eigenbasis`, `attributed_finetune`, `sgen_projector`,
`generate`, `fit_affine`), fits time = a FLOPs + b and peak memory = c bytes + e per architecture and stage on every
size but the largest, predicts the largest (held out), and prices the papers' workloads on 1 and 8 H100s under the
assumed throughputs of `ortho_nbs.costs.H100`. Writes benchmarks/cost_model.json (measurements, fits, held-out errors,
the paper-scale table, the machine) and, into benchmarks/results.json (read, modified, written back; every other key
kept): cost_model_max_rel_err (the larger of the held-out time and memory errors), cost_model_heldout (what that
number covers) and cost_model_sizes (model sizes fitted per architecture). About 5 minutes on 2 cores.
"""
import argparse, json, os, platform, statistics, sys, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ortho_nbs.costs import (ladder_jobs, measure_stages, heldout_errors, fit_costs, paper_scale_table, LADDERS, H100)
from ortho_nbs.provenance import cpu_model, git_commit

MIN_PEAK_MB = 64      # memory is judged on held-out peaks of at least this size (smaller ones are allocator noise)


def _write_json(path: Path, obj):
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n"); os.replace(tmp, path)


def _name(row): return row["stage"] if row["arch"] == "-" else f"{row['arch']} {row['stage']}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ladder", default="paper", choices=sorted(LADDERS))
    p.add_argument("--archs", nargs="+", default=["llama", "gemma3"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "cost_model.json"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results.json"), help="results.json to update ('' : none)")
    p.add_argument("--from", dest="from_json", default=None, metavar="JSON",
                   help="no measuring: fit and write again from the measurements of an earlier cost_model.json")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.from_json:
        prev = json.loads(Path(a.from_json).read_text())
        measured, a.ladder, a.archs, a.repeats = prev["measurements"], prev["ladder"], prev["archs"], prev["repeats"]
        a.threads, t0 = prev["machine"]["threads"], t0 - prev["duration_s"]
    else:
        measured = measure_stages(ladder_jobs(a.ladder, a.archs, a.repeats), threads=a.threads)
    held = heldout_errors(measured)
    fits = {arch: fit_costs([m for m in measured if m["arch"] == arch and not m["heldout"]]) for arch in sorted({m["arch"] for m in measured})}
    t_worst = max(held, key=lambda r: r["time_rel_err"])
    mem = [r for r in held if r["peak_mb"] >= MIN_PEAK_MB] or held
    m_worst = max(mem, key=lambda r: r["peak_rel_err"])
    sizes = {arch: len({m["size"] for m in measured if m["arch"] == arch and not m["heldout"]}) for arch in fits}
    lad = LADDERS[a.ladder]
    heldout_desc = ("held-out size (the largest, never fitted): " + "; ".join(
        f"{arch} d={lad['models'][arch][-1]['hidden_size']} d_ff={lad['models'][arch][-1]['intermediate_size']} "
        f"L={lad['models'][arch][-1]['num_hidden_layers']}" for arch in a.archs)
        + f"; affine fit n={lad['affine'][-1]['n_tokens']} {lad['affine'][-1]['d_s']}->{lad['affine'][-1]['d_t']}. "
        f"Max over stages of |pred - meas| / meas: time {t_worst['time_rel_err']:.2f} ({_name(t_worst)}), "
        f"peak memory {m_worst['peak_rel_err']:.2f} ({_name(m_worst)}; stages with a held-out peak >= {MIN_PEAK_MB} MB); "
        f"the key is the larger. {a.threads} thread(s), median of {a.repeats} rounds (each job once a round, a fresh process each).")
    machine = prev["machine"] if a.from_json else dict(processor=cpu_model(), cpu_count=os.cpu_count(), platform=platform.platform(),
                                                       torch=torch.__version__, threads=a.threads, git_commit=git_commit(ROOT),
                                                       load_avg_1min_end=os.getloadavg()[0])
    out = dict(ladder=a.ladder, archs=a.archs, repeats=a.repeats, machine=machine, duration_s=round(time.perf_counter() - t0, 1),
               heldout_description=heldout_desc, measurements=measured, fits=fits, heldout=held,
               paper_scale=dict(gpu=H100, rows=paper_scale_table(fits)))
    _write_json(Path(a.out), out)
    if a.results:
        path = Path(a.results)
        res = json.loads(path.read_text()) if path.exists() else {}
        res.update(cost_model_max_rel_err=round(max(t_worst["time_rel_err"], m_worst["peak_rel_err"]), 4),
                   cost_model_heldout=heldout_desc, cost_model_sizes=min(sizes.values()))
        _write_json(path, res)
    print(heldout_desc)
    print(f"wrote {a.out} ({out['duration_s']} s)")


if __name__ == "__main__":
    main()
