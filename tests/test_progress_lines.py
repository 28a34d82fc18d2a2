"""Without a TTY (a SLURM log, nohup, CI) a run prints one plain, flushed line every trainer.log_every_n_steps
steps and one per evaluation; with a TTY it shows Rich bars and no such lines."""

import re


def test_plain_lines_without_a_tty(compose_cfg, tmp_path, capsys):
    from cptlab.cli.train_app import train
    from cptlab.run import pipeline

    assert not pipeline.show_progress()  # CI=true under pytest, and no TTY
    run_dir = tmp_path / "run"
    cfg = compose_cfg(["experiment=demo_base", "debug=smoke", "trainer.max_steps=6", "trainer.log_every_n_steps=2",
                       "eval.every_n_steps=3"], output_dir=run_dir)
    summary, _ = train(cfg, run_dir)
    out = capsys.readouterr().out
    train_lines = [line for line in out.splitlines() if line.startswith("[train]")]
    eval_lines = [line for line in out.splitlines() if line.startswith("[eval]")]
    assert [int(re.search(r"step (\d+)/6 ", line).group(1)) for line in train_lines] == [2, 4, 6]
    for line in train_lines:
        assert re.search(r"loss \d+\.\d{4}  tokens/s [\d,]+  stage \d+  ETA \d+:\d\d:\d\d$", line), line
    assert train_lines[-1].endswith("ETA 0:00:00")
    assert [int(re.search(r"step (\d+)/6 ", line).group(1)) for line in eval_lines] == [0, 3, 6]
    final_en = summary["final"]["val/en/bpb"]
    assert f"en bpb {final_en:.4f} (" in eval_lines[-1] and "en bpb" in eval_lines[0] and "(+0.0000)" in eval_lines[0]


def test_bars_and_no_plain_lines_with_a_tty(compose_cfg, tmp_path, monkeypatch):
    from pytorch_lightning.callbacks import RichProgressBar

    from cptlab.run import pipeline
    from cptlab.run.build import build_run
    from cptlab.run.validate import RunPlan
    from cptlab.training.callbacks import PeriodicEval, TrainMetrics

    monkeypatch.setattr(pipeline, "show_progress", lambda: True)
    cfg = compose_cfg(["experiment=demo_base", "debug=smoke", "logger=csv"], output_dir=tmp_path)
    run = build_run(RunPlan.from_config(cfg), tmp_path)
    kinds = {type(c): c for c in run.trainer.callbacks}
    assert RichProgressBar in kinds
    assert not kinds[TrainMetrics].plain and not kinds[PeriodicEval].plain
