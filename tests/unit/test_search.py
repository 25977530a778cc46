"""The Optuna search engine (vicreg_lightning/hparams_search) in-process: its versions, its space,
its seeds, the pruning rule and the summary's ranking."""

from __future__ import annotations

import json
from importlib.metadata import version

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from vicreg_lightning.errors import UserError
from vicreg_lightning.hparams_search.space import parse_space
from vicreg_lightning.hparams_search.study import (make_pruner, sampler_seed)


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version(name).split(".")[:2])


def test_the_install_resolves_current_optuna_and_sqlalchemy_2():
    assert _version("optuna") >= (4, 9) and _version("sqlalchemy") >= (2, 0)
    assert tuple(int(p) for p in optuna.__version__.split(".")[:2]) == _version("optuna")  # the one imported


def test_the_search_space_reads_hydras_sweep_grammar():
    space = parse_space({"loss.sim_coeff": "tag(log, interval(5, 50))", "loss.cov_coeff": "interval(0.5, 10)",
                         "data.batch_size": "range(16, 80, 16)", "optim.base_lr": "0.3"},
                        ["model.expander=choice(64-64,64-1)", "loss.cov_coeff=2", "optim.base_lr=tag(log, range(1, 9))"])
    assert space.params == {
        "loss.sim_coeff": FloatDistribution(5.0, 50.0, log=True),
        "data.batch_size": IntDistribution(16, 64, step=16),  # Hydra's stop is excluded
        "model.expander": CategoricalDistribution(["64-64", "64-1"]),
        "optim.base_lr": IntDistribution(1, 8, log=True),  # the command line replaces the config's value
    }
    assert space.fixed == ["loss.cov_coeff=2"]  # ... and a plain value takes a key out of the space
    assert space.overrides({"loss.sim_coeff": 7.5, "data.batch_size": 32, "model.expander": "64-1",
                            "optim.base_lr": 2}) == ["loss.cov_coeff=2", "loss.sim_coeff=7.5", "data.batch_size=32",
                                                     "model.expander=64-1", "optim.base_lr=2"]
    with pytest.raises(UserError, match=r"interval\(low, high\) needs low < high"):
        parse_space({"loss.sim_coeff": "interval(50, 5)"}, [])
    with pytest.raises(UserError, match="search space is empty"):
        parse_space({"loss.sim_coeff": "25"}, [])


def test_sampler_seeds_differ_per_worker_and_per_resume_so_no_draw_repeats():
    seeds = {sampler_seed(0, worker, so_far) for worker in range(4) for so_far in (0, 3, 6)}
    assert len(seeds) == 12 and sampler_seed(0, 1, 3) == sampler_seed(0, 1, 3)
    space = parse_space({"loss.sim_coeff": "tag(log, interval(5, 50))"}, [])

    def first_draw(seed: int) -> float:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        return study.ask(space.params).params["loss.sim_coeff"]

    draws = [first_draw(seed) for seed in seeds]
    assert len(set(draws)) == len(draws)
    assert first_draw(sampler_seed(0, 0, 0)) == first_draw(sampler_seed(0, 0, 0))  # the negative control


def test_the_pruning_rule_waits_for_the_warm_up_needs_a_value_and_follows_the_studys_pruner(tmp_path):
    import torch
    from types import SimpleNamespace

    from vicreg_lightning.hparams_search.pruning import SearchPruning

    def epoch_end(callback: SearchPruning, epoch: int, **metrics: float) -> bool:
        one_process = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
        trainer = SimpleNamespace(current_epoch=epoch - 1, should_stop=False, is_global_zero=True, strategy=one_process,
                                  callback_metrics={k.replace("__", "/"): torch.tensor(v) for k, v in metrics.items()})
        callback.on_train_epoch_end(trainer, None)
        return trainer.should_stop

    rule = SearchPruning(str(tmp_path / "run"), "val/probe_acc1", "health/embed_rankme", 2.0, warmup_epochs=2)
    assert not epoch_end(rule, 1, health__embed_rankme=1.0)  # collapsed, but in the warm-up
    assert not epoch_end(rule, 3, health__embed_rankme=2.5)  # healthy
    assert not epoch_end(rule, 3, val__probe_acc1=0.5)  # no health check this epoch: no verdict
    assert not (tmp_path / "run" / "pruned.json").exists()
    assert epoch_end(rule, 3, health__embed_rankme=float("nan"))  # non-finite embeddings
    assert json.loads((tmp_path / "run" / "pruned.json").read_text())["reason"] == \
        "health/embed_rankme=nan < 2 after epoch 3"

    # The objective's pruner: a median pruner against one earlier trial (0.5 after epoch 1, 0.99
    # after epoch 2; the median compares this trial's best so far).
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", 0))
    study.pruner._n_startup_trials = 1  # noqa: SLF001 - one finished trial is enough here
    earlier = study.ask()
    for epoch, value in ((1, 0.5), (2, 0.99)):
        earlier.report(value, epoch)
    study.tell(earlier, 0.99)
    objective = SearchPruning(str(tmp_path / "objective"), "val/probe_acc1", None, 0.0, warmup_epochs=0)
    objective.trial = study.ask()
    assert not epoch_end(objective, 1, val__probe_acc1=0.95)
    assert epoch_end(objective, 2, val__probe_acc1=0.1)
    assert study.trials[-1].intermediate_values == pytest.approx({1: 0.95, 2: 0.1})
    assert "the study's pruner: val/probe_acc1=0.1 after epoch 2" in (tmp_path / "objective" / "pruned.json").read_text()


def test_the_summary_ranks_finished_jobs_in_the_searchs_direction_then_pruned_then_failed():
    from vicreg_lightning.sweep_summary import Job, best, ranked

    def jobs(maximize: bool) -> list[Job]:
        return [Job("0", {}, "m", "finished", {"m": 0.2}, maximize=maximize),
                Job("1", {}, "m", "pruned", {"m": 0.1}, pruned_epoch=2, maximize=maximize),
                Job("2", {}, "m", "finished", {"m": 0.5}, maximize=maximize),
                Job("3", {}, "m", "failed", error="diverged", maximize=maximize)]

    assert [job.name for job in ranked(jobs(maximize=False))] == ["0", "2", "1", "3"]
    assert [job.name for job in ranked(jobs(maximize=True))] == ["2", "0", "1", "3"]
    assert best(jobs(maximize=False)).name == "0" and best(jobs(maximize=False)[1:2]) is None


def test_a_job_whose_metrics_file_was_cut_short_is_a_failed_row_and_the_others_are_summarised(tmp_path):
    from vicreg_lightning.sweep_summary import read_sweep

    for name, metrics in (("0", '{"val/probe_acc1": 0.5}'), ("1", ""), ("2", '{"val/probe_acc1": 0.')):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- loss.cov_coeff={name}\n")
        (tmp_path / name / ".hydra" / "config.yaml").write_text("optimized_metric: val/probe_acc1\n")
        (tmp_path / name / "metrics.json").write_text(metrics)
    jobs = {job.name: job for job in read_sweep(tmp_path)}
    assert jobs["0"].status == "finished" and jobs["0"].objective == 0.5
    for name in ("1", "2"):
        assert jobs[name].status == "failed"
        assert jobs[name].error.startswith("its result files cannot be read (JSONDecodeError")
