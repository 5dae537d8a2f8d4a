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
        f"Nested / separate = **{g['ratio']:.3f}** (goal <= 0.35). Were the mix pool's rows "
        f"taken from the FGSM and PGD pools: {_f(g['ratio_mix_from_pools'], '{:.3f}')}.",
        "",
        "## Ray scaling",
        "",
        result["ray_scaling"]["status"] if "status" in result["ray_scaling"] else "see JSON",
        "",
    ]
    return "\n".join(out)
