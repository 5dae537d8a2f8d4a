"""``run_bench``'s result as Markdown: the tables a person reads."""

from __future__ import annotations

from typing import Any


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def attack_table(attacks: dict[str, Any]) -> list[str]:
    libs = list(attacks["batch_sizes"])
    others = [lib for lib in libs if lib != "skinadv"]
    head = ["attack"] + [f"{lib} img/s (robust %)" for lib in libs]
    head += [f"skinadv / {lib}" for lib in others]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for a in attacks["attacks"]:
        row = [a["label"]]
        for lib in libs:
            r = a["results"][lib]
            row.append(f"{r['images_per_s']:.0f} ({100 * r['robust_accuracy']:.1f})")
        for lib in others:
            gap = a["robust_gap_points"].get(lib)
            row.append(f"{_f(a['speedup'].get(lib), '{:.2f}x')} (gap {_f(gap, '{:+.1f}')} pt)")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    """The benchmark's JSON (``run_bench``) as a Markdown report."""
    s, m, att = result["settings"], result["machine"], result["attacks"]
    out = [
        "# skinadv bench",
        "",
        f"Device {m['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''}, "
        f"{m['threads']} torch threads, torch {m['torch']}; total {result['seconds']:.0f} s.",
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
        "skinadv's minus the other's (negative: skinadv's attack is stronger).",
        "",
        *attack_table(att),
        "",
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
        "## Ray scaling",
        "",
        result["ray_scaling"]["status"] if "status" in result["ray_scaling"] else "see JSON",
        "",
    ]
    return "\n".join(out)
