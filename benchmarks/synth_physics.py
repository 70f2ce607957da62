"""The synthetic benchmark's physics report: the generator's spectra against the reference grid (Korg/MARCS).

    python benchmarks/synth_physics.py --out reports/synth-physics     # about a minute, 1 core

Writes ``physics.md`` (the tables data/README.md quotes), ``physics.json`` and ``residuals.png``. Every
spectrum is the generator's rest-frame flux at R ~ 5000 (`SynthModel.rest_frame_flux`, continuum divided
out), compared on the generator's rest-frame pixels 7100-8850 A with the reference node degraded by an
independent line-spread sum (`featcache.synth.diagnostics.degrade`). Measures: equivalent widths against a
running 95th-percentile pseudo-continuum (50 A windows), the fraction of pixels more than 5% below it, and
the rms of the pseudo-continuum-normalised flux difference.

Held out before any fitting (the generator interpolates, so a node it was built on is matched exactly):
every log g = 3 node. The held-out generator is built on the other nodes and compared at log g = 3 (and at
its own fitted nodes); two further checks hold out T_eff = 5000 K and [M/H] = 0 the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from featcache.synth import diagnostics as diag  # noqa: E402
from featcache.synth.physics import GENERATOR_VERSION  # noqa: E402

TEFFS = (4000.0, 5000.0, 6000.0)
MHS = (0.0, 0.5)
LOGGS = (1.0, 2.0, 3.0, 4.0, 5.0)
HELD_OUT_LOGG = 3.0


def rest_spectra(model, teff: float, mh: float, loggs=LOGGS, a_m: float = 0.0, c_m: float = 0.0) -> np.ndarray:
    n = len(loggs)
    labels = {"T_eff": np.full(n, teff), "log_g": np.asarray(loggs, dtype=float), "M_H": np.full(n, mh),
              "a_M": np.full(n, a_m), "C_M": np.full(n, c_m)}
    flux, cont = model.rest_frame_flux(labels)
    return (flux / cont).astype(float)


def summary(wave: np.ndarray, flux: np.ndarray) -> dict[str, np.ndarray]:
    table = diag.line_table(wave, flux)
    table["Ca II triplet"] = sum(table[k] for k in diag.CA_TRIPLET)
    table["Na I 8183+8195"] = sum(table[k] for k in diag.NA_DOUBLET)
    table["forest"] = diag.forest_fraction(wave, flux)
    return table


def slope(loggs, values) -> float:
    """Least-squares slope of values against log g over log g 1-4."""
    keep = np.asarray(loggs) <= 4.0
    return float(np.polyfit(np.asarray(loggs)[keep], np.asarray(values)[keep], 1)[0])


def compare(model, grid, wave, inside) -> dict:
    out = {}
    for teff in TEFFS:
        for mh in (-2.0, *MHS):
            synth = rest_spectra(model, teff, mh)[:, inside]
            ref = diag.degrade(grid.wave, np.stack([grid.node_flux(teff, g, mh) for g in LOGGS]), wave)
            s, r = summary(wave, synth), summary(wave, ref)
            out[f"{teff:.0f}/{mh:+.1f}"] = {
                "synth": {k: v.tolist() for k, v in s.items()}, "reference": {k: v.tolist() for k, v in r.items()},
                "rms": diag.normalised_rms(wave, synth, ref).tolist(),
                "cat_slope": [slope(LOGGS, s["Ca II triplet"]), slope(LOGGS, r["Ca II triplet"])]}
    return out


def held_out(grid, axis: str, value: float, teffs, mhs, loggs, wave, inside) -> list[dict]:
    from featcache.synth.model import SynthModel

    model = SynthModel(grid=grid.without(axis, (value,)))
    rows = []
    for teff in teffs:
        for mh in mhs:
            synth = rest_spectra(model, teff, mh, loggs)[:, inside]
            ref = diag.degrade(grid.wave, np.stack([grid.node_flux(teff, g, mh) for g in loggs]), wave)
            for g, rms in zip(loggs, diag.normalised_rms(wave, synth, ref), strict=True):
                node = {"teff": teff, "logg": g, "mh": mh}
                rows.append({**node, "held_out": node[axis] == value, "rms": float(rms)})
    return rows


def residual_plot(grid, wave, inside, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from featcache.synth.model import SynthModel

    model = SynthModel(grid=grid.without("logg", (HELD_OUT_LOGG,)))
    fig, axes = plt.subplots(len(TEFFS), 1, figsize=(11, 7), sharex=True)
    for ax, teff in zip(axes, TEFFS, strict=True):
        for mh, colour in zip(MHS, ("C0", "C3"), strict=True):
            synth = rest_spectra(model, teff, mh, (HELD_OUT_LOGG,))[:, inside]
            ref = diag.degrade(grid.wave, grid.node_flux(teff, HELD_OUT_LOGG, mh)[None], wave)
            res = synth / diag.pseudo_continuum(wave, synth) - ref / diag.pseudo_continuum(wave, ref)
            ax.plot(wave, res[0], lw=0.6, color=colour, label=f"[M/H] = {mh:+.1f}")
        ax.set_ylabel("residual")
        ax.set_title(f"T_eff = {teff:.0f} K, log g = 3 (held out), generator v{GENERATOR_VERSION} built without it",
                     fontsize=9)
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=8, loc="lower left")
    axes[-1].set_xlabel("rest-frame air wavelength (A)")
    fig.suptitle("pseudo-continuum-normalised flux, generator minus Korg/MARCS reference, R ~ 5000")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict) -> str:
    lines = [f"# Physics of the synthetic benchmark (generator v{GENERATOR_VERSION})", "",
             "Command: `python benchmarks/synth_physics.py`. Reference: Korg/MARCS spectra (obafgkm 0.1.4), "
             "degraded to R ~ 5000. Equivalent widths in A against a running 95th-percentile pseudo-continuum "
             "(50 A windows); forest = fraction of pixels more than 5% below it.", ""]
    lines += ["## Equivalent widths against log g (shipped generator | reference)", ""]
    names = ["Ca II 8498", "Ca II 8542", "Ca II 8662", "Ca II triplet", "Na I 8183+8195", "Mg I 8807", "K I 7699",
             "Fe I 8688", "forest"]
    for key, block in results["nodes"].items():
        if not key.endswith("+0.0"):
            continue
        lines += [f"### T_eff / [M/H] = {key}", "", "| line | log g " + " / ".join(f"{g:.0f}" for g in LOGGS)
                  + ", synth | the same, reference |", "|---|---|---|"]
        for name in names:
            s = " / ".join(f"{v:.2f}" for v in block["synth"][name])
            r = " / ".join(f"{v:.2f}" for v in block["reference"][name])
            lines.append(f"| {name} | {s} | {r} |")
        lines.append("")
    lines += ["## Acceptance figures", "",
              "| T_eff / [M/H] | CaT at log g 2, synth / ref | CaT slope 1-4 (A/dex), synth / ref "
              "| CaT slope, held-out-g3 generator | Na I at log g 2, synth / ref | forest ratio synth/ref, all log g |",
              "|---|---|---|---|---|---|"]
    for key, block in results["nodes"].items():
        cat_s, cat_r = block["synth"]["Ca II triplet"][1], block["reference"]["Ca II triplet"][1]
        na_s, na_r = block["synth"]["Na I 8183+8195"][1], block["reference"]["Na I 8183+8195"][1]
        ratio = np.array(block["synth"]["forest"]) / np.array(block["reference"]["forest"])
        held = results["held_out_cat_slope"].get(key, float("nan"))
        slopes = block["cat_slope"]
        lines.append(f"| {key} | {cat_s:.2f} / {cat_r:.2f} | {slopes[0]:+.2f} / {slopes[1]:+.2f} "
                     f"| {held:+.2f} | {na_s:.2f} / {na_r:.2f} | {ratio.min():.2f}-{ratio.max():.2f} |")
    lines.append("")
    for name, rows in results["held_out"].items():
        held = [r["rms"] for r in rows if r["held_out"]]
        fitted = [r["rms"] for r in rows if not r["held_out"]]
        lines.append(f"- **{name}**: rms of the normalised flux difference at the held-out nodes "
                     f"{min(held):.4f}-{max(held):.4f} (max goal 0.05), at the fitted nodes {max(fitted):.4f} at most "
                     f"(goal 0.03).")
    lines += ["", "Per node:", "", "| held out | T_eff | log g | [M/H] | rms |", "|---|---:|---:|---:|---:|"]
    for name, rows in results["held_out"].items():
        for r in rows:
            if r["held_out"]:
                lines.append(f"| {name} | {r['teff']:.0f} | {r['logg']:.0f} | {r['mh']:+.1f} | {r['rms']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "synth-physics")
    args = parser.parse_args()
    from featcache.synth.emulator import load_grid
    from featcache.synth.model import SynthModel

    grid = load_grid()
    model = SynthModel()
    inside = (model.rest_wave >= 7100.0) & (model.rest_wave <= 8850.0)
    wave = model.rest_wave[inside]
    results: dict = {"generator_version": GENERATOR_VERSION, "nodes": compare(model, grid, wave, inside)}
    results["held_out"] = {
        "log g = 3": held_out(grid, "logg", HELD_OUT_LOGG, TEFFS, MHS, LOGGS, wave, inside),
        "T_eff = 5000 K": held_out(grid, "teff", 5000.0, (4000.0, 5000.0, 6000.0), MHS, (1.0, 3.0, 5.0), wave, inside),
        "[M/H] = 0": held_out(grid, "mh", 0.0, TEFFS, (-2.0, 0.0, 0.5), (1.0, 3.0, 5.0), wave, inside)}
    held_model = SynthModel(grid=grid.without("logg", (HELD_OUT_LOGG,)))
    results["held_out_cat_slope"] = {}
    for teff in TEFFS:
        for mh in (-2.0, *MHS):
            flux = rest_spectra(held_model, teff, mh)[:, inside]
            results["held_out_cat_slope"][f"{teff:.0f}/{mh:+.1f}"] = slope(LOGGS, summary(wave, flux)["Ca II triplet"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "physics.json").write_text(json.dumps(results, indent=1))
    (args.out / "physics.md").write_text(markdown(results))
    residual_plot(grid, wave, inside, args.out / "residuals.png")
    print((args.out / "physics.md").read_text())


if __name__ == "__main__":
    main()
