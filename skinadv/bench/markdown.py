"""``run_bench``'s result as Markdown: the tables a person reads."""

from __future__ import annotations

from typing import Any

from skinadv.bench.attacks import ROBUST_TOLERANCE_POINTS, VARIANTS


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def attack_table(attacks: dict[str, Any]) -> list[str]:
    libs = list(attacks["batch_sizes"])
    variants = [lib for lib in libs if lib in VARIANTS]
    others = [lib for lib in libs if lib not in VARIANTS]
    pairs = [(v, lib) for v in variants for lib in others]
    if len(variants) > 1:  # bf16's robust accuracy against float32 skinadv's
        pairs += [(v, "skinadv") for v in variants if v != "skinadv"]
    head = ["attack"] + [f"{lib} img/s (robust %)" for lib in libs]
    head += [f"{v} / {lib}" for v, lib in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for a in attacks["attacks"]:
        row = [a["label"]]
        for lib in libs:
            r = a["results"][lib]
            row.append(f"{r['images_per_s']:.0f} ({100 * r['robust_accuracy']:.1f})")
        for v, lib in pairs:
            res = a["results"]
            ratio = res[v]["images_per_s"] / res[lib]["images_per_s"]
            gap = 100 * (res[v]["robust_accuracy"] - res[lib]["robust_accuracy"])
            row.append(f"{ratio:.2f}x (gap {gap:+.1f} pt)")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    """The benchmark's JSON (``run_bench``) as a Markdown report."""
    s, m, att = result["settings"], result["machine"], result["attacks"]
    out = [
        "# skinadv bench",
        "",
        f"Device {m['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''}, "
        f"{m['threads']} torch threads, torch {m['torch']}; total {result['seconds']:.0f} s."
        + (
            " Freed memory kept for reuse (`skinadv.memory.keep_freed_memory`), for every "
            "library alike."
            if m.get("keep_freed_memory")
            else ""
        ),
        "",
        "## Attack throughput",
        "",
        f"Paper CNN width {s['width']} trained {s['train_epochs']} epochs on "
        f"{s['train_images']} real images; {att['n_images']} real test images (clean accuracy "
        f"{100 * att['clean_accuracy']:.1f} %), L-inf eps {s['eps']:.4f}, PGD step "
        "2.5 eps / steps with a random start, APGD-CE 1 restart. Images/s over the median of "
        f"up to {s['repeats']} runs (fewer once a library's runs of an attack took "
        f"{_f(s['budget_s'], '{:.0f}')} s), libraries interleaved; each at its fastest batch size "
        "(" + ", ".join(f"{k} {v['chosen']}" for k, v in att["batch_sizes"].items()) + ").",
        "Robust % is the model's accuracy on each library's adversarial images; the gap is "
        "skinadv's minus the other's (negative: skinadv's attack is stronger). skinadv-bf16 "
        "(where present) is skinadv under bfloat16 autocast.",
        "",
        *attack_table(att),
        "",
        *(
            [
                f"**Headline, {att['headline']['text']}** (the fastest skinadv variant within "
                f"{ROBUST_TOLERANCE_POINTS} pt of float32 skinadv's robust accuracy).",
                "",
            ]
            if att.get("headline")
            else []
        ),
        "## Training throughput",
        "",
    ]
    tr = result["training"]
    ts = tr["settings"]
    out += [
        f"Fresh paper CNN width {ts['width']}, {ts['n_train']} real images, "
        f"{ts['epochs']} epoch(s), batch {ts['batch_size']}; static adversarial = clean set + "
        f"PGD-{ts['pool_steps']} copies of {100 * ts['pool_fraction']:.0f} % of it (crafting "
        f"timed apart); PGD-AT = PGD-{ts['pgd_at_steps']} on every batch.",
        "",
        "| training | images/s | images | seconds |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("clean", "static_adversarial", "pgd_at", "crafting"):
        r = tr[name]
        out.append(f"| {name} | {r['images_per_s']:.0f} | {r['images']} | {r['seconds']:.1f} |")
    g = result["grid_cost"]
    out += [
        "",
        "## Grid cost (gradient evaluations for the adversarial pools, from the config)",
        "",
        f"Preset {g['preset']}: {len(g['methods'])} methods x {len(g['fractions'])} fractions "
        f"x {g['seeds']} seed(s), {g['n_train']} training images, PGD-{g['pgd_steps']}.",
        "",
        "| method | nested pools | one pool per cell |",
        "| --- | --- | --- |",
        *(f"| {k} | {v['nested']:,} | {v['separate']:,} |" for k, v in g["per_method"].items()),
        f"| **all** | {g['nested_evals']:,} | {g['separate_evals']:,} |",
        "",
        f"Nested / separate = **{g['ratio']:.3f}** (goal <= 0.35)"
        + (
            f"; the mix pool's rows are taken from the FGSM and PGD pools (crafting it again: "
            f"{g['nested_evals_mix_crafted']:,}, ratio {g['ratio_mix_crafted']:.3f})."
            if g["mix_from_pools"]
            else "."
        ),
        "",
    ]
    out += ray_section(result.get("ray_scaling") or {})
    out += orchestration_section(result.get("orchestration") or {})
    return "\n".join(out)


def _not_run(part: dict[str, Any]) -> list[str]:
    return [part.get("status", "not run (pass --ray)"), ""]


def _runs_rows(how: str, runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in runs:
        c = r["task_compute_s"]
        rows.append(
            f"| {how} | {r['workers']} | {r['cells']} | {r['wall_s']:.1f} | "
            f"{r['cells_per_min']:.1f} | {c['median']:.2f} ({c['min']:.2f}-{c['max']:.2f}) | "
            f"{r['task_cpu_s']['median']:.2f} | {r['busy_share']:.2f} | {r['cores_used']:.2f} | "
            f"{r['max_concurrent']} |"
        )
    return rows


def _efficiency(how: str, part: dict[str, Any]) -> str:
    return (
        f"{how}: parallel efficiency **{_f(part['efficiency'], '{:.2f}')}**; a cell beside "
        f"another takes {_f(part['contention'], '{:.2f}x')} its wall time alone and "
        f"{_f(part.get('cpu_contention'), '{:.2f}x')} its CPU time."
    )


def ray_section(ray: dict[str, Any]) -> list[str]:
    """Cells per minute on 1 vs 2 Ray workers (and plain processes), and the efficiency."""
    out = ["## Ray scaling", ""]
    if "runs" not in ray:
        return out + _not_run(ray)
    s = ray["settings"]
    procs = ray.get("processes", {})
    out += [
        f"{s['cells']} identical cells per run, each a fresh paper CNN width {s['width']} "
        f"trained {s['epochs']} epoch(s) on the same {ray['images']} real images (batch "
        f"{s['batch_size']}, 1 torch thread a cell: the task's Ray CPUs), data put in Ray's "
        f"object store once, workers warmed up first. One Ray head with {s['head_cpus']} "
        "CPUs; K workers = at most K cells in flight. Task compute is timed inside each task. "
        "Processes: the same cells in a pool of plain processes (no Ray, same nice), run "
        "first.",
        "",
        "| run | workers | cells | wall s | cells/min | task compute s (median, min-max) | "
        "task CPU s (median) | busy share | cores used | most at once |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *_runs_rows("Ray", ray["runs"]),
        *_runs_rows("processes", procs.get("runs", [])),
        "",
        "Parallel efficiency = (cells/min with 2 workers) / (2 x cells/min with 1); goal "
        f">= {ray['goal']:.1f}.",
        "",
        "- " + _efficiency("Ray", ray),
    ]
    if "runs" in procs:
        out.append("- " + _efficiency("Processes (no Ray)", procs))
    out += [
        "",
        "Busy share: the cells' compute seconds over workers x wall (near 1: dispatch costs "
        "nothing); cores used: their CPU seconds over wall (below the workers: the machine "
        "gave the cells less, e.g. other load; Ray runs its workers at nice 15).",
        "",
    ]
    return out


def orchestration_section(orch: dict[str, Any]) -> list[str]:
    """Service start, Ray dispatch, Prefect and MLflow costs, apart from compute."""
    out = ["## Orchestration overhead (apart from compute)", ""]
    if "ray" not in orch:
        return out + _not_run(orch)
    out += ["| what | time |", "| --- | --- |"]
    svc = orch["services"]
    if svc["started"]:
        for name, secs in svc["start_s"].items():
            out.append(f"| {name} start-up (health check answered) | {secs:.1f} s |")
        out.append(f"| all services, started side by side | {svc['stack_start_s']:.1f} s |")
    ray = orch["ray"]
    d = ray["dispatch_ms"]
    out += [
        f"| ray.init (driver connects) | {orch['ray_init_s']:.1f} s |",
        f"| data into the object store ({ray['data_mb']:.0f} MB, once) | {ray['put_s']:.2f} s |",
        f"| worker warm-up ({ray['warm_workers']} workers: imports, a tiny fit) | "
        f"{ray['worker_warmup_s']:.1f} s |",
        f"| Ray task dispatch, empty task round trip (median of {d['n']}, p90) | "
        f"{d['median']:.1f} ms ({d['p90']:.1f} ms) |",
    ]
    if "prefect" in orch:
        p = orch["prefect"]
        out += [
            f"| Prefect task run in a flow, empty (median of {p['task_run_ms']['n']}) | "
            f"{p['task_run_ms']['median']:.0f} ms |",
            f"| Prefect flow run's own time (first flow run: {p['first_flow_s']:.1f} s) | "
            f"{p['flow_run_overhead_s']:.1f} s |",
        ]
    if "mlflow" in orch:
        m = orch["mlflow"]
        out.append(
            f"| MLflow: {m['what']} (median of {m['run_ms']['n']}; first {m['first_ms']:.0f} ms) "
            f"| {m['run_ms']['median']:.0f} ms |"
        )
    where = "started here" if svc["started"] else "a bare local Ray, MLflow on a SQLite file"
    out += [
        "",
        f"Services: {where}; MLflow at {orch.get('mlflow', {}).get('target', '-')}. The Ray "
        f"part (baseline included) took {orch['seconds']:.0f} s.",
        "",
    ]
    return out
