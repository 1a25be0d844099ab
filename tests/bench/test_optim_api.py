"""QuantOptimizer as a torch.optim.Optimizer: param groups, LR schedulers, hooks, and checkpoints
that resume bit for bit (in this process and in a fresh one)."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from bench.methods import METHODS
from bench.optim import QuantOptimizer
from tests.bench.test_optim import batches, tiny_mlp, weights


def step_on(model, opt, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


# --- param groups ---------------------------------------------------------------------------
def grouped_optimizer(model, method="lab", **group):
    lin = weights(model)
    quantized = {id(p) for _, p in lin}
    rest = [p for p in model.parameters() if id(p) not in quantized]
    return QuantOptimizer(torch.optim.Adam([{"params": lin, "method": method, **group},
                                            {"params": [(f"rest{i}", p) for i, p in enumerate(rest)]}],
                                           lr=1e-2))


@pytest.mark.parametrize("method, group", [("lab", {}), ("laq", {"bits": 4, "levels": "log"}),
                                           ("ttq", {"granularity": "channel"})])
def test_param_group_form_is_the_target_list_form_bit_for_bit(method, group):
    """The groups' keys say the same as the list form's arguments: identical trajectories (Adam
    updates each parameter on its own, so splitting the base's groups changes nothing)."""
    a, b = tiny_mlp(), tiny_mlp()
    opt_a = QuantOptimizer(weights(a), torch.optim.Adam(a.parameters(), lr=1e-2), method,
                           bits=group.get("bits"), levels=group.get("levels"),
                           granularity=group.get("granularity", "tensor"))
    opt_b = grouped_optimizer(b, method, **group)
    assert [t.name for t in opt_b.targets] == [n for n, _ in weights(b)]  # from param_names
    assert opt_b.targets[0].spec.bits == opt_a.targets[0].spec.bits
    for x, y in batches(6):
        step_on(a, opt_a, x, y)
        step_on(b, opt_b, x, y)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    for name, _ in weights(a):
        assert torch.equal(opt_a.latent(name), opt_b.latent(name))


def test_group_form_refuses_a_second_optimizer_or_a_method():
    model = tiny_mlp()
    base = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="each param group names its method"):
        QuantOptimizer(base, method="lab")
    with pytest.raises(ValueError, match="not in the base optimizer's param groups"):
        QuantOptimizer([nn.Parameter(torch.zeros(3, 3))], base, "lab")
    with pytest.raises(ValueError, match=r"'param0': granularity: expected tensor, channel or gate"):
        QuantOptimizer([model[0].weight], base, "lab", granularity="row")


def test_add_param_group_quantizes_a_group_that_names_a_method():
    torch.manual_seed(0)
    model, extra = tiny_mlp(), nn.Linear(3, 3)
    opt = grouped_optimizer(model)
    opt.add_param_group({"params": [("extra.weight", extra.weight)], "method": "twn", "lr": 0.5})
    opt.add_param_group({"params": [("extra.bias", extra.bias)]})  # no method: full precision
    assert [t.name for t in opt.targets][-1] == "extra.weight"
    assert opt.param_groups is opt.base.param_groups and opt.param_groups[2]["lr"] == 0.5
    for x, y in batches(3):
        loss = nn.functional.cross_entropy(extra(model(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert len(extra.weight.detach().unique()) <= 3  # ternary: alpha * {-1, 0, 1}
    assert len(extra.bias.detach().unique()) == 3  # untouched by any quantizer


# --- LR schedulers --------------------------------------------------------------------------
def test_cosine_and_step_schedules_drive_the_base_lr_as_their_closed_form():
    """The quantized run under a scheduler equals one where the closed-form lr is set by hand."""
    lr0, steps = 1e-2, 8
    cosine = [lr0 * 0.5 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)]
    stepped = [lr0 * 0.3 ** (t // 3) for t in range(steps)]
    for make, lrs in ((lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=steps), cosine),
                      (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.3), stepped)):
        a, b = tiny_mlp(), tiny_mlp()
        opt_a = QuantOptimizer(weights(a), torch.optim.Adam(a.parameters(), lr=lr0), "lab")
        opt_b = QuantOptimizer(weights(b), torch.optim.Adam(b.parameters(), lr=lr0), "lab")
        sched = make(opt_a)
        for (x, y), lr in zip(batches(steps), lrs, strict=True):
            assert opt_a.base.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12)
            for g in opt_b.param_groups:
                g["lr"] = lr
            step_on(a, opt_a, x, y)
            step_on(b, opt_b, x, y)
            sched.step()
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def test_one_cycle_moves_lr_and_betas_as_on_a_plain_adam():
    a, ref = tiny_mlp(), tiny_mlp()
    opt = QuantOptimizer(weights(a), torch.optim.Adam(a.parameters(), lr=1e-2), "lab")
    plain = torch.optim.Adam(ref.parameters(), lr=1e-2)
    kw = dict(max_lr=0.05, total_steps=10)
    s_q, s_ref = (torch.optim.lr_scheduler.OneCycleLR(o, **kw) for o in (opt, plain))
    seen = set()
    for x, y in batches(10):
        step_on(a, opt, x, y)
        step_on(ref, plain, x, y)
        s_q.step()
        s_ref.step()
        assert opt.param_groups[0]["lr"] == plain.param_groups[0]["lr"]
        assert opt.param_groups[0]["betas"] == plain.param_groups[0]["betas"]
        seen.add(round(opt.param_groups[0]["lr"], 6))
    assert len(seen) >= 8  # the lr really moved


def test_step_hooks_run_once_per_step():
    model = tiny_mlp()
    opt = QuantOptimizer(weights(model), torch.optim.Adam(model.parameters(), lr=1e-2), "lab")
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o is opt)))
    handle = opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o is opt)))
    train_steps = batches(2)
    step_on(model, opt, *train_steps[0])
    handle.remove()
    step_on(model, opt, *train_steps[1])
    assert calls == [("pre", True), ("post", True), ("pre", True)]
    assert isinstance(opt, torch.optim.Optimizer)


