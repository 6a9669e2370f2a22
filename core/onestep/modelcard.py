"""The model card (``README.md``) of an export folder, in the style of Hugging Face Hub and
diffusers model cards: YAML front matter, then what the model is, how it was trained, its
metrics at export and the lines that load and sample it. People read it; nothing loads it
(:meth:`OneStepPipeline.from_pretrained` reads ``config.json`` only).

What the training recorded comes from the run folder beside the checkpoint: ``metrics.jsonl``
(training minutes, the evaluation at the exported step) and ``log.jsonl`` (the device). A
checkpoint moved out of its run folder gets a card that says those were not recorded.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .config import RunConfig, unstructure

NOT_RECORDED = "not recorded"


def run_folder(checkpoint: Path) -> Path | None:
    """The run folder of a checkpoint folder ``<run>/checkpoints/step-N``; None if it was moved out."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def training_record(run: Path | None, step: int) -> dict[str, Any]:
    """What the run recorded up to ``step``: ``minutes`` of training, ``device``, ``eval`` (the
    newest evaluation at or before the step, with its ``eval_step`` and ``nfe``)."""
    if run is None:
        return {}
    records = [r for r in _records(run / "metrics.jsonl") if isinstance(r.get("step"), int) and r["step"] <= step]
    found: dict[str, Any] = {}
    timed = [r for r in records if "train_minutes" in r]
    if timed:
        found["minutes"] = float(timed[-1]["train_minutes"])
    evals = [r for r in records if isinstance(r.get("eval"), dict) and r["eval"]]
    if evals:
        found.update(eval=evals[-1]["eval"], eval_step=evals[-1]["step"], eval_nfe=evals[-1].get("nfe"))
    starts = [r for r in _records(run / "log.jsonl") if r.get("event") == "run" and "device" in r]
    if starts:
        found["device"] = str(starts[-1]["device"])
        found["world"] = starts[-1].get("world", 1)
    return found


def _data_line(config: RunConfig, meta: dict[str, Any]) -> str:
    spec = meta["spec"]
    shape = "x".join(map(str, spec["shape"]))
    classes = f"{spec['num_classes']} classes" if spec["num_classes"] else "unlabelled"
    what = f"`{config.data.name}` ({classes}); the generator draws {spec['kind']} of shape {shape}"
    decoder = meta.get("decoder")
    if decoder and decoder.get("vae"):
        where = "shipped in `vae/`" if decoder["vae"] == "vae" else f"`{decoder['vae']}`"
        return what + f", decoded to images by the diffusers VAE {where} (scaling factor {decoder['scaling_factor']:.4g})"
    if decoder:
        return what + ", decoded to images by the decoder shipped in this folder"
    return what


def _metrics_table(found: dict[str, Any], step: int) -> str:
    if "eval" not in found:
        return "No evaluation was recorded for this checkpoint (run `onestep eval` on the run folder)."
    when = f"at step {found['eval_step']}" + (f" (the exported step)" if found["eval_step"] == step else "")
    n = found.get("eval_nfe")
    nfe = f", {n} network evaluation{'s' if n != 1 else ''} per sample" if n else ""
    rows = [f"| {k} | {v:.4g} |" for k, v in found["eval"].items() if isinstance(v, (int, float))]
    return f"Evaluated {when}{nfe}, against held-out data:\n\n| metric | value |\n|---|---|\n" + "\n".join(rows)


def usage(folder: str, spec: dict[str, Any]) -> str:
    """The three lines that load the export at ``folder`` and sample it (``spec``: its data spec)."""
    call = "pipe(class_labels=[0, 1, 2, 3], seed=0)" if spec["num_classes"] else "pipe(num_images=4, seed=0)"
    what = f"[4, {spec['shape'][0]}] points" if spec["kind"] == "points" else "[4, C, H, W] images in [-1, 1]"
    return ("from onestep.export import OneStepPipeline\n"
            f"pipe = OneStepPipeline.from_pretrained({folder!r})\n"
            f"images = {call}  # {what}")


def model_card(config: RunConfig, meta: dict[str, Any], parameters: int, checkpoint: Path, folder: str) -> str:
    """The card of the export of ``checkpoint`` (its ``config.json`` is ``meta``) to ``folder``."""
    found = training_record(run_folder(checkpoint), meta["step"])
    nfe = meta["default_nfe"]
    tags = ["onestep", "one-step-generation" if nfe == 1 else "few-step-generation", config.objective.name,
            config.backbone.name, config.data.name]
    front = {"library_name": "onestep", "tags": tags}
    if not meta["spec"]["num_classes"] and meta["spec"]["kind"] != "points":
        front["pipeline_tag"] = "unconditional-image-generation"
    minutes = (f"{found['minutes']:.1f} minutes ({60 * found['minutes']:.0f} s) of training clock (evaluations, samples "
               "and checkpoints excluded)") if "minutes" in found else NOT_RECORDED
    device = found.get("device", NOT_RECORDED) + (f" x {found['world']} processes" if found.get("world", 1) > 1 else "")
    run = run_folder(checkpoint)
    config_yaml = yaml.safe_dump(unstructure(config), sort_keys=False).strip()
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {config.objective.name} / {config.backbone.name} on {config.data.name}

A generator trained with the onestep library that draws a sample in {nfe} network evaluation{'s' if nfe != 1 else ''}.

## Model

- **Objective:** `{config.objective.name}`
- **Backbone:** `{config.backbone.name}`, {parameters:,} parameters (the EMA generator in `model.safetensors`)
- **Network evaluations per sample (NFE):** {nfe}
- **Data:** {_data_line(config, meta)}
- **Precision in training:** {meta.get('precision', 'fp32')}

## Training

- **Steps:** {meta['step']}
- **Training time:** {minutes}
- **Device:** {device}
- **Config:** the run's `config.yaml`{f' (in `{run}`)' if run is not None else ''}, below

```yaml
{config_yaml}
```

## Metrics

{_metrics_table(found, meta['step'])}

## Use

```python
{usage(folder, meta['spec'])}
```

Loading reads `config.json`, `model.safetensors` and the decoder beside them (`vae/` or the data
source's file); this card is for people.
"""
