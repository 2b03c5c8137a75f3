"""The learning-rate schedule: warm-up then cosine, and no warm-up rather than a broken one."""
import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import PARAM_SCHEDULERS

from xtuner_assistant.training.recipe import warmup_then_cosine


def rates(warmup_iters: int, iters: int = 30) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    wrapper = OptimWrapper(torch.optim.SGD([param], lr=1.0))
    configs = warmup_then_cosine(max_epochs=1, warmup_iters=warmup_iters)
    schedulers = [PARAM_SCHEDULERS.build({**{k: v for k, v in c.items() if k != "convert_to_iter_based"},
                                          "by_epoch": False, "end": c["end"] if c["type"] == "LinearLR" else iters},
                                         default_args=dict(optimizer=wrapper)) for c in configs]
    seen = []
    for _ in range(iters):
        seen.append(wrapper.optimizer.param_groups[0]["lr"])
        for scheduler in schedulers:
            scheduler.step()
    return seen


def test_warm_up_ramps_to_the_full_rate_then_decays():
    seen = rates(warmup_iters=10)
    assert seen[0] < 0.01 and max(seen) > 0.7
    assert seen[-1] < max(seen) / 10


def test_one_warm_up_iteration_means_none_not_a_stuck_rate():
    seen = rates(warmup_iters=1)
    assert seen[0] == 1.0 and seen[5] > 0.9