# --- checkpoints ----------------------------------------------------------------------------
CASES = [(m, {}) for m, spec in METHODS.items() if spec.quantized and spec.weights != "mixed"] + [
    ("laq", {"bits": 6, "levels": "log"}),
    ("laq", {"bits": 2, "granularity": "channel"}),
    ("lab", {"granularity": "channel", "curvature": "own"}),
    ("lab", {"fused": True, "backend": "torch"}),
    ("lab", {"compile": True}),
    ("bc-scaled", {"fixed_scale": 2.0}),
]
BASES = {"adam": lambda p: torch.optim.Adam(p, lr=1e-2),
         "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
         "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.01)}


def build(method, kwargs, base="adam", seed=0):
    model = tiny_mlp(seed)
    opt = QuantOptimizer(weights(model), BASES[base](model.parameters()), method, **kwargs)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


def train(model, opt, sched, data):
    for x, y in data:
        step_on(model, opt, x, y)
        sched.step()


def flat_state(model, opt, sched):
    """Every tensor a run carries: parameters, buffers, optimizer state (ours and the base's),
    the scheduler's counters."""
    out = {f"model.{k}": v for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    for name, state in sd["quant"].items():
        out.update({f"quant.{name}.{k}": v for k, v in state.items()})
    for i, state in sd["base"]["state"].items():
        out.update({f"base.{i}.{k}": v for k, v in state.items()})
    out["groups"] = [{k: v for k, v in g.items() if k != "params"} for g in sd["base"]["param_groups"]]
    out["sched"] = sched.state_dict()
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("method, kwargs", CASES, ids=lambda v: str(v) if isinstance(v, str)
                         else "-".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_checkpoint_resumes_bit_for_bit(method, kwargs, tmp_path):
    data = batches(8)
    straight = build(method, kwargs)
    train(*straight, data)

    first = build(method, kwargs)
    train(*first, data[:4])
    path = tmp_path / "ckpt.pt"
    model, opt, sched = first
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()},
               path)
    del first, model, opt, sched
    resumed = build(method, kwargs, seed=7)  # other initial weights: all must come from the file
    saved = torch.load(path, weights_only=True)
    resumed[0].load_state_dict(saved["model"])
    resumed[1].load_state_dict(saved["opt"])
    resumed[2].load_state_dict(saved["sched"])
    train(*resumed, data[4:])
    assert_same(flat_state(*straight), flat_state(*resumed))


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_checkpoint_resumes_other_base_optimizers(base, tmp_path):
    data = batches(6)
    straight = build("lat-approx", {}, base)
    train(*straight, data)
    first = build("lat-approx", {}, base)
    train(*first, data[:3])
    # load the optimizer before the model: the order must not matter
    resumed = build("lat-approx", {}, base, seed=3)
    resumed[1].load_state_dict(first[1].state_dict())
    resumed[0].load_state_dict(first[0].state_dict())
    resumed[2].load_state_dict(first[2].state_dict())
    del first
    train(*resumed, data[3:])
    assert_same(flat_state(*straight), flat_state(*resumed))


def test_checkpoint_resumes_bit_for_bit_in_a_fresh_process(tmp_path):
    """The second half runs in another Python process, from the file alone."""
    cases = [("lab", {}), ("ttq", {"granularity": "channel"}), ("laq", {"bits": 3}),
             ("lat", {"curvature": "own"})]
    data = batches(8)
    for i, (method, kwargs) in enumerate(cases):
        first = build(method, kwargs)
        train(*first, data[:4])
        torch.save({"model": first[0].state_dict(), "opt": first[1].state_dict(),
                    "sched": first[2].state_dict()}, tmp_path / f"half{i}.pt")
    code = textwrap.dedent(f"""
        import torch
        from tests.bench.test_optim import batches
        from tests.bench.test_optim_api import build, flat_state, train
        for i, (method, kwargs) in enumerate({cases!r}):
            model, opt, sched = build(method, kwargs, seed=11)
            saved = torch.load({str(tmp_path)!r} + f"/half{{i}}.pt", weights_only=True)
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
            train(model, opt, sched, batches(8)[4:])
            torch.save(flat_state(model, opt, sched), {str(tmp_path)!r} + f"/end{{i}}.pt")
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path.cwd()))
    for i, (method, kwargs) in enumerate(cases):
        straight = build(method, kwargs)
        train(*straight, data)
        there = torch.load(tmp_path / f"end{i}.pt", weights_only=True)
        assert_same(flat_state(*straight), there)


def test_loading_another_models_state_is_refused():
    _, opt_a, _ = build("lab", {})
    other = tiny_mlp()
    opt_c = QuantOptimizer([("x", other[0].weight)], torch.optim.Adam(other.parameters()), "lab")
    with pytest.raises(ValueError, match=r"saved quantized weights \['0.weight', '3.weight'\]"):
        opt_c.load_state_dict(opt_a.state_dict())
