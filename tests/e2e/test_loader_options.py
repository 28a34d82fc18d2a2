"""data.num_workers keeps the exact data order (workers interleave steps); trainer.num_threads is applied."""

import torch

from cptlab.rundir.metrics import read_series


def test_num_workers_gives_the_same_run_and_num_threads_is_applied(compose_cfg, tmp_path):
    from cptlab.cli.train_app import train

    threads = torch.get_num_threads()
    series = []
    try:
        for workers in (0, 2):
            run_dir = tmp_path / f"w{workers}"
            cfg = compose_cfg(["experiment=demo_zh", "debug=smoke", f"data.num_workers={workers}",
                               "trainer.num_threads=1"], output_dir=run_dir)
            summary, _ = train(cfg, run_dir)
            assert summary["status"] == "completed"
            assert torch.get_num_threads() == 1
            series.append({k: v for k, v in read_series(run_dir).items() if k != "train/tokens_per_sec"})
    finally:
        torch.set_num_threads(threads)
    assert series[0] == series[1]
