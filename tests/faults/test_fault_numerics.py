"""A NaN/Inf loss stops pretraining with one line naming the step; the last good checkpoint is intact and
no non-finite weights are ever checkpointed.

The fault injector is a forward hook on the real model (built by the real build_model) that turns the
reconstruction into NaN or Inf from the k-th forward pass on; nothing else is replaced.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from fault_files import make_folder

import kamim.train.pretrain as pretrain_module
from kamim.errors import UserError
from kamim.train.checkpoint import list_checkpoints, load_checkpoint
from kamim.train.pretrain import PretrainConfig, run_pretrain

pytestmark = pytest.mark.fault


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("nan") / "data", per_class=4, size=96)


def poison_from(monkeypatch, forward: int, value: float, until: int = 10**9) -> None:
    """Every model run_pretrain builds returns ``value`` everywhere on its ``forward``..``until`` calls."""
    real_build = pretrain_module.build_model

    def build(*args, **kwargs):  # noqa: ANN202
        model = real_build(*args, **kwargs)
        calls = [0]

        def hook(module, inputs, output):  # noqa: ANN001, ANN202
            calls[0] += 1
            return output * value if forward <= calls[0] <= until else output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(pretrain_module, "build_model", build)


def tiny(data, out, **changes) -> PretrainConfig:
    base = {"model": "vit_t", "overrides": {"depth": 1, "embed_dim": 32, "num_heads": 2}, "dataset": "folder",
            "data_root": str(data), "method": "simmim", "device": "cpu", "out": str(out), "batch_size": 2,
            "workers": 0, "grid_every": 0, "save_every": 2, "log_every": 1, "steps": 8, "keep_checkpoints": 10}
    return PretrainConfig(**{**base, **changes})


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch, value):
    poison_from(monkeypatch, forward=5, value=value)
    with pytest.raises(UserError, match="step 5") as caught:
        run_pretrain(tiny(data, tmp_path / "run"))
    assert "\n" not in str(caught.value) and ("nan" in str(caught.value) or "inf" in str(caught.value))
    saved = list_checkpoints(tmp_path / "run")
    assert [p.name for p in saved] == ["step-0000002.pt", "step-0000004.pt"]
    last = load_checkpoint(saved[-1])
    assert last["step"] == 4 and all_finite(last["model"])
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_no_non_finite_checkpoint_when_logging_is_sparse(data, tmp_path, monkeypatch):
    """NaN from step 5, a checkpoint due at step 6, the next metrics record only at step 8."""
    poison_from(monkeypatch, forward=5, value=float("nan"))
    with pytest.raises(UserError, match="step [5-8]"):
        run_pretrain(tiny(data, tmp_path / "run", log_every=4, save_every=3))
    for path in list_checkpoints(tmp_path / "run"):
        assert all_finite(load_checkpoint(path)["model"]), f"{path.name} holds non-finite weights"


def test_resume_from_the_last_good_checkpoint_after_a_nan_stop(data, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        poison_from(patch, forward=7, value=float("nan"))
        with pytest.raises(UserError, match="step 7"):
            run_pretrain(tiny(data, tmp_path / "run"))
    run = run_pretrain(tiny(data, tmp_path / "run", resume=True))  # the fault is gone: it finishes
    state = load_checkpoint(list_checkpoints(run)[-1])
    assert state["step"] == 8 and all_finite(state["model"])
    assert math.isfinite(float(state["model"]["mask_token"].sum()))


def test_skip_policy_drops_the_bad_updates_counts_them_and_finishes(data, tmp_path, monkeypatch):
    poison_from(monkeypatch, forward=3, value=float("nan"), until=4)  # a transient fault: steps 3 and 4
    run = run_pretrain(tiny(data, tmp_path / "run", nan_policy="skip"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 2, 2, 2, 2, 2]
    assert records[2]["loss"] is None and all(math.isfinite(r["loss"]) for r in records[4:])
    for path in list_checkpoints(run):
        assert all_finite(load_checkpoint(path)["model"])
    assert (run / "model.safetensors").is_file()


def test_unknown_nan_policy_is_refused(data, tmp_path):
    with pytest.raises(UserError, match="--nan-policy"):
        run_pretrain(tiny(data, tmp_path / "run", nan_policy="ignore"))


# The update itself can overflow while the loss and gradients before it are finite (a huge --lr or
# --warmup-lr, or --weight-decay). The injector is an optimizer post-step hook (torch's own API) that
# turns the real AdamW's updated weights into Inf after its k-th step.
def poison_update(monkeypatch, at_step: int) -> None:
    calls = [0]

    def hook(optimizer, args, kwargs):  # noqa: ANN001, ANN202
        calls[0] += 1
        if calls[0] == at_step:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].add_(float("inf"))

    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(hook)
    monkeypatch.setattr(pretrain_module, "_poison_handle", handle, raising=False)


@pytest.fixture
def unhook():
    yield
    handle = getattr(pretrain_module, "_poison_handle", None)
    if handle is not None:
        handle.remove()


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_non_finite_weights_after_the_only_step_write_no_checkpoint_and_no_export(data, tmp_path, monkeypatch,
                                                                                 unhook, policy):
    poison_update(monkeypatch, at_step=1)
    with pytest.raises(UserError) as caught:
        run_pretrain(tiny(data, tmp_path / "run", steps=1, nan_policy=policy))
    message = str(caught.value)
    assert "NaN/Inf after the update of step 1" in message and "no checkpoint was written" in message
    assert "intact" not in message  # nothing is called intact that was not verified
    assert list_checkpoints(tmp_path / "run") == [] and not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_non_finite_weights_mid_run_name_only_a_verified_checkpoint(data, tmp_path, monkeypatch, unhook, policy):
    """Poisoned at step 5; with sparse logging the next check is the save at step 6."""
    poison_update(monkeypatch, at_step=5)
    with pytest.raises(UserError) as caught:
        run_pretrain(tiny(data, tmp_path / "run", log_every=4, nan_policy=policy))
    message = str(caught.value)
    assert "step 6" in message and "step-0000004.pt, checked finite) is intact" in message
    saved = list_checkpoints(tmp_path / "run")
    assert [p.name for p in saved] == ["step-0000002.pt", "step-0000004.pt"]
    assert all(all_finite(load_checkpoint(p)["model"]) for p in saved)


def test_non_finite_model_is_never_exported_checkpointed_or_probed(tmp_path):
    from kamim.train.checkpoint import atomic_save, export_model, load_pretrained, save_checkpoint
    from kamim.train.models import build_model

    model = build_model("vit_t", depth=1, embed_dim=32, num_heads=2)
    with torch.no_grad():
        model.mask_token.fill_(float("nan"))
    with pytest.raises(UserError, match="not writing .*model.safetensors.*mask_token"):
        export_model(model, {"model": "vit_t"}, tmp_path / "run")
    with pytest.raises(UserError, match="not writing .*step-0000001.pt"):
        save_checkpoint(tmp_path / "run", 1, {"model": model.state_dict()})
    assert all(p.is_dir() for p in (tmp_path / "run").rglob("*"))  # no file, not even a temp
    # a NaN checkpoint from elsewhere (an older kamim) is refused by linprobe/finetune's loader
    info = {"model": "vit_t", "overrides": {"depth": 1, "embed_dim": 32, "num_heads": 2}}
    path = atomic_save({"model": model.state_dict(), "model_info": info}, tmp_path / "old.pt")
    with pytest.raises(UserError, match="non-finite weights"):
        load_pretrained(path)
