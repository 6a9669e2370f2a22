"""`onestep eval` without --metrics scores every metric that applies to the data, whatever the
run's own eval.metrics list said."""
import json

from onestep.api import compose
from onestep.cli import main
from onestep.trainer import Trainer


def test_eval_without_metrics_reports_fid_on_an_image_run(tmp_path, capsys, registry):
    cfg = compose(objective="flow-matching", backbone="mlp", data="digits", registry=registry,
                  overrides=[f"output_dir={tmp_path}/run", "train.progress=false", "train.steps=20", "train.batch_size=64",
                             "backbone.width=32", "backbone.depth=1", "objective.nfe=2", "eval.metrics=[]"])
    Trainer(cfg, registry=registry, console=False).fit()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--num", "100"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keys = {k.split("[")[0] for k in result}
    assert {"fid", "kid", "precision", "recall", "class_accuracy", "sinkhorn"} <= keys, sorted(result)
    assert result["fid[onestep-digits-classifier]"] > 0
